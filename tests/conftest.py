"""Shared test set-up: a persistent XLA compilation cache and tiny configs.

Most end-to-end tests compile the same tiny programs; caching the compiled
executables on disk (shared with the subprocesses the tests start, through
JAX_COMPILATION_CACHE_DIR) keeps the suite within its CPU budget.
"""
import os
import sys
import tempfile

_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "eo_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tiny import tiny_config  # noqa: E402


@pytest.fixture
def config():
  return tiny_config()
