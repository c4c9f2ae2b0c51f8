"""tpu_scripts/tpu.py, checked through its --dry-run output (no live TPU is touched)."""

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tpu_scripts" / "tpu.py"
_spec = importlib.util.spec_from_file_location("paced_tpu_scripts", SCRIPT)
tpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tpu)

TARGET = ["--name", "paced-v5p", "--zone", "us-east5-a", "--project", "my-proj-123"]
WORKDIR = "/mnt/my-bucket/runs/exp 1"  # gs://my-bucket mounted at /mnt/my-bucket
TRICKY = "data.chat_template=Q: {prompt} it's $HOME \"A\": "  # spaces, quotes, $, braces


def dry(capsys, *argv):
  """Runs tpu.main(argv + --dry-run); returns the printed commands, each split like a shell."""
  rc = tpu.main([*argv, "--dry-run"])
  out, err = capsys.readouterr()
  assert rc == 0 and err == "", err
  return [shlex.split(line) for line in out.splitlines()]


def fail(capsys, *argv):
  """Runs tpu.main(argv); returns (exit code, stderr lines)."""
  try:
    rc = tpu.main(list(argv))
  except SystemExit as e:  # argparse
    rc = e.code
  out, err = capsys.readouterr()
  return rc, err.splitlines()


def remote(cmd):
  """The --command of a `gcloud ... tpu-vm ssh`, split as the worker's shell splits it."""
  assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
  return shlex.split(cmd[cmd.index("--command") + 1])


def contains(seq, sub):
  return any(seq[i:i + len(sub)] == sub for i in range(len(seq)))


def flag(cmd, name):
  return cmd[cmd.index(name) + 1]


@pytest.mark.parametrize("queued", [False, True])
def test_teardown_deletes_what_create_made(capsys, queued):
  q = ["--queued"] if queued else []
  (create,) = dry(capsys, "create", *TARGET, *q, "--accelerator", "v5p-64")
  (status,) = dry(capsys, "status", *TARGET, *q)
  (delete,) = dry(capsys, "teardown", *TARGET, *q)
  kind = "queued-resources" if queued else "tpu-vm"
  assert create[:5] == ["gcloud", "compute", "tpus", kind, "create"]
  assert status[:5] == ["gcloud", "compute", "tpus", kind, "describe"]
  assert delete[:5] == ["gcloud", "compute", "tpus", kind, "delete"]
  assert create[5] == status[5] == delete[5] == "paced-v5p"
  for cmd in (create, status, delete):
    assert flag(cmd, "--zone") == "us-east5-a" and flag(cmd, "--project") == "my-proj-123"
  assert "--quiet" in delete  # no interactive prompt
  assert create[-1] != "--quiet"
  assert flag(create, "--accelerator-type") == "v5p-64"
  if queued:
    assert flag(create, "--node-id") == "paced-v5p"
    assert flag(create, "--runtime-version") == "v2-alpha-tpuv5"
    assert "--force" in delete  # also deletes the node the queued resource holds
  else:
    assert flag(create, "--version") == "v2-alpha-tpuv5"


def test_create_capacity_flags_and_runtimes(capsys):
  (spot,) = dry(capsys, "create", *TARGET, "--queued", "--spot", "--accelerator", "v6e-8",
                "--valid-until", "6h")
  assert "--spot" in spot and flag(spot, "--runtime-version") == "v2-alpha-tpuv6e"
  assert flag(spot, "--valid-until-duration") == "6h"
  (best,) = dry(capsys, "create", *TARGET, "--queued", "--best-effort", "--accelerator",
                "v5litepod-16", "--runtime-version", "my-runtime")
  assert best[:3] == ["gcloud", "alpha", "compute"]  # --best-effort is an alpha-track flag
  assert "--best-effort" in best and flag(best, "--runtime-version") == "my-runtime"
  (v4,) = dry(capsys, "create", *TARGET, "--accelerator", "v4-32")
  assert flag(v4, "--version") == "tpu-ubuntu2204-base" and "--project" in v4
  (noproj,) = dry(capsys, "create", "--name", "n1", "--zone", "europe-west4-b", "--accelerator",
                  "v5p-8")
  assert "--project" not in noproj  # gcloud's configured project


