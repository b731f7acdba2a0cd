"""Generated images out of a run's latest checkpoint, to look at or to measure outside jaxgen.

    python -m experiments.sample --workdir=runs/wgan_gp --num_samples=10000 --out=samples.npz
    python -m experiments.sample --workdir=runs/wgan_gp --num_samples=64 --out=grid.png
    python -m experiments.sample --workdir=runs/wgan_gp --grid=interpolation --out=interp.png
    python -m experiments.sample --workdir=runs/wgan_gp --grid=sweep --out=sweep.png

.npz: key `images`, float32 (N, H, W, C) in the data's own pixel range (0..255 for image
datasets, the blob brightness for blobs), and `step`, the checkpoint's step. .png: a grid.
Works for a run of any program: config.json names the program (its `model`), and each program's
`sampler(config, image_shape)` says how to rebuild its sampler; neither the training data nor
the optimizer is needed.
"""

import dataclasses
import importlib
import os
import sys

from absl import app, flags, logging

GRIDS = ("samples", "interpolation", "sweep")


def define_flags() -> None:
  # Defined when run as a program only, so that other programs (experiments.evaluate) can import
  # draw_samples and define their own --workdir.
  flags.DEFINE_string("workdir", None, "work directory of a training run")
  flags.DEFINE_integer("num_samples", 64, "images to generate (--grid=samples)")
  flags.DEFINE_string("out", "samples.npz", "output file: .npz (arrays) or .png (a grid)")
  flags.DEFINE_enum("grid", "samples", GRIDS,
                    "samples: random draws; interpolation: rows between pairs of random "
                    "latents; sweep: one row per latent dimension, that dimension across [-3, 3]")
  flags.DEFINE_integer("rows", 8, "rows of an interpolation grid")
  flags.DEFINE_integer("seed", 0, "seed of the latent draws")
  flags.DEFINE_integer("chunk", 256, "images generated per call")


FLAGS = flags.FLAGS


def load_sampler(workdir_path: str):
  """(generate(z) -> images in [-1, 1], latent shape, settings of config.json, step) of the latest
  checkpoint of the run in `workdir_path`."""
  import functools

  import jax
  from jaxgen import checkpoint, workdir

  settings = workdir.load_config(workdir_path)
  try:
    program = importlib.import_module(f"experiments.{settings['model']}")
  except ImportError:
    raise ValueError(f"--workdir={workdir_path} holds a {settings['model']!r} run, which this "
                     f"jaxgen has no program for") from None
  names = {f.name for f in dataclasses.fields(program.Config)}
  # A setting newer than the run takes the value it had then (Settings.BEFORE).
  before = {k: v for k, v in program.Config.BEFORE.items() if k not in settings}
  config = program.Config(**{k: v for k, v in settings.items() if k in names}, **before)
  latent_shape, generate = program.sampler(config, tuple(settings["image_shape"]))
  checkpoints = checkpoint.Checkpoints(os.path.join(workdir_path, "checkpoints"), read_only=True)
  try:
    tree, _ = checkpoints.restore_tree()
    step = checkpoints.latest_step()
  finally:
    checkpoints.close()
  return jax.jit(functools.partial(generate, tree)), tuple(latent_shape), settings, step


def _generate_in_chunks(generate, z, chunk):
  import numpy as np
  return np.concatenate([np.asarray(generate(z[i:i + chunk])) for i in range(0, len(z), chunk)])


def draw_samples(workdir_path: str, num_samples: int, seed: int = 0, chunk: int = 256):
  """(images float32 (N, H, W, C) in the data's own pixel range, settings, step): `num_samples`
  draws from the latest checkpoint of a run, latents from `seed`."""
  import jax
  from jaxgen import data

  if num_samples <= 0:
    raise ValueError(f"--num_samples must be positive, got {num_samples}")
  generate, latent_shape, settings, step = load_sampler(workdir_path)
  keys = jax.random.split(jax.random.PRNGKey(seed), -(-num_samples // chunk))
  z = jax.numpy.concatenate([jax.random.normal(k, (chunk, *latent_shape)) for k in keys])
  images = _generate_in_chunks(generate, z[:num_samples], chunk)
  return data.from_model_range(images, settings["pixel_range"]), settings, step


def write_samples(workdir_path: str, num_samples: int, out: str, seed: int = 0,
                  chunk: int = 256, grid: str = "samples", rows: int = 8) -> str:
  import jax
  import numpy as np
  from jaxgen import report

  if not out.endswith((".npz", ".png")):
    raise ValueError(f"--out={out} must end in .npz (arrays) or .png (a grid)")
  if grid not in GRIDS:
    raise ValueError(f"--grid must be one of {', '.join(GRIDS)}, got {grid!r}")
  if grid != "samples":
    from jaxgen import gan_training
    if not out.endswith(".png"):
      raise ValueError(f"--grid={grid} writes a picture: give --out a .png name")
    generate, latent_shape, settings, step = load_sampler(workdir_path)
    if len(latent_shape) != 1:
      raise ValueError(f"--grid={grid} needs a vector latent; this run's latent has shape "
                       f"{latent_shape}")
    grids = gan_training.latent_grids(generate, latent_shape[0], jax.random.PRNGKey(seed), rows)
    images = np.asarray(grids[GRIDS.index(grid) - 1])
    report.save_png(out, report.sample_grid((images + 1.0) / 2.0, 8),
                    max(1, 128 // images.shape[1]))
    return f"wrote a {grid} grid of {len(images)} images of step {step} to {out}"
  images, settings, step = draw_samples(workdir_path, num_samples, seed, chunk)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if out.endswith(".png"):
    low, high = settings["pixel_range"]
    report.save_png(out, report.sample_grid((images - low) / (high - low)),
                    max(1, 128 // images.shape[1]))
  else:
    np.savez(out, images=images, step=step)
  return f"wrote {num_samples} samples of step {step} to {out}"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir:
    sys.exit("error: --workdir is required: the work directory of a training run")
  try:
    print(write_samples(FLAGS.workdir, FLAGS.num_samples, FLAGS.out, FLAGS.seed, FLAGS.chunk,
                        FLAGS.grid, FLAGS.rows))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
