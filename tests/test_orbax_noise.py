"""The filter of what Orbax's machinery prints by itself after a failed read or write
(paced_jax.orbax_noise): TensorStore's callbacks reaching an event loop Orbax closed arrive as
unraisable `RuntimeError: Event loop is closed` with no object. Their timing is the machine's;
here they are made on purpose, so the filter's rules are checked deterministically."""

import asyncio
import sys
import types

import pytest

from paced_jax import orbax_noise


def _closed_loop_noise():
  """What TensorStore's late callback produces: call_soon_threadsafe on a closed loop, raised
  with no Python caller (the traceback starts in asyncio), reported with no object."""
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    tb = e.__traceback__.tb_next  # drop this frame: native code has no Python frame
    return types.SimpleNamespace(exc_type=RuntimeError, exc_value=e, exc_traceback=tb,
                                 err_msg=None, object=None)
  raise AssertionError("a closed loop accepted a callback")


@pytest.fixture
def printed(monkeypatch):
  """The hook behind the filter (what would print), and a filter of its own."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u))
  monkeypatch.setattr(orbax_noise, "NOISE", orbax_noise.OrbaxNoise())
  return seen


def test_a_failed_reads_noise_is_dropped_and_a_clean_reads_is_printed_after(printed):
  with pytest.raises(ValueError):
    with orbax_noise.reading():
      raise ValueError("truncated")
  sys.unraisablehook(_closed_loop_noise())  # late, after the one error line
  assert printed == [] and not orbax_noise.NOISE.failed_once  # a read is not a write

  with orbax_noise.reading():  # a new, clean read: nothing of its own is dropped
    sys.unraisablehook(_closed_loop_noise())
    assert printed == []  # held while the read is open
  assert len(printed) == 1  # printed when it ended cleanly

  other = types.SimpleNamespace(exc_type=ValueError, exc_value=ValueError("x"),
                                exc_traceback=None, err_msg=None, object=None)
  with pytest.raises(KeyError):
    with orbax_noise.reading():
      raise KeyError("bad")
  sys.unraisablehook(other)  # anything not recognised passes through, even while dropping
  assert printed[-1] is other


def test_a_failed_write_is_remembered_as_one():
  noise = orbax_noise.OrbaxNoise()
  noise.failed(write=False)
  assert noise.failing and not noise.failed_once
  noise.failed()
  assert noise.failed_once