def test_install_ships_code_to_every_worker_and_pip_installs(capsys, tmp_path):
  (tar, scp, ssh) = dry(capsys, "install", *TARGET, "--source", str(SCRIPT.parents[1]))
  tarball = tar[tar.index("-czf") + 1]
  assert tar[0] == "tar" and flag(tar, "-C") == str(SCRIPT.parents[1])
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and scp[5] == tarball
  assert "--worker=all" in scp and "--worker=all" in ssh
  sh = remote(ssh)
  assert contains(sh, ["tar", "-xzf", "$HOME/paced_jax.tar.gz", "-C", "$HOME/paced_jax"])
  assert contains(sh, ["cd", "$HOME/paced_jax", "&&"])
  assert contains(sh, ["python3", "-m", "pip", "install", "--quiet", "-e", ".[tpu]"])
  (ssh,) = dry(capsys, "install", *TARGET, "--repo", "https://example.com/a b.git", "--ref",
               "v1", "--extras", "tpu,math")
  sh = remote(ssh)
  assert sh[sh.index("clone") + 2] == "https://example.com/a b.git"
  assert sh[sh.index("checkout") + 2] == "v1"
  assert contains(sh, ["install", "--quiet", "-e", ".[tpu,math]"])
  # Anchored top-level excludes: "data" unanchored would drop the paced_jax/data package.
  assert {"--exclude=./.git", "--exclude=./runs", "--exclude=./models"} <= set(tar)
  assert "--exclude=data" not in tar
  (tar, _, _) = dry(capsys, "install", *TARGET, "--exclude", "./data")
  assert "--exclude=./data" in tar
  (ssh,) = dry(capsys, "exec", *TARGET, "gcloud storage cp -r 'gs://bkt/my models' paced_jax/")
  assert "--worker=all" in ssh
  assert remote(ssh) == ["gcloud", "storage", "cp", "-r", "gs://bkt/my models", "paced_jax/"]
  rc, err = fail(capsys, "install", *TARGET, "--source", str(tmp_path), "--dry-run")
  assert rc == 2 and len(err) == 1 and "pyproject.toml" in err[0]


def _stubs(tmp_path, dirname="bin", **scripts):
  """A PATH directory of stand-in commands; each appends its name and argv to tmp_path/log."""
  bin_ = tmp_path / dirname
  bin_.mkdir()
  for name, body in scripts.items():
    f = bin_ / name
    f.write_text(f'#!/bin/bash\necho "{name} $*" >> {tmp_path}/log\n{body}\n')
    f.chmod(0o755)
  return bin_


def _bash(script, bin_):
  env = dict(os.environ, PATH=f"{bin_}:/usr/bin:/bin")
  return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                        timeout=60)


def test_mount_installs_gcsfuse_if_missing_and_mounts_once(capsys, tmp_path):
  (ssh,) = dry(capsys, "mount", *TARGET, "--bucket", "gs://my-bucket/")
  assert "--worker=all" in ssh
  sh = remote(ssh)
  assert sh[:2] == ["set", "-eo"] and "pipefail;" in sh
  assert contains(sh, ["if", "!", "command", "-v", "gcsfuse"])  # install only where missing
  assert any("gcsfuse-$(lsb_release -c -s)" in w for w in sh)  # the image's Ubuntu release
  assert contains(sh, ["if", "!", "mountpoint", "-q", "/mnt/my-bucket;"])  # idempotent
  assert contains(sh, ["gcsfuse", "--implicit-dirs", f"--rename-dir-limit={tpu.RENAME_DIR_LIMIT}",
                       "my-bucket", "/mnt/my-bucket;"])
  (ssh,) = dry(capsys, "mount", *TARGET, "--bucket", "my-bucket", "--mount-point", "/gcs/data/")
  assert contains(remote(ssh), ["my-bucket", "/gcs/data;"])
  # The remote script itself, on a stand-in worker: the first run installs and mounts, a
  # second does neither, and a failed apt-get stops it before gcsfuse.
  state = tmp_path / "mounted"
  script = ssh[ssh.index("--command") + 1]
  common = dict(sudo='exec env "$@"', lsb_release="echo jammy", curl="echo KEY",
                tee="cat > /dev/null", mkdir="", chown="",
                mountpoint=f"[ -f {state} ]", gcsfuse=f"touch {state}")
  missing = _stubs(tmp_path, "missing", **common, **{"apt-get": ""})
  (missing / "gcsfuse").unlink()
  r = _bash(script, missing)
  assert r.returncode != 0  # gcsfuse never got installed (apt-get is a stand-in)
  log = (tmp_path / "log").read_text()
  assert "apt-get -o DPkg::Lock::Timeout=600 -qq install -y gcsfuse" in log
  (tmp_path / "log").unlink()
  present = _stubs(tmp_path, "present", **common, **{"apt-get": ""})
  r = _bash(script, present)
  assert r.returncode == 0 and r.stdout.strip().endswith("gs://my-bucket at /gcs/data"), r
  log = (tmp_path / "log").read_text()
  assert "apt-get" not in log and "gcsfuse --implicit-dirs" in log and state.exists()
  (tmp_path / "log").unlink()
  r = _bash(script, present)
  assert r.returncode == 0 and "gcsfuse" not in (tmp_path / "log").read_text()
  state.unlink()
  (tmp_path / "log").unlink()
  (missing / "apt-get").write_text("#!/bin/bash\nexit 100\n")
  r = _bash(script, missing)
  assert r.returncode == 100 and not state.exists()


