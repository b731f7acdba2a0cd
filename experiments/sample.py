"""Generated images out of a run's latest checkpoint, to measure outside jaxgen.

    python -m experiments.sample --workdir=runs/wgan_gp --num_samples=10000 --out=samples.npz
    python -m experiments.sample --workdir=runs/wgan_gp --num_samples=64 --out=grid.png

.npz: key `images`, float32 (N, H, W, C) in the data's own pixel range (0..255 for image
datasets, the blob brightness for blobs), and `step`, the checkpoint's step. .png: a grid.
"""

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
  # Defined when run as a program only, so that experiments.evaluate can import draw_samples
  # and define its own --workdir.
  flags.DEFINE_string("workdir", None, "work directory of a training run")
  flags.DEFINE_integer("num_samples", 64, "images to generate")
  flags.DEFINE_string("out", "samples.npz", "output file: .npz (arrays) or .png (a grid)")
  flags.DEFINE_integer("seed", 0, "seed of the latent draws")
  flags.DEFINE_integer("chunk", 256, "images generated per call")


def load_generator(workdir_path: str):
  """(generate_fn(z) -> model-range images, latent_dim, settings, step) of a run's latest
  checkpoint."""
  import functools

  import jax
  from jaxgen import checkpoint, gan, workdir

  settings = workdir.load_config(workdir_path)
  model = settings["model"]
  if model == "wgan_gp":
    from experiments import wgan_gp as experiment
    from jaxgen import wgan_gp as family
  else:
    raise ValueError(f"--workdir={workdir_path} holds a {model!r} run, which this program cannot "
                     f"sample yet")
  names = {f for f in experiment.Config.__dataclass_fields__}
  config = experiment.Config(**{k: v for k, v in settings.items() if k in names})
  image_shape = tuple(settings["image_shape"])
  generator, critic = experiment.networks(config, image_shape[-1])
  like = jax.eval_shape(functools.partial(
      gan.init_state, generator=generator, discriminator=critic,
      optimizer=family.optimizer(config.learning_rate), image_shape=image_shape),
      jax.random.PRNGKey(0))
  checkpoints = checkpoint.Checkpoints(os.path.join(workdir_path, "checkpoints"))
  step = checkpoints.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir_path}/checkpoints; train the run first")
  state, _ = checkpoints.restore(like, step)
  checkpoints.close()
  return (jax.jit(functools.partial(gan.generate, generator, state)), config.latent, settings,
          step)


def draw_samples(workdir_path: str, num_samples: int, seed: int = 0, chunk: int = 256):
  """(images float32 (N, H, W, C) in the data's own pixel range, settings (config.json), step)
  from a run's latest checkpoint, the latents drawn from `seed`."""
  import jax
  import numpy as np
  from jaxgen import data

  if num_samples <= 0:
    raise ValueError(f"--num_samples must be positive, got {num_samples}")
  generate, latent, settings, step = load_generator(workdir_path)
  keys = jax.random.split(jax.random.PRNGKey(seed), -(-num_samples // chunk))
  images = np.concatenate([np.asarray(generate(jax.random.normal(k, (chunk, latent))))
                           for k in keys])[:num_samples]
  return data.from_model_range(images, settings["pixel_range"]), settings, step


def write_samples(workdir_path: str, num_samples: int, out: str, seed: int = 0,
                  chunk: int = 256) -> str:
  import jax
  import numpy as np
  from jaxgen import data, report

  if not out.endswith((".npz", ".png")):
    raise ValueError(f"--out={out} must end in .npz (arrays) or .png (a grid)")
  if num_samples <= 0:
    raise ValueError(f"--num_samples must be positive, got {num_samples}")
  generate, latent, settings, step = load_generator(workdir_path)
  keys = jax.random.split(jax.random.PRNGKey(seed), -(-num_samples // chunk))
  images = np.concatenate([np.asarray(generate(jax.random.normal(k, (chunk, latent))))
                           for k in keys])[:num_samples]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if out.endswith(".png"):
    report.save_png(out, report.sample_grid((images + 1.0) / 2.0),
                    max(1, 128 // images.shape[1]))
  else:
    np.savez(out, images=data.from_model_range(images, settings["pixel_range"]), step=step)
  return f"wrote {num_samples} samples of step {step} to {out}"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir:
    sys.exit("error: --workdir is required: the work directory of a training run")
  try:
    print(write_samples(FLAGS.workdir, FLAGS.num_samples, FLAGS.out, FLAGS.seed, FLAGS.chunk))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
