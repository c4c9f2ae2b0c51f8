"""Config loading, overrides and their one-line errors (library and CLI)."""

import dataclasses
import subprocess
import sys

import pytest

from paced_jax.config import (Config, ConfigError, ModelConfig, RopeScaling, apply_overrides,
                              load_config)

DEMO = "configs/demo.py"


def test_overrides_parse_by_type():
  cfg = apply_overrides(Config(), [
      "model.num_layers=3", "model.rms_eps=1e-5", "model.qk_norm=true", "model.dtype=bfloat16",
      "mesh.fsdp=2", "seed=7", "name=abc", "model.rope_scaling.factor=16",
  ])
  assert cfg.model.num_layers == 3 and cfg.model.rms_eps == 1e-5 and cfg.model.qk_norm
  assert cfg.model.dtype == "bfloat16" and cfg.mesh.fsdp == 2 and cfg.seed == 7
  assert cfg.name == "abc"
  # An unset optional section is created with its defaults, then the field is set.
  assert cfg.model.rope_scaling == RopeScaling(factor=16.0)
  assert apply_overrides(cfg, ["model.rope_scaling=none"]).model.rope_scaling is None
  assert dataclasses.is_dataclass(cfg) and Config().model.num_layers == 2  # nothing mutated


@pytest.mark.parametrize("override,match", [
    ("model.nlayers=3", r"unknown config key 'model.nlayers'; valid keys under 'model': .*num_layers"),
    ("modle.hidden=3", r"unknown config key 'modle.hidden'; valid keys under 'the top level': model"),
    ("model.num_layers=two", r"'model.num_layers' expects int, got 'two'"),
    ("model.dtype=fp8", r"expects one of 'float32', 'bfloat16', 'float16', got 'fp8'"),
    ("model.qk_norm=maybe", r"expects bool"),
    ("seed.x=1", r"'seed.x': 'seed' is a int, not a section"),
    ("model.num_heads=3", r"not a multiple of model.num_kv_heads"),
    ("novalue", r"not of the form key.sub=value"),
    # two-stage's stages are fixed (forward KL, then reverse KL): another divergence was ignored
    ("loss.mode=two_stage,loss.divergence=akl", r"loss.divergence='akl' would be ignored"),
    # sft is cross-entropy whatever loss.divergence says
    ("loss.mode=sft,loss.divergence=forward_kl", r"loss.divergence='forward_kl' would be ignored"),
    # cross-entropy on the student's own rollouts teaches nothing
    ("loss.mode=on_policy,loss.divergence=ce", r"defined on reference responses only"),
])
def test_override_errors(override, match):
  with pytest.raises(ConfigError, match=match):
    apply_overrides(Config(), override.split(","))


def test_loss_literals_spell_out_the_divergence_table():
  """The override parser reads LossConfig's Literals; the table decides. They must agree."""
  import typing

  from paced_jax import divergences
  from paced_jax.config import LossConfig

  hints = typing.get_type_hints(LossConfig)
  assert typing.get_args(hints["divergence"]) == ("auto",) + divergences.NAMES
  assert typing.get_args(hints["mode"]) == tuple(divergences.MODES)
  from paced_jax import losses

  assert set(losses._FNS) == set(divergences.NAMES)  # every name has its function
  for m in divergences.MODES.values():
    assert 1 <= len(m.stages) <= 2 and m.teacher in ("separate", "student", "none")
    assert all(st.divergence in divergences.NAMES for st in m.stages)


def test_mode_questions_come_from_the_table():
  from paced_jax import divergences
  from paced_jax.config import LossConfig, TrainConfig

  def cfg(mode, **kw):
    return Config(loss=LossConfig(mode=mode, **kw), train=TrainConfig(steps=10))

  two = cfg("two_stage", two_stage_switch=0.3)  # steps 0-2 forward KL, 3-9 reverse KL
  assert [divergences.stage_of(two, s) for s in (0, 2, 3, 9)] == [
      "forward_kl", "forward_kl", "reverse_kl", "reverse_kl"]
  assert [divergences.on_policy(two, s) for s in (2, 3)] == [False, True]
  assert [divergences.needs_reference(two, s) for s in (2, 3)] == [True, False]
  assert divergences.fixed_divergence(two) is None and divergences.switch_step(two) == 3
  want = {  # mode: (on-policy rows, reference rows, separate teacher, teacher is the student)
      "distill": (False, True, True, False), "on_policy": (True, False, True, False),
      "self_distill": (True, True, False, True), "sft": (False, True, False, False)}
  for mode, row in want.items():
    c = cfg(mode)
    assert (divergences.on_policy(c, 5), divergences.needs_reference(c, 5),
            divergences.needs_teacher(mode), divergences.teacher_is_student(mode)) == row, mode
    assert divergences.fixed_divergence(c) == divergences.stage_of(c, 0)
  assert divergences.teacher_of(cfg("sft")) is None
  assert divergences.teacher_of(cfg("self_distill")) == Config().model
  assert divergences.prompts_only("on_policy") and not divergences.prompts_only("two_stage")
  assert divergences.stage_of(cfg("sft"), 0) == "ce" and cfg("sft").loss.resolved_divergence == "ce"
  assert divergences.stage_of(cfg("on_policy", divergence="jsd"), 0) == "jsd"


