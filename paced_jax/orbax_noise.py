"""What Orbax's and TensorStore's machinery prints by itself after a failed write or read.

A save that fails part-way (a disk that fills inside it), or a read of a truncated checkpoint,
leaves Orbax's background machinery to print on its own after the one-line error: TensorStore
completes abandoned I/O on an event loop Orbax already closed (`RuntimeError: Event loop is
closed`, through `sys.unraisablehook`), and sibling tasks nobody awaited log `Task exception was
never retrieved` when collected. `NOISE` holds such output while a writing manager or a read is
open, drops it once the operation is known to have failed (its one error line is on its way),
and prints what it held when the operation ends cleanly. Nothing else is filtered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import types


class OrbaxNoise:
  """Holds, then drops or prints, what Orbax's machinery prints by itself after a failed save
  or read, recognised narrowly:
    - `RuntimeError: Event loop is closed` reported unraisable with no object, raised at
      `call_soon_threadsafe` called from native code (no Python caller: TensorStore finishing a
      write whose loop Orbax closed);
    - `asyncio` log records whose exception was raised in Orbax code ("Task exception was
      never retrieved" of the write tasks a failed `gather` abandoned);
    - uncaught exceptions of threads whose traceback is Orbax/TensorStore/stdlib only.
  Anything with a frame of paced_jax, or any other exception, passes through untouched. While a
  writing manager or a read (`reading`) is open these are held; `failed()` (the operation
  failed: its one error line is on its way) drops them and what comes later; the last one
  closing cleanly prints what was held and stops holding."""

  def __init__(self):
    self.lock = threading.Lock()
    self.open = 0
    self.failing = False
    self.failed_once = False
    self.held: list = []

  # -- state
  def opened(self, mgr) -> None:
    self.install()
    with self.lock:
      if self.open == 0:  # a new run: an earlier run's failure no longer applies
        self.failing, self.held = False, []
      self.open += 1
    mgr.paced_noise = True

  def failed(self, write: bool = True) -> None:
    """An operation failed: drop what is held and what comes later. `write`: it was a
    checkpoint write (`checkpoint.write_failed`)."""
    with self.lock:
      self.failing = True
      self.failed_once = self.failed_once or write
      self.held = []

  def closed(self, mgr) -> None:
    if not getattr(mgr, "paced_noise", False):
      return
    mgr.paced_noise = False
    with self.lock:
      self.open = max(self.open - 1, 0)
      replay = self.held if self.open == 0 and not self.failing else []
      if replay:
        self.held = []
    for show in replay:
      show()

  def _take(self, show) -> bool:
    """True: held or dropped (not printed now)."""
    with self.lock:
      if self.failing:
        return True
      if self.open:
        self.held.append(show)
        return True
    return False

  # -- recognisers
  @staticmethod
  def _frames(tb) -> list[str]:
    out = []
    while tb is not None:
      out.append(tb.tb_frame.f_code.co_filename)
      tb = tb.tb_next
    return out

  @classmethod
  def _orbax_only(cls, tb) -> bool:
    files = cls._frames(tb)
    return (any("/orbax/" in f or "/tensorstore/" in f for f in files)
            and not any(f"{os.sep}paced_jax{os.sep}" in f for f in files))

  @classmethod
  def _closed_loop_callback(cls, u) -> bool:
    if u.exc_type is not RuntimeError or str(u.exc_value) != "Event loop is closed":
      return False
    if u.object is not None or u.exc_traceback is None:
      return False
    first = u.exc_traceback.tb_frame.f_code
    return first.co_name == "call_soon_threadsafe" and "asyncio" in first.co_filename

  # -- hooks
  def install(self) -> None:
    if getattr(sys.unraisablehook, "paced_noise", False) is False:
      prev = sys.unraisablehook

      def unraisable(u, prev=prev):
        if not (self._closed_loop_callback(u) and self._take(lambda: prev(u))):
          prev(u)
      unraisable.paced_noise = True
      sys.unraisablehook = unraisable
    if getattr(threading.excepthook, "paced_noise", False) is False:
      prev_thread = threading.excepthook

      def excepthook(a, prev=prev_thread):
        if not (self._orbax_only(a.exc_traceback) and self._take(lambda: prev(a))):
          prev(a)
      excepthook.paced_noise = True
      threading.excepthook = excepthook
    aio = logging.getLogger("asyncio")
    if not any(getattr(f, "paced_noise", False) for f in aio.filters):
      aio.addFilter(AsyncioFilter(self, aio))


class AsyncioFilter(logging.Filter):
  paced_noise = True

  def __init__(self, noise: OrbaxNoise, logger: logging.Logger):
    super().__init__()
    self.noise, self.logger, self.replaying = noise, logger, False

  def filter(self, record: logging.LogRecord) -> bool:
    if self.replaying:
      return True
    exc = record.exc_info[2] if record.exc_info else None
    if exc is None or not OrbaxNoise._orbax_only(exc):
      return True
    return not self.noise._take(lambda: self._replay(record))

  def _replay(self, record) -> None:
    self.replaying = True
    try:
      self.logger.handle(record)
    finally:
      self.replaying = False


NOISE = OrbaxNoise()


@contextlib.contextmanager
def reading():
  """Around an Orbax read: the noise of a read that raises is dropped (the caller turns the
  failure into one error line); after a clean read what was held is printed."""
  holder = types.SimpleNamespace()  # marks this read as opened, as a manager is
  NOISE.opened(holder)
  try:
    yield
  except BaseException:
    NOISE.failed(write=False)
    raise
  finally:
    NOISE.closed(holder)