def test_launch_runs_the_same_paced_train_on_all_workers(capsys):
  (ssh,) = dry(capsys, "launch", *TARGET, "configs/qwen3_8b_to_0p6b.py:models/a,models/b",
               "--workdir", WORKDIR + "/", "--set", TRICKY, "--set", "train.steps=10",
               "--env", "LIBTPU_INIT_ARGS=--xla_a=1 --xla_b=2")
  assert "--worker=all" in ssh and flag(ssh, "--zone") == "us-east5-a"
  sh = remote(ssh)  # the user's values survive both shells intact
  start = sh.index("paced")
  assert sh[start - 3:start] == ["nohup", "env", "LIBTPU_INIT_ARGS=--xla_a=1 --xla_b=2"]
  assert sh[start:start + 9] == ["paced", "train", "configs/qwen3_8b_to_0p6b.py:models/a,models/b",
                                 "--workdir", WORKDIR, "--set", TRICKY, "--set", "train.steps=10"]
  # Detached, one log per worker (on its own disk), named after the run.
  assert sh[start + 9:] == [">", "$HOME/paced-exp-1.log", "2>&1", "<", "/dev/null", "&"]
  guard = sh.index("fi;")
  assert sh[:5] == ["if", "!", "mountpoint", "-q", "/mnt/my-bucket;"]
  assert sh[guard + 1:guard + 3] == ["cd", "$HOME/paced_jax"]
  assert "--coordinator" not in sh  # TPU VMs: jax.distributed finds the coordinator itself


def test_launch_refuses_to_start_where_the_bucket_is_not_mounted(capsys, tmp_path):
  (ssh,) = dry(capsys, "launch", *TARGET, "configs/demo.py", "--workdir", "/gcs/b/run",
               "--mount-point", "/gcs/b/")
  assert remote(ssh)[:5] == ["if", "!", "mountpoint", "-q", "/gcs/b;"]
  bin_ = _stubs(tmp_path, mountpoint="exit 1", nohup="", paced="")
  r = _bash(ssh[ssh.index("--command") + 1], bin_)
  assert r.returncode == 1 and "/gcs/b is not mounted; run tpu.py mount first" in r.stderr
  assert "nohup" not in (tmp_path / "log").read_text()  # nothing started on a local disk


