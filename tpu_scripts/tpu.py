"""`paced train` on a Cloud TPU pod slice, one step per subcommand, in this order:

  0. paced plan CONFIG --topology v5p-64          size the mesh before reserving chips
  1. tpu.py create   --name N --zone Z --accelerator v5p-64 [--queued [--spot|--best-effort]]
  2. tpu.py status   --name N --zone Z [--queued]  wait for READY / ACTIVE
  3. tpu.py install  --name N --zone Z [--repo URL [--ref REF]]   code + `pip install -e .[tpu]`
     tpu.py exec     --name N --zone Z 'gcloud storage cp -r gs://BUCKET/models paced_jax/'
  4. tpu.py mount    --name N --zone Z --bucket BUCKET   gcsfuse: gs://BUCKET at /mnt/BUCKET
  5. tpu.py launch   --name N --zone Z CONFIG --workdir /mnt/BUCKET/RUN [--set k=v ...]
  6. tpu.py logs     --name N --zone Z --workdir /mnt/BUCKET/RUN [--worker all]
  7. tpu.py stop     --name N --zone Z             SIGTERM: the run saves a checkpoint and exits
  8. tpu.py copy     --name N --zone Z --workdir /mnt/BUCKET/RUN [--to runs/RUN]
  9. tpu.py teardown --name N --zone Z [--queued]  deletes exactly what `create` made

Every step prints each command (shell-quoted, one per line) before running it; with --dry-run
it only prints them and exits 0. `launch-ssh` starts the same job on hosts that are not TPU
VMs (GPU clusters), passing --coordinator/--num-processes/--process-id explicitly.

Every host runs the identical `paced train` command: the CLI initialises jax.distributed itself
(on TPU VMs the coordinator is discovered from the slice's metadata), process 0 writes logs and
metrics, and all hosts write checkpoint shards to the one workdir. `paced train` writes through
the filesystem, so that workdir is the bucket mounted (gcsfuse) at the same path on every
worker. Standard library only, so it runs on any laptop with the Google Cloud CLI.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys

PROG = "tpu.py"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Accelerator type -> the runtime (TPU VM image) Google recommends for JAX on it.
RUNTIMES = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}
_ACCEL = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # GCE resource names
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_PROJECT = re.compile(r"^[a-z][-a-z0-9.:]{4,61}[a-z0-9]$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")  # spliced unquoted after $HOME
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BUCKET = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$")
# Orbax finishes a checkpoint by renaming its temporary directory; gcsfuse renames a directory
# of a flat (non-hierarchical) bucket only below this many objects (default 0: never).
RENAME_DIR_LIMIT = 200_000


class UsageError(ValueError):
  """A bad flag or value; its message is one line."""


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (no usage block), exit code 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------- validation


def check_accelerator(accel: str) -> str:
  """Returns the generation prefix of an accelerator type such as v5p-64 or v5litepod-16."""
  m = _ACCEL.match(accel)
  if not m:
    if accel.startswith("v5e-"):
      raise UsageError(f"accelerator type {accel!r}: Cloud TPU names v5e slices "
                       f"v5litepod-N, e.g. v5litepod-{accel[4:] or 16}")
    raise UsageError(f"accelerator type {accel!r} is not GENERATION-SIZE with GENERATION one of "
                     f"{', '.join(RUNTIMES)} (e.g. v5p-64, v5litepod-16, v6e-8, v4-32)")
  return m.group(1)


def _check(pattern: re.Pattern, value: str, what: str, example: str) -> str:
  if not pattern.match(value):
    raise UsageError(f"{what} {value!r} is not valid; expected something like {example}")
  return value


def run_name(workdir: str) -> str:
  """`/mnt/bucket/runs/exp 1/` -> `exp-1`: names the per-worker log file."""
  base = workdir.rstrip("/").rsplit("/", 1)[-1]
  return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "run"


def check_bucket(bucket: str) -> str:
  """`gs://my-bucket/` or `my-bucket` -> `my-bucket`."""
  name = bucket.removeprefix("gs://").rstrip("/")
  if not _BUCKET.match(name):
    raise UsageError(f"--bucket {bucket!r} is not a bucket name such as my-bucket (no path)")
  return name


def check_mount_point(path: str) -> str:
  if not (path.startswith("/") and _SAFE_PATH.match(path[1:])) or ".." in path.split("/"):
    raise UsageError(f"--mount-point {path!r} must be an absolute directory such as /mnt/BUCKET")
  return path


def check_workdir(workdir: str, mount_point: str) -> tuple[str, str]:
  """Returns (workdir, mount point). The workdir must lie inside the bucket mounted on every
  worker (`mount`): every host writes its checkpoint shards there. The mount point defaults to
  /mnt/NAME, the first two components of the workdir, as `mount` defaults to /mnt/BUCKET."""
  m = re.match(r"^gs://([^/]+)/*(.*)$", workdir)
  if m:
    raise UsageError(f"--workdir {workdir!r} is a URL; paced writes through the filesystem: run "
                     f"`{PROG} mount --bucket {m.group(1)}` and pass the mounted path, e.g. "
                     f"/mnt/{m.group(1)}/{m.group(2) or 'runs/RUN'}")
  wd = workdir.rstrip("/")
  if not wd.startswith("/") or ".." in wd.split("/"):
    raise UsageError(f"--workdir {workdir!r} must be an absolute path inside the bucket mounted "
                     "on every worker, e.g. /mnt/BUCKET/runs/RUN: every host writes there")
  if not mount_point:
    parts = wd.split("/")
    if len(parts) < 4 or parts[1] != "mnt":
      raise UsageError(f"--workdir {workdir!r} is not under /mnt/BUCKET/; pass --mount-point "
                       "DIR if `mount` used another mount point")
    mount_point = "/".join(parts[:3])
  mount_point = check_mount_point(mount_point.rstrip("/"))
  if not wd.startswith(mount_point + "/"):
    raise UsageError(f"--workdir {workdir!r} is not inside --mount-point {mount_point!r}; pass "
                     f"a directory under it, e.g. {mount_point}/runs/RUN")
  return wd, mount_point


# ----------------------------------------------------------------------------- commands


def _where(args) -> list[str]:
  return ["--zone", args.zone] + (["--project", args.project] if args.project else [])


def tpu_ssh(args, remote: str, worker: str = "all") -> list[str]:
  """One `gcloud ... tpu-vm ssh` running the shell command `remote` on the given workers.
  `remote` travels as ONE argument; the remote shell parses it, so every user value inside it
  must already be shlex-quoted."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args),
          f"--worker={worker}", "--command", remote]


