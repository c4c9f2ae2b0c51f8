"""The `paced` console script.

Every subcommand turns user errors (bad config, bad override, bad path, an unreadable or
unwritable checkpoint) into one line on stderr and exit code 2; Ctrl-C is one line and exit 130.
A Python traceback means a bug in paced_jax. Log lines of `paced_jax.*` (INFO and up) go to
stderr above any progress bar; Orbax's own log chatter is dropped (its failures surface as our
one-line errors).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import paced_jax
from paced_jax.config import ConfigError


# Subcommands defined in other modules: each module exposes `add_parser(subparsers)`, which
# registers its subcommand with `set_defaults(func=...)`. Append a module name to add one.
COMMAND_MODULES: tuple[str, ...] = ("paced_jax.commands", "paced_jax.convert", "paced_jax.plan",
                                     "paced_jax.report")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="paced", description="PACED distillation of LLMs in JAX (arXiv 2603.11178).")
  parser.add_argument("--version", action="version", version=f"paced {paced_jax.__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name in COMMAND_MODULES:
    importlib.import_module(name).add_parser(sub)
  for p in sub.choices.values():
    add_distributed_args(p)
  return parser


def add_distributed_args(p: argparse.ArgumentParser) -> None:
  dist = p.add_argument_group(
      "multi-process (every host runs the same command; see paced_jax/distributed.py)")
  dist.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                    help="address of process 0's coordinator service")
  dist.add_argument("--num-processes", type=int, default=None, metavar="N")
  dist.add_argument("--process-id", type=int, default=None, metavar="I")
  dist.add_argument("--distributed", choices=("auto", "off"), default="auto",
                    help="auto (default): initialize jax.distributed on Cloud TPU VMs and "
                    "detected clusters, or when --coordinator is given; off: one process")


class _BarSafeHandler(logging.StreamHandler):
  """Writes through tqdm, so a log line never lands glued to a progress bar."""

  def emit(self, record):
    try:
      from tqdm import tqdm

      tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # noqa: BLE001 -- logging must not raise
      self.handleError(record)


def _not_orbax(record: logging.LogRecord) -> bool:
  return "orbax" not in record.pathname or record.levelno >= logging.CRITICAL


def setup_logging() -> None:
  """INFO lines of paced_jax really print (libraries install root handlers first, which makes
  `logging.basicConfig` a no-op), once each."""
  logger = logging.getLogger("paced_jax")
  if not any(isinstance(h, _BarSafeHandler) for h in logger.handlers):
    handler = _BarSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  for name in ("absl", ""):
    if _not_orbax not in logging.getLogger(name).filters:
      logging.getLogger(name).addFilter(_not_orbax)
  for h in logging.getLogger().handlers:
    if _not_orbax not in h.filters:
      h.addFilter(_not_orbax)


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return 2
  setup_logging()
  try:
    from paced_jax.distributed import initialize

    initialize(args.coordinator, args.num_processes, args.process_id, args.distributed)
    return args.func(args)
  except ConfigError as e:
    print(f"paced: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("paced: interrupted (Ctrl-C)", file=sys.stderr)
    return 130


def run() -> None:
  """The console script: `main`, then exit. After an error, threads that outlive their run
  would hold the process for minutes (Orbax's checkpoint signalling threads wait ~300 s on
  signals a failed save never sends, and interpreter exit joins every non-daemon thread): once
  the one-line error is printed and the streams flushed, such a process exits at once. So does
  one whose checkpoint write failed: Orbax's and TensorStore's daemon threads are still finishing
  the abandoned save, and the interpreter's teardown under them makes them print tracebacks
  ("sys.meta_path is None", "Exception in thread ...") after the one line."""
  import os
  import threading

  rc = main()
  stuck = [t for t in threading.enumerate()
           if t is not threading.main_thread() and not t.daemon and t.is_alive()]
  ckpt = sys.modules.get("paced_jax.checkpoint")
  if rc != 0 and (stuck or (ckpt is not None and ckpt.write_failed())):
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(rc)
  sys.exit(rc)


if __name__ == "__main__":
  run()