def test_logs_stop_copy_target_the_launched_run(capsys):
  (logs,) = dry(capsys, "logs", *TARGET, "--workdir", WORKDIR)
  assert "--worker=0" in logs and remote(logs) == ["tail", "-n", "100", "-F",
                                                   "$HOME/paced-exp-1.log"]
  (logs,) = dry(capsys, "logs", *TARGET, "--workdir", WORKDIR, "--worker", "all", "--no-follow")
  assert "--worker=all" in logs and "-F" not in remote(logs)
  (stop,) = dry(capsys, "stop", *TARGET)
  assert "--worker=all" in stop and remote(stop)[:3] == ["pkill", "-TERM", "-f"]
  save, rsync = dry(capsys, "copy", *TARGET, "--workdir", WORKDIR, "--to", "runs/exp1",
                    "--skip-checkpoints")
  assert "--worker=all" in save
  sh = remote(save)  # through the mount: every worker's log lands next to the run
  assert sh[:4] == ["mkdir", "-p", WORKDIR + "/logs", "&&"]
  assert sh[4:7] == ["cp", "$HOME/paced-exp-1.log", WORKDIR + "/logs/worker-$(hostname).log"]
  assert rsync == ["gcloud", "storage", "rsync", "--recursive", "gs://my-bucket/runs/exp 1",
                   "runs/exp1", "--exclude=checkpoints/.*"]
  _, rsync = dry(capsys, "copy", *TARGET, "--workdir", "/gcs/d/runs/r", "--mount-point", "/gcs/d",
                 "--bucket", "other-bucket", "--to", "out")
  assert rsync[4:] == ["gs://other-bucket/runs/r", "out"]
  (save,) = dry(capsys, "copy", *TARGET, "--workdir", WORKDIR)  # logs only


def test_launch_ssh_gives_each_host_its_process_id(capsys):
  cmds = dry(capsys, "launch-ssh", "--hosts", "me@gpu0,gpu1,gpu2", "--port", "1234",
             "configs/demo.py", "--workdir", "/shared/runs/x", "--set", TRICKY)
  assert [c[:2] for c in cmds] == [["ssh", "me@gpu0"], ["ssh", "gpu1"], ["ssh", "gpu2"]]
  for i, cmd in enumerate(cmds):
    sh = shlex.split(cmd[2])
    job = sh[sh.index("paced"):sh.index(">")]
    assert job == ["paced", "train", "configs/demo.py", "--workdir", "/shared/runs/x", "--set",
                   TRICKY, "--coordinator", "gpu0:1234", "--num-processes", "3",
                   "--process-id", str(i)]


@pytest.mark.parametrize("argv, needle", [
    (["create", *TARGET, "--accelerator", "v5p64"], "GENERATION-SIZE"),
    (["create", *TARGET, "--accelerator", "v5e-16"], "v5litepod-16"),
    (["create", *TARGET, "--accelerator", "tpu-64"], "GENERATION-SIZE"),
    (["create", *TARGET, "--accelerator", "v5p-64", "--best-effort"], "--queued"),
    (["create", "--name", "x", "--accelerator", "v5p-8"], "--zone"),
    (["create", "--name", "Bad_Name", "--zone", "us-east5-a", "--accelerator", "v5p-8"], "--name"),
    (["create", "--name", "x", "--zone", "useast5", "--accelerator", "v5p-8"], "--zone"),
    (["launch", *TARGET, "configs/demo.py", "--workdir", "runs/local"], "absolute path"),
    (["launch", *TARGET, "c.py", "--workdir", "gs://bkt/runs/r"],
     "mount --bucket bkt` and pass the mounted path, e.g. /mnt/bkt/runs/r"),
    (["launch", *TARGET, "c.py", "--workdir", "/data/r"], "--mount-point"),
    (["launch", *TARGET, "c.py", "--workdir", "/mnt/bkt"], "--mount-point"),  # the mount itself
    (["launch", *TARGET, "c.py", "--workdir", "/data/r", "--mount-point", "/gcs"], "not inside"),
    (["launch", *TARGET, "c.py", "--workdir", "/mnt/bkt/../r"], "absolute path"),
    (["launch", *TARGET, "configs/demo.py"], "--workdir"),
    (["launch", *TARGET, "c.py", "--workdir", "/mnt/bkt/r", "--set", "novalue"], "--set"),
    (["launch", *TARGET, "c.py", "--workdir", "/mnt/bkt/r", "--env", "1X=2"], "--env"),
    (["launch", *TARGET, "c.py", "--workdir", "/mnt/bkt/r", "--remote-dir", "a;b"], "remote-dir"),
    (["logs", *TARGET, "--workdir", "/mnt/bkt/r", "--worker", "first"], "--worker"),
    (["logs", *TARGET, "--workdir", "gs://bkt/r"], "mounted path"),
    (["mount", *TARGET, "--bucket", "gs://bkt/sub"], "--bucket"),
    (["mount", *TARGET, "--bucket", "bkt", "--mount-point", "mnt/x"], "--mount-point"),
    (["mount", *TARGET, "--bucket", "bkt", "--mount-point", "/mnt/x y"], "--mount-point"),
    (["copy", *TARGET, "--workdir", "/gcs/r", "--mount-point", "/gcs", "--to", "o"], "--bucket"),
    (["exec", *TARGET, " "], "needs a command"),
    (["launch-ssh", "--hosts", "a b", "c.py", "--workdir", "/s/r"], "--hosts"),
    (["teardown", *TARGET, "--bogus"], "--bogus"),
])
def test_bad_input_is_one_line_and_nonzero(capsys, argv, needle):
  rc, err = fail(capsys, *argv, "--dry-run")
  assert rc == 2 and len(err) == 1 and needle in err[0], err
  assert "Traceback" not in err[0]


