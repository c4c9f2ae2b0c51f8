"""Test harness: 8 fake CPU devices, set before jax is imported anywhere."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  # Append, never overwrite: users may carry their own XLA flags.
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

from absl import flags as _absl_flags  # noqa: E402

# Grain worker processes read absl flags; pytest never parses them.
_absl_flags.FLAGS.mark_as_parsed()

import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests compile the same programs (a train() call and its resume, CLI subprocesses): a
# persistent compilation cache, shared with subprocesses through the environment, compiles each
# once per session.
_cache_dir = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                                   tempfile.mkdtemp(prefix="paced-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", _cache_dir)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

from paced_jax.config import MeshConfig  # noqa: E402
from paced_jax.sharding import make_mesh  # noqa: E402


def pytest_configure(config):
  if jax.device_count() != 8:
    raise pytest.UsageError(
        f"tests need 8 fake CPU devices, found {jax.device_count()}: jax was imported before "
        "tests/conftest.py could set XLA_FLAGS")


@pytest.fixture(scope="session")
def mesh_2x4():
  """fsdp=2 x tensor=4 over the 8 fake devices."""
  return make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