def create_cmds(args) -> list[list[str]]:
  gen = check_accelerator(args.accelerator)
  runtime = args.runtime_version or RUNTIMES[gen]
  if args.best_effort and not args.queued:
    raise UsageError("--best-effort needs --queued (only queued resources can be best-effort)")
  if args.spot and args.best_effort:
    raise UsageError("--spot and --best-effort are exclusive; pick one")
  if args.valid_until and not args.queued:
    raise UsageError("--valid-until needs --queued")
  if args.queued:
    # --best-effort exists only in the alpha track of gcloud.
    base = ["gcloud"] + (["alpha"] if args.best_effort else [])
    cmd = base + ["compute", "tpus", "queued-resources", "create", args.name,
                  "--node-id", args.name, *_where(args), "--accelerator-type", args.accelerator,
                  "--runtime-version", runtime]
    cmd += ["--spot"] if args.spot else []
    cmd += ["--best-effort"] if args.best_effort else []
    cmd += ["--reserved"] if args.reserved else []
    cmd += ["--valid-until-duration", args.valid_until] if args.valid_until else []
    return [cmd]
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *_where(args),
         "--accelerator-type", args.accelerator, "--version", runtime]
  cmd += ["--spot"] if args.spot else []
  cmd += ["--reserved"] if args.reserved else []
  return [cmd]


def status_cmds(args) -> list[list[str]]:
  kind = ["queued-resources"] if args.queued else ["tpu-vm"]
  return [["gcloud", "compute", "tpus", *kind, "describe", args.name, *_where(args)]]


