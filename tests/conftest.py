"""Every test runs on two emulated CPU devices, with rank promotion an error."""
import gc
import os

import jax
import pytest

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests compile many small programs; XLA's heavy optimisations would dominate their time.
jax.config.update("jax_disable_most_optimizations", True)
# Convolution forms from the fixed table: no timing during tests, the same programs on every
# machine (tests/test_conv_forms.py measures on purpose). Subprocesses inherit it.
os.environ["JAXGEN_CONV_FORMS"] = "fixed"
# The XLA:CPU setting the programs make (jaxgen.training.configure_jax), before the backend starts.
from jaxgen import layers  # noqa: E402

layers.configure_cpu()
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "jaxgen-tfds-test"))


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
  """XLA:CPU maps memory for every program it compiles and keeps them while JAX's caches hold
  them: one test file leaves about 9,000 maps, and the whole suite in one process would pass the
  kernel's default limit of 65,530 (vm.max_map_count), where compilation segfaults. Each file's
  programs are dropped after it."""
  yield
  jax.clear_caches()
  gc.collect()