def _script(args, path_dir):
  env = dict(os.environ, PATH=str(path_dir))
  return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True,
                        text=True, timeout=60)


def test_without_gcloud_on_path_exit_2_with_one_line(tmp_path):
  for args in (["teardown", *TARGET], ["launch", *TARGET, "c.py", "--workdir", "/mnt/bkt/r"]):
    r = _script(args, tmp_path)
    assert r.returncode == 2 and r.stdout == "", r
    (line,) = r.stderr.splitlines()
    assert "'gcloud' is not on PATH" in line and "--dry-run" in line
  # --dry-run never needs gcloud: the whole sequence prints and exits 0 in a subprocess too.
  r = _script(["create", *TARGET, "--queued", "--accelerator", "v5p-64", "--dry-run"], tmp_path)
  assert r.returncode == 0 and r.stderr == ""
  assert shlex.split(r.stdout)[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]


def test_runs_the_printed_commands_and_stops_at_a_failure(tmp_path):
  """Without --dry-run: a stand-in `gcloud` records its argv; a failing one stops the step."""
  log = tmp_path / "argv.txt"
  fake = tmp_path / "gcloud"
  fake.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> {log}\n'
                  f'printf "\\n" >> {log}\nexit ${{FAKE_RC:-0}}\n')
  fake.chmod(0o755)
  args = ["launch", *TARGET, "configs/demo.py", "--workdir", WORKDIR, "--set", TRICKY]
  r = _script(args, tmp_path)
  assert r.returncode == 0, r.stderr
  printed = shlex.split(r.stdout)
  ran = log.read_text().rstrip("\n").split("\0")[:-1]
  assert ["gcloud", *ran] == printed  # what ran is exactly what was printed
  assert contains(shlex.split(ran[ran.index("--command") + 1]),
                  ["paced", "train", "configs/demo.py", "--workdir", WORKDIR, "--set", TRICKY])
  env = dict(os.environ, PATH=str(tmp_path), FAKE_RC="3")
  r = subprocess.run([sys.executable, str(SCRIPT), "teardown", *TARGET], env=env,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 3
  (line,) = r.stderr.splitlines()
  assert "exit code 3" in line and "gcloud compute tpus tpu-vm delete" in line


def test_readme_tpu_steps_dry_run(capsys):
  """Every `tpu.py` line of the README's "Run on a TPU pod" section is valid as written."""
  readme = (SCRIPT.parents[1] / "README.md").read_text()
  section = readme.split("## Run on a TPU pod", 1)[1].split("\n## ", 1)[0]
  text = section.replace("\\\n", " ")
  S = shlex.split(text.split('S="', 1)[1].split('"', 1)[0])
  lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("python tpu_scripts")]
  steps = [shlex.split(ln, comments=True)[2] for ln in lines]
  assert steps == ["create", "status", "install", "exec", "mount", "launch", "logs", "stop",
                   "copy", "teardown"]
  for ln in lines:
    argv = [a for w in shlex.split(ln, comments=True)[2:] for a in (S if w == "$S" else [w])]
    assert dry(capsys, *argv), ln