def test_load_config_with_arg():
  full, tiny = load_config(DEMO), load_config(DEMO + ":tiny")
  assert tiny.model.hidden < full.model.hidden
  assert load_config(DEMO, ["model.num_layers=1"]).model.num_layers == 1
  with pytest.raises(ConfigError, match="does not exist"):
    load_config("configs/nope.py")
  with pytest.raises(ConfigError, match="unknown argument 'huge'"):
    load_config(DEMO + ":huge")


def test_model_config_validation():
  with pytest.raises(ConfigError, match="head_dim=15 must be even"):
    ModelConfig(head_dim=15)


def _paced(*args):
  return subprocess.run([sys.executable, "-m", "paced_jax.cli", *args], capture_output=True,
                        text=True, timeout=120)


def test_cli_help_and_version():
  out = _paced("--help")
  assert out.returncode == 0 and "smoke" in out.stdout
  out = _paced("--version")
  assert out.returncode == 0 and out.stdout.startswith("paced ")


@pytest.mark.parametrize("args,match", [
    (["smoke", DEMO, "--set", "model.nlayers=3"], "unknown config key 'model.nlayers'"),
    (["smoke", "configs/missing.py"], "does not exist"),
    (["smoke", DEMO + ":huge"], "unknown argument"),
])
def test_cli_bad_input_is_one_line_exit_2(args, match):
  out = _paced(*args)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("paced: error:") and match in lines[0]


def test_cli_smoke_tiny():
  out = _paced("smoke", DEMO + ":tiny", "--seq", "8", "--batch", "2")
  assert out.returncode == 0, out.stderr
  assert "student:" in out.stdout and "teacher:" in out.stdout and "finite=True" in out.stdout


def test_cli_refresh_order_without_a_subset_is_one_line_and_writes_nothing(tmp_path):
  wd = tmp_path / "run"
  out = _paced("train", DEMO, "--workdir", str(wd), "--set", "paced.refresh_order=thinnest",
               "--set", "paced.refresh_subset=0")
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("paced: error:"), out.stderr
  assert "paced.refresh_order" in lines[0] and "refresh_subset" in lines[0]
  assert not wd.exists()


def _literal_fields(cls, prefix=""):
  """(key, section class, field) for every field typed as a Literal, nested sections included,
  found from the annotations themselves."""
  import typing

  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    typ = hints[f.name]
    args = typing.get_args(typ) or (typ,)
    if typing.get_origin(typ) is typing.Literal or any(
        typing.get_origin(a) is typing.Literal for a in args):
      yield prefix + f.name, cls, f.name
    for a in args if typing.get_origin(typ) is not typing.Literal else ():
      if dataclasses.is_dataclass(a):
        yield from _literal_fields(a, prefix + f.name + ".")


def test_a_literal_field_built_in_python_is_checked_like_an_override():
  """`--set` parses a Literal field against its choices; a config file that builds the section
  in Python skipped that check (`PacedConfig(merge="decya")` ran as the default merge). Every
  Literal field of every section now refuses a value outside its choices when the Config is
  made, naming the key and the choices."""
  keys = list(_literal_fields(Config))
  assert len(keys) >= 15 and "paced.merge" in [k for k, _, _ in keys]
  demo = load_config(DEMO)
  for key, _, name in keys:
    section, _, _ = key.rpartition(".")
    obj = getattr(demo, section) or ModelConfig()  # the teacher section may be unset
    # Raised where the section is made (paced, generate) or where the Config is.
    with pytest.raises(ConfigError, match=rf"^{key}='not-a-choice' must be one of '"):
      dataclasses.replace(demo, **{section: dataclasses.replace(obj, **{name: "not-a-choice"})})
  assert Config() and load_config(DEMO, ["paced.merge=decay"]).paced.merge == "decay"


def test_cli_a_config_file_with_a_bad_literal_is_one_line_and_writes_nothing(tmp_path):
  from pathlib import Path

  root = Path(__file__).resolve().parents[1]
  conf = tmp_path / "bad.py"
  conf.write_text("import dataclasses\nfrom paced_jax.config import load_config\n\n"
                  "def get_config(arg=''):\n"
                  f"  cfg = load_config({str(root / DEMO)!r})\n"
                  "  return dataclasses.replace(cfg, paced=dataclasses.replace(cfg.paced, "
                  "merge='decya'))\n")
  wd = tmp_path / "run"
  out = _paced("train", str(conf), "--workdir", str(wd))
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("paced: error:"), out.stderr
  assert "paced.merge='decya' must be one of 'replace', 'accumulate', 'decay'" in lines[0]
  assert not wd.exists()
