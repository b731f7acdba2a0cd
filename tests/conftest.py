"""Every test runs on two emulated CPU devices, with rank promotion an error.

pytest runs two worker processes (pyproject.toml: pytest-xdist, one test file per worker at a
time); everything below is per process, and the TFDS default directory is per worker."""
import atexit
import gc
import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests compile many small programs; XLA's heavy optimisations would dominate their time.
jax.config.update("jax_disable_most_optimizations", True)
# One persistent compilation cache for the whole process, in a new temporary directory: tests
# compile the same tiny programs again and again (each file's in-memory caches are dropped, see
# below, and every test builds its own step functions); a cached program is the same program,
# so results are unchanged. Program subprocesses share it through jaxgen's variable.
_CACHE = tempfile.mkdtemp(prefix="jaxgen-test-xla-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
os.environ.setdefault("JAXGEN_COMPILATION_CACHE", _CACHE)
# Convolution forms from the fixed table: no timing during tests, the same programs on every
# machine (tests/test_conv_forms.py measures on purpose). Subprocesses inherit it.
os.environ["JAXGEN_CONV_FORMS"] = "fixed"
# The XLA:CPU setting the programs make (jaxgen.training.configure_jax), before the backend starts.
from jaxgen import layers  # noqa: E402

layers.configure_cpu()
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), "jaxgen-tfds-test" + os.environ.get("PYTEST_XDIST_WORKER", "")))


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
  """XLA:CPU maps memory for every program it compiles and keeps them while JAX's caches hold
  them: one test file leaves about 9,000 maps, and the whole suite in one process would pass the
  kernel's default limit of 65,530 (vm.max_map_count), where compilation segfaults. Each file's
  programs are dropped after it."""
  yield
  jax.clear_caches()
  gc.collect()
