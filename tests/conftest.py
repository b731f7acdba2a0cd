"""Every test runs on two emulated CPU devices, with rank promotion an error."""
import os

import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests compile many small programs; XLA's heavy optimisations would dominate their time.
jax.config.update("jax_disable_most_optimizations", True)
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "jaxgen-tfds-test"))
