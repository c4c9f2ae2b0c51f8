"""One `paced train` per workdir: an exclusive lock on `<workdir>/.lock`, held for the whole run.

Two runs on one workdir would both append to `metrics.jsonl` and rotate each other's Orbax
steps (duplicate steps, FileNotFoundError mid-save), so the second is refused in one line naming
the holder (host and pid, which the holder writes into the file).

What holds where:
  - local disks, NFS with lock support: `fcntl.flock`, non-blocking. The kernel drops the lock
    when its process dies, however it dies (kill -9 included), so a stale `.lock` file never
    blocks the next run; its contents are only the holder's name, emptied on a clean exit.
  - filesystems without flock (some FUSE mounts, gcsfuse among them, raise ENOSYS / EOPNOTSUPP,
    or accept the call with only local meaning): the file itself is the record. A run is
    refused only when the recorded holder is on this host and its pid is alive (and, where
    /proc tells, started when the record says). On a gcsfuse workdir there is no exclusion
    across hosts at all: never start two runs on one bucket path from different machines.
  - multi-host runs: only process 0 (`jax.process_index() == 0`) takes the lock; the other
    hosts' processes belong to the same run and must not refuse it. The caller decides (this
    module is stdlib only).

The file is never deleted while a run may hold it (deleting a flock'ed file lets two processes
lock two different files); after taking the lock the path is checked to still name the locked
file, which makes the one deletion below (of a `.lock` in a workdir this run created and left
empty, so a refused bad input leaves no trace) safe.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from paced_jax.config import ConfigError

LOCK_NAME = ".lock"
# flock not implemented by the filesystem (as opposed to "someone holds it").
_UNSUPPORTED = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK, errno.EINVAL}
_HELD = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (/proc/PID/stat field 22), which tells
  a live holder from an unrelated process that reused its pid; None where /proc does not say."""
  try:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[19]
  except (OSError, ValueError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  except OSError:
    return False
  return True


class WorkdirLock:
  """Context manager: `with WorkdirLock(workdir): ...` creates `workdir` when missing, takes the
  lock (ConfigError when another run holds it) and releases it on exit."""

  def __init__(self, workdir: str | Path):
    self.workdir = Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self._fd: int | None = None
    self._created_dir = False
    self.flock = False  # True when the filesystem's flock backs the lock

  # -- the record: who holds it -------------------------------------------------------------

  def _record(self) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}

  def _read_holder(self, wait_s: float = 0.0) -> dict:
    """The holder's record; a holder writes it just after locking, so wait a moment for it."""
    deadline = time.monotonic() + wait_s
    while True:
      try:
        data = json.loads(self.path.read_text() or "{}")
      except (OSError, ValueError):
        data = {}
      if (isinstance(data, dict) and data.get("pid")) or time.monotonic() >= deadline:
        return data if isinstance(data, dict) else {}
      time.sleep(0.05)

  def _refuse(self, holder: dict) -> ConfigError:
    return ConfigError(
        f"workdir {str(self.workdir)!r} is in use by another paced train (host "
        f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}); wait for it to finish or use "
        "another --workdir")

  def _holder_is_live(self, holder: dict) -> bool:
    """A record of another live process on this host (the check without flock)."""
    try:
      pid = int(holder.get("pid"))
    except (TypeError, ValueError):
      return False
    if holder.get("host") != socket.gethostname() or pid == os.getpid() or not _alive(pid):
      return False
    started = _start_time(pid)
    return started is None or holder.get("start") is None or started == str(holder["start"])

  # -- taking and releasing -----------------------------------------------------------------

  def acquire(self) -> WorkdirLock:
    try:
      if not self.workdir.is_dir():
        try:
          self.workdir.mkdir(parents=True)
          self._created_dir = True
        except FileExistsError:  # another process of the run (or a rival) made it just now
          if not self.workdir.is_dir():
            raise
    except OSError as e:
      raise ConfigError(f"workdir {str(self.workdir)!r} is not writable ({e.strerror}); pass a "
                        "directory you can write to with --workdir") from None
    for _ in range(10):  # the path may be swapped under us (see the module docstring)
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except FileNotFoundError:  # a refused run removed the directory it had created
        try:
          self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError:
          pass
        continue
      except OSError as e:
        raise ConfigError(f"workdir {str(self.workdir)!r} is not writable ({e.strerror}); pass "
                          "a directory you can write to with --workdir") from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.flock = True
      except OSError as e:
        if e.errno in _HELD:
          os.close(fd)
          raise self._refuse(self._read_holder(wait_s=2.0)) from None
        if e.errno not in _UNSUPPORTED:
          os.close(fd)
          raise ConfigError(f"cannot lock {self.path} ({e.strerror}); use another --workdir") \
              from None
        self.flock = False
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except OSError:
        same = False
      if same:
        break
      os.close(fd)  # deleted or replaced since we opened it: lock the file that is there now
    else:
      raise ConfigError(f"cannot lock {self.path}: it keeps being replaced; use another --workdir")
    # With flock this is belt and braces (a flock that succeeds without meaning, on some FUSE
    # mounts); without it, it is the whole check.
    holder = self._read_holder()
    if self._holder_is_live(holder):
      os.close(fd)
      raise self._refuse(holder)
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(self._record()) + "\n").encode(), 0)
    except OSError as e:
      os.close(fd)
      raise ConfigError(f"workdir {str(self.workdir)!r} is not writable ({e.strerror}); pass a "
                        "directory you can write to with --workdir") from None
    self._fd = fd
    return self

  def release(self) -> None:
    """Empties the record (a finished run holds nothing), then unlocks. A workdir this lock
    created and nothing else wrote to (a refused bad input) is removed again."""
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      os.ftruncate(fd, 0)
    except OSError:
      pass
    if self._created_dir:
      try:
        if [p.name for p in self.workdir.iterdir()] == [LOCK_NAME]:
          self.path.unlink()
          self.workdir.rmdir()
      except OSError:
        pass
    try:
      if self.flock:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
