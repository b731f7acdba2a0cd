"""Times the DCGAN generator's forward and backward pass with each way of doubling the size.

    python -m experiments.benchmark_upsampling [--batch=64 --image_size=32 --width=32 --rounds=5]

transpose: DCGAN's k4 s2 transposed convolutions (jaxgen.layers.ConvTranspose); resize:
nearest-neighbour upsampling then a 3x3 convolution, computed as one transposed convolution
(jaxgen.layers.UpsampleConv); resize_plain: the same written plainly (jnp.repeat, nn.Conv).
Rounds alternate between the three so that the machine's load falls on all of them; prints the
median time of each and the ratios.
"""

import time

import numpy as np
from absl import app, flags

flags.DEFINE_integer("batch", 64, "latents per pass")
flags.DEFINE_integer("image_size", 32, "image height and width")
flags.DEFINE_integer("width", 32, "the generator's width")
flags.DEFINE_integer("rounds", 5, "alternating rounds")
flags.DEFINE_integer("calls", 50, "timed calls per round")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  from jaxgen import dcgan, layers, training

  training.configure_jax()
  z = jax.random.normal(jax.random.PRNGKey(0), (FLAGS.batch, 32))
  variants = {"transpose": {}, "resize": {"upsampling": "resize"},
              "resize_plain": {"upsampling": "resize", "upsample_conv": layers.PlainUpsampleConv}}
  steps = {}
  for name, fields in variants.items():
    generator = dcgan.Generator(FLAGS.image_size, 1, FLAGS.width, 32, **fields)
    variables = generator.init(jax.random.PRNGKey(1), z, train=False)

    def loss(params, generator=generator, variables=variables):
      images, _ = generator.apply({**variables, "params": params}, z, train=True,
                                  mutable=["batch_stats"])
      return jnp.sum(images ** 2)

    grad = jax.jit(jax.grad(loss))
    jax.block_until_ready(grad(variables["params"]))  # compiled before timing
    steps[name] = (grad, variables["params"])
  times = {name: [] for name in steps}
  for _ in range(FLAGS.rounds):
    for name, (grad, params) in steps.items():
      start = time.perf_counter()
      for _ in range(FLAGS.calls):
        out = grad(params)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / FLAGS.calls)
  median = {name: float(np.median(t)) for name, t in times.items()}
  for name, seconds in median.items():
    print(f"{name}: {1e3 * seconds:.2f} ms per forward and backward pass")
  print(f"resize / transpose: {median['resize'] / median['transpose']:.2f}; "
        f"resize_plain / resize: {median['resize_plain'] / median['resize']:.2f}")


if __name__ == "__main__":
  app.run(main)
