"""Every test runs on two emulated CPU devices, with rank promotion an error."""
import os

import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests compile many small programs; XLA's heavy optimisations would dominate their time.
jax.config.update("jax_disable_most_optimizations", True)
# The XLA:CPU setting the programs make (jaxgen.training.configure_jax), before the backend starts.
from jaxgen import layers  # noqa: E402

layers.configure_cpu()
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "jaxgen-tfds-test"))
