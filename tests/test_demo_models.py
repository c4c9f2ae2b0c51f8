"""The recipe of the shipped students (configs/demo_models.py): the privileged student's pool."""

import importlib.util
import json
from pathlib import Path

from paced_jax.config import LossConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("demo_models", ROOT / "configs/demo_models.py")
dm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dm)


def test_privileged_pool_shows_solutions_as_self_distillation_does(tmp_path):
  """Half the train problems carry their solution exactly as loss.privileged_template puts it
  in self-distillation's teacher prompt (levels 1-8), half are plain (levels 1-5); the test
  and probe files are the suite's held-out splits, never a train problem."""
  dm.write_privileged_pool(str(tmp_path), size=200, seed=1)
  read = lambda name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
  train, test, test_priv = read("train.jsonl"), read("test.jsonl"), read("test_privileged.jsonl")
  assert dm.PRIVILEGED_TEMPLATE == LossConfig().privileged_template
  priv = [r for r in train if r["id"].endswith("-priv")]
  plain = [r for r in train if not r["id"].endswith("-priv")]
  assert len(priv) == len(plain) == 100
  for r in priv:
    assert r["prompt"] == dm.PRIVILEGED_TEMPLATE.format(prompt=r["prompt"].split("\nReference")[0],
                                                        solution=r["solution"])
  assert {r["difficulty"] for r in priv} == set(range(1, 9))
  assert max(r["difficulty"] for r in plain) <= 5
  assert all("Reference solution" not in r["prompt"] for r in plain + test)
  assert [r["id"] for r in test_priv] == [r["id"] + "-priv" for r in test]
  train_prompts = {r["prompt"].split("\nReference")[0] for r in train}
  assert not train_prompts & {r["prompt"] for r in test + read("probe.jsonl")}
  cfg = load_config(str(ROOT / "configs/demo_models.py") + ":student_privileged", [])
  assert cfg.data.path.endswith("train.jsonl") and cfg.train.init_student.endswith("strong")