def teardown_cmds(args) -> list[list[str]]:
  if args.queued:  # --force also deletes the TPU VM the queued resource holds
    return [["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args),
             "--force", "--quiet"]]
  return [["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_where(args), "--quiet"]]


def install_cmds(args) -> list[list[str]]:
  _check(_SAFE_PATH, args.remote_dir, "--remote-dir", "paced_jax (relative to $HOME)")
  extras = [e.strip() for e in args.extras.split(",") if e.strip()]
  if any(not re.match(r"^[a-z0-9_-]+$", e) for e in extras):
    raise UsageError(f"--extras {args.extras!r} must be comma-separated names such as tpu,math")
  spec = "." + (f"[{','.join(extras)}]" if extras else "")
  rdir = f"$HOME/{args.remote_dir}"
  cmds = []
  if args.repo:
    fetch = f"rm -rf {rdir} && git clone --quiet {shlex.quote(args.repo)} {rdir}"
    if args.ref:
      fetch += f" && git -C {rdir} checkout --quiet {shlex.quote(args.ref)}"
  else:
    # Ship this checkout (uncommitted edits included) so every worker runs identical code.
    source = os.path.abspath(args.source)
    if not os.path.isfile(os.path.join(source, "pyproject.toml")):
      raise UsageError(f"--source {args.source!r} has no pyproject.toml; pass the paced_jax "
                       "repository root or use --repo URL")
    tarball = f"/tmp/paced_jax-{args.name}.tar.gz"
    # Top-level paths are anchored ("./runs", not "runs": paced_jax/data is a package).
    skip = ["./.git", "./.venv", "./runs", "./models", "__pycache__", *args.exclude]
    cmds.append(["tar", "-czf", tarball, *[f"--exclude={x}" for x in skip], "-C", source, "."])
    cmds.append(["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                 f"{args.name}:paced_jax.tar.gz", *_where(args), "--worker=all"])
    fetch = (f"rm -rf {rdir} && mkdir -p {rdir} && tar -xzf $HOME/paced_jax.tar.gz -C {rdir}")
  pip = "python3 -m pip install --quiet"
  remote = (f"set -e; {fetch} && cd {rdir} && {pip} --upgrade pip && {pip} -e {shlex.quote(spec)}"
            " && python3 -c 'import jax, paced_jax; print(jax.__version__, paced_jax.__version__)'")
  cmds.append(tpu_ssh(args, remote))
  return cmds


def mount_cmds(args) -> list[list[str]]:
  """gs://BUCKET at the same directory on every worker: installs gcsfuse (Google's apt
  repository for the image's Ubuntu release) where it is missing and mounts unless mounted."""
  bucket = check_bucket(args.bucket)
  mp = shlex.quote(check_mount_point((args.mount_point or f"/mnt/{bucket}").rstrip("/")))
  apt = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq"
  keyring = "/usr/share/keyrings/cloud.google.asc"
  # `;`, not `&&`, inside the if-bodies: set -e ignores failures inside && lists.
  install = (
      "if ! command -v gcsfuse > /dev/null; then "
      f'echo "deb [signed-by={keyring}] https://packages.cloud.google.com/apt '
      'gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list '
      "> /dev/null; curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | "
      f"sudo tee {keyring} > /dev/null; {apt} update; {apt} install -y gcsfuse; fi")
  # The mount belongs to the ssh user, who also runs the trainer (see `launch`).
  mount = (f"if ! mountpoint -q {mp}; then sudo mkdir -p {mp}; sudo chown $(id -u):$(id -g) {mp}"
           f"; gcsfuse --implicit-dirs --rename-dir-limit={RENAME_DIR_LIMIT} "
           f"{shlex.quote(bucket)} {mp}; fi")
  check = f'mountpoint -q {mp}; echo "$(hostname): gs://{bucket} at "{mp}'
  return [tpu_ssh(args, f"set -eo pipefail; {install}; {mount}; {check}")]


def exec_cmds(args) -> list[list[str]]:
  if not args.remote_command.strip():
    raise UsageError("exec needs a command, e.g. 'gcloud storage cp -r gs://BUCKET/models "
                     "paced_jax/'")
  return [tpu_ssh(args, args.remote_command, args.worker)]


def train_argv(args) -> list[str]:
  argv = ["paced", "train", args.config, "--workdir", args.workdir]
  for kv in args.overrides:
    if "=" not in kv:
      raise UsageError(f"--set {kv!r} is not of the form key.sub=value")
    argv += ["--set", kv]
  return argv


def _env_prefix(envs: list[str]) -> list[str]:
  for kv in envs:
    key = kv.partition("=")[0]
    if "=" not in kv or not _ENV_KEY.match(key):
      raise UsageError(f"--env {kv!r} is not of the form NAME=VALUE")
  return ["env", *envs] if envs else []


def background(rdir: str, argv: list[str], log: str) -> str:
  """`argv` run from `rdir` under nohup, detached from the ssh session (stdin closed), with its
  output in `log`. The user's values are quoted once here, for the remote shell."""
  return (f'cd {rdir} && export PATH="$HOME/.local/bin:$PATH" && '
          f"nohup {shlex.join(argv)} > {log} 2>&1 < /dev/null &")


def launch_cmds(args) -> list[list[str]]:
  _check(_SAFE_PATH, args.remote_dir, "--remote-dir", "paced_jax (relative to $HOME)")
  args.workdir, mount_point = check_workdir(args.workdir, args.mount_point)
  argv = _env_prefix(args.env) + train_argv(args)
  log = f"$HOME/paced-{run_name(args.workdir)}.log"
  # Unmounted (never mounted, or gone after a host restart), the workdir would be each host's
  # own disk: checkpoints split across hosts. Refuse to start instead.
  mp = shlex.quote(mount_point)
  guard = (f"if ! mountpoint -q {mp}; then echo \"$(hostname): \"{mp}\" is not mounted; run "
           f"{PROG} mount first\" >&2; exit 1; fi; ")
  return [tpu_ssh(args, guard + background(f"$HOME/{args.remote_dir}", argv, log))]


def logs_cmds(args) -> list[list[str]]:
  args.workdir, _ = check_workdir(args.workdir, args.mount_point)
  follow = [] if args.no_follow else ["-F"]
  tail = shlex.join(["tail", "-n", str(args.lines), *follow])
  return [tpu_ssh(args, f"{tail} $HOME/paced-{run_name(args.workdir)}.log", args.worker)]


def stop_cmds(args) -> list[list[str]]:
  # "[p]aced train" matches the trainer but not this shell's own command line.
  return [tpu_ssh(args, "pkill -TERM -f '[p]aced train' || true")]


def copy_cmds(args) -> list[list[str]]:
  """The run already lives in the bucket (the workdir is its mount); this adds every worker's
  log to it and, with --to, rsyncs it from gs:// to this machine."""
  workdir, mount_point = check_workdir(args.workdir, args.mount_point)
  logs = shlex.quote(workdir + "/logs")
  save_log = (f"mkdir -p {logs} && cp $HOME/paced-{run_name(workdir)}.log "
              f"{logs}/worker-$(hostname).log")
  cmds = [tpu_ssh(args, save_log)]
  if args.to:
    if args.bucket:
      bucket = check_bucket(args.bucket)
    elif args.mount_point:
      raise UsageError("--to with --mount-point needs --bucket (the bucket mounted there)")
    else:  # the default mount point /mnt/BUCKET
      bucket = mount_point.rsplit("/", 1)[1]
    url = f"gs://{bucket}{workdir[len(mount_point):]}"
    rsync = ["gcloud", "storage", "rsync", "--recursive", url, args.to]
    rsync += ["--exclude=checkpoints/.*"] if args.skip_checkpoints else []
    cmds.append(rsync)
  return cmds


def launch_ssh_cmds(args) -> list[list[str]]:
  """The same `paced train` on every host of a non-TPU cluster, process i on hosts[i]; the
  first host is the coordinator."""
  _check(_SAFE_PATH, args.remote_dir, "--remote-dir", "paced_jax (relative to $HOME)")
  hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
  if not hosts or any(not re.match(r"^[A-Za-z0-9@._-]+$", h) for h in hosts):
    raise UsageError(f"--hosts {args.hosts!r} must be comma-separated host names, e.g. gpu0,gpu1")
  if not 0 < args.port < 65536:
    raise UsageError(f"--port {args.port} must be in 1..65535")
  coordinator = f"{hosts[0].rsplit('@', 1)[-1]}:{args.port}"
  base = _env_prefix(args.env) + train_argv(args)
  log = f"$HOME/paced-{run_name(args.workdir)}.log"
  cmds = []
  for i, host in enumerate(hosts):
    argv = base + ["--coordinator", coordinator, "--num-processes", str(len(hosts)),
                   "--process-id", str(i)]
    cmds.append(["ssh", host, background(f"$HOME/{args.remote_dir}", argv, log)])
  return cmds


# ----------------------------------------------------------------------------- running


def execute(cmds: list[list[str]], dry_run: bool) -> int:
  """Prints every command; runs them in order unless dry_run; stops at the first failure."""
  if not dry_run:
    for tool in dict.fromkeys(c[0] for c in cmds):
      if shutil.which(tool) is None:
        hint = ("install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
                if tool == "gcloud" else f"install {tool}")
        print(f"{PROG}: error: {tool!r} is not on PATH; {hint}, or pass --dry-run to print the "
              "commands", file=sys.stderr)
        return 2
  for cmd in cmds:
    print(shlex.join(cmd), flush=True)
    if dry_run:
      continue
    try:
      rc = subprocess.run(cmd, check=False).returncode
    except KeyboardInterrupt:  # Ctrl-C ends `logs`; the run on the workers goes on
      return 130
    if rc:
      print(f"{PROG}: error: command failed with exit code {rc}: {shlex.join(cmd[:6])} ...",
            file=sys.stderr)
      return rc
  return 0


def _target(p: argparse.ArgumentParser, queued: bool = False) -> None:
  p.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
  p.add_argument("--zone", required=True, help="e.g. us-east5-a")
  p.add_argument("--project", default="", help="default: gcloud's configured project")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  if queued:
    p.add_argument("--queued", action="store_true",
                   help="the slice is (to be) held by a queued resource of the same name")


def _workdir(p: argparse.ArgumentParser, help: str) -> None:
  p.add_argument("--workdir", required=True, help=help)
  p.add_argument("--mount-point", default="", help="where `mount` put the bucket (default: "
                 "/mnt/NAME of a /mnt/NAME/... workdir)")


def _job(p: argparse.ArgumentParser, workdir_help: str) -> None:
  p.add_argument("config", help="configs/NAME.py[:ARG], relative to the repository root")
  if workdir_help:
    p.add_argument("--workdir", required=True, help=workdir_help)
  else:
    _workdir(p, "the run directory in the mounted bucket, e.g. /mnt/BUCKET/runs/RUN")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                 help="environment for the trainer, e.g. LIBTPU_INIT_ARGS=... (repeatable)")
  p.add_argument("--remote-dir", default="paced_jax", help="checkout on each host, under $HOME")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog=__doc__.split("\n\n", 1)[1])
  sub = parser.add_subparsers(dest="step", metavar="STEP")

  p = sub.add_parser("create", help="1. create the TPU VM or queued resource")
  _target(p, queued=True)
  p.add_argument("--accelerator", required=True, help="e.g. v5p-64, v5litepod-16, v6e-8, v4-32")
  p.add_argument("--runtime-version", default="", help="default: Google's JAX image for it")
  p.add_argument("--spot", action="store_true", help="Spot capacity (preemptible, cheaper)")
  p.add_argument("--best-effort", action="store_true", help="best-effort queued resource")
  p.add_argument("--reserved", action="store_true", help="use the project's reservation")
  p.add_argument("--valid-until", default="", metavar="DURATION",
                 help="queued resource: give up if not granted within e.g. 6h")
  p.set_defaults(build=create_cmds)

  p = sub.add_parser("status", help="2. describe the slice (wait for READY / ACTIVE)")
  _target(p, queued=True)
  p.set_defaults(build=status_cmds)

  p = sub.add_parser("install", help="3. put the code on every worker and pip install it")
  _target(p)
  p.add_argument("--repo", default="", help="git URL to clone (default: ship --source)")
  p.add_argument("--ref", default="", help="branch, tag or commit to check out with --repo")
  p.add_argument("--source", default=REPO_ROOT, help="local checkout to ship")
  p.add_argument("--extras", default="tpu", help="pip extras, e.g. tpu,math")
  p.add_argument("--remote-dir", default="paced_jax", help="checkout on each host, under $HOME")
  p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                 help="also leave out of the shipped copy (tar pattern; ./.git, ./.venv, "
                 "./runs and ./models are always left out)")
  p.set_defaults(build=install_cmds)

  p = sub.add_parser("exec", help="3b. run a shell command on every worker (e.g. fetch weights)")
  _target(p)
  p.add_argument("remote_command", metavar="COMMAND", help="runs in $HOME on each worker")
  p.add_argument("--worker", default="all", help="worker index or 'all'")
  p.set_defaults(build=exec_cmds)

  p = sub.add_parser("mount", help="4. mount gs://BUCKET on every worker (gcsfuse, installed "
                     "if missing)")
  _target(p)
  p.add_argument("--bucket", required=True, help="bucket name, e.g. my-bucket")
  p.add_argument("--mount-point", default="", help="default: /mnt/BUCKET")
  p.set_defaults(build=mount_cmds)

  p = sub.add_parser("launch", help="5. start `paced train` on every worker (background)")
  _target(p)
  _job(p, "")
  p.set_defaults(build=launch_cmds)

  p = sub.add_parser("logs", help="6. stream a worker's log (Ctrl-C leaves the run going)")
  _target(p)
  _workdir(p, "the run's workdir as passed to launch (names the log)")
  p.add_argument("--worker", default="0", help="worker index or 'all'")
  p.add_argument("--lines", type=int, default=100)
  p.add_argument("--no-follow", action="store_true", help="print and return")
  p.set_defaults(build=logs_cmds)

  p = sub.add_parser("stop", help="7. SIGTERM the run on every worker (it checkpoints, exits)")
  _target(p)
  p.set_defaults(build=stop_cmds)

  p = sub.add_parser("copy", help="8. the run already lives in the bucket: add the worker "
                     "logs to it; --to also rsyncs it here")
  _target(p)
  _workdir(p, "the run's workdir as passed to launch")
  p.add_argument("--to", default="", help="also rsync the run from gs:// to this local dir")
  p.add_argument("--bucket", default="", help="the mounted bucket (default: NAME of /mnt/NAME)")
  p.add_argument("--skip-checkpoints", action="store_true", help="rsync without checkpoints/")
  p.set_defaults(build=copy_cmds)

  p = sub.add_parser("teardown", help="9. delete the TPU VM / queued resource")
  _target(p, queued=True)
  p.set_defaults(build=teardown_cmds)

  p = sub.add_parser("launch-ssh", help="the same job on non-TPU hosts over plain ssh")
  p.add_argument("--hosts", required=True, help="comma-separated; the first is the coordinator")
  p.add_argument("--port", type=int, default=8476, help="coordinator port")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  _job(p, "a directory every host sees at this path (NFS, a mounted bucket)")
  p.set_defaults(build=launch_ssh_cmds)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.step is None:
    parser.print_help()
    return 2
  try:
    if hasattr(args, "zone"):
      _check(_NAME, args.name, "--name", "paced-v5p (lowercase letters, digits, dashes)")
      _check(_ZONE, args.zone, "--zone", "us-east5-a")
      if args.project:
        _check(_PROJECT, args.project, "--project", "my-project-123")
    if getattr(args, "worker", "all") != "all" and not args.worker.isdigit():
      raise UsageError(f"--worker {args.worker!r} must be a worker index (0, 1, ...) or 'all'")
    cmds = args.build(args)
  except UsageError as e:
    print(f"{PROG} {args.step}: error: {e}", file=sys.stderr)
    return 2
  return execute(cmds, args.dry_run)


if __name__ == "__main__":
  sys.exit(main())
