r"""Compare generative models on the blob images at an equal number of generator updates.

    python -m experiments.compare                                # WGAN-GP vs conv VAE, blobs1
    python -m experiments.compare --dataset=blobs10 --updates=3000
    python -m experiments.compare --models=wgan_gp,dcgan,vae --updates=2000 --root=runs/cmp

Each model trains (or resumes: an existing run in <root>/<dataset>/<model> is continued to
--updates, never restarted) with its program's own code on the same data and seed, to --updates
generator updates (the VAE's decoder updates: one per step for both), then
`experiments.evaluate` scores --num_samples of its images against the blob generator's truth.
Writes <root>/<dataset>/report.md (a table of the blob metrics, real images first) and
samples.png (64 samples of each model side by side, real images first).

Latent sizes are the study's: WGAN-GP 32 and VAE 4 for one blob, 64 and 40 for ten; other
settings are each program's defaults.
"""

import importlib
import math
import os
import sys

from absl import app, flags, logging

MODELS = ("wgan_gp", "dcgan", "wgan", "gan", "vae")
LATENTS = {"blobs1": {"vae": 4, "gan": 100}, "blobs10": {"vae": 40, "gan": 100}}
DEFAULT_LATENT = {"blobs1": 32, "blobs10": 64}  # the GANs'
# (key in blob_metrics.summary, column title, number format)
COLUMNS = (("count_exact_fraction", "exactly the true count", "{:.1%}"),
           ("empty_fraction", "empty", "{:.1%}"),
           ("count_mean", "mean count", "{:.2f}"),
           ("width_median", "median width (px)", "{:.2f}"),
           ("amplitude_mean", "mean amplitude", "{:.3f}"),
           ("streak_fraction", "streaks", "{:.1%}"),
           ("centre_ks", "centre KS", "{:.3f}"),
           ("background_mean", "background", "{:.2e}"))

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_enum("dataset", "blobs1", ["blobs1", "blobs10"], "the blob images")
  flags.DEFINE_list("models", ["wgan_gp", "vae"], f"programs to compare: {', '.join(MODELS)}")
  flags.DEFINE_integer("updates", 3000, "generator (decoder) updates of every model")
  flags.DEFINE_integer("num_samples", 2000, "images of each model to score")
  flags.DEFINE_integer("seed", 0, "seed of every run and of the scored latents")
  flags.DEFINE_string("root", "runs/compare", "where the runs and the report go")


def check(models, updates: int, num_samples: int) -> None:
  """One-line errors for bad arguments, before anything trains."""
  unknown = [m for m in models if m not in MODELS]
  if unknown or not models:
    raise ValueError(f"--models: {unknown[0] if unknown else 'none'} is not one of "
                     f"{', '.join(MODELS)}")
  if len(set(models)) != len(models):
    raise ValueError(f"--models names a model twice: {','.join(models)}")
  if updates <= 0 or num_samples < 2:
    raise ValueError(f"--updates must be positive and --num_samples at least 2, got {updates} "
                     f"and {num_samples}")


def _fields(model: str) -> set:
  """The setting names of `model`'s program."""
  import dataclasses
  config = importlib.import_module(f"experiments.{model}").Config
  return {f.name for f in dataclasses.fields(config)}


def model_config(model: str, dataset: str, updates: int, seed: int, workdir: str, **overrides):
  """The program's Config of one compared run: the study's latent size, `updates` steps, and
  those of `overrides` that the program has (a VAE-only setting leaves the GANs alone)."""
  program = importlib.import_module(f"experiments.{model}")
  latent = LATENTS[dataset].get(model, DEFAULT_LATENT[dataset])
  every = max(1, updates // 10)
  settings = dict(dataset=dataset, steps=updates, seed=seed, workdir=workdir, latent_dim=latent,
                  log_every=every, sample_every=updates, checkpoint_every=every)
  mine = {k: v for k, v in overrides.items() if k in _fields(model)}
  return program, program.Config(**{**settings, **mine})


def run(models, dataset: str, updates: int, num_samples: int, seed: int, root: str,
        **overrides) -> dict:
  """Trains (or resumes) each model to `updates`, scores it, writes report.md and samples.png;
  returns {"real": summary, model: summary, ...} of the blob metrics. `overrides` are settings
  of the programs' Configs, each given to the models that have it."""
  import numpy as np
  from experiments import evaluate, sample
  from jaxgen import checkpoint, report, training

  check(models, updates, num_samples)
  unknown = sorted(set(overrides) - set().union(*(_fields(m) for m in models)))
  if unknown:
    raise ValueError(f"no compared model has the setting {unknown[0]!r}")
  folder = os.path.join(root, dataset)
  for model in models:  # before anything trains
    done = checkpoint.latest_step(os.path.join(folder, model, "checkpoints"))
    if done is not None and done > updates:
      raise ValueError(f"{os.path.join(folder, model)} is trained to {done} updates, beyond "
                       f"--updates={updates}; choose another --root")
  summaries, grids, steps = {}, {}, {}
  for model in models:
    program, config = model_config(model, dataset, updates, seed,
                                   os.path.join(folder, model), **overrides)
    config, devices, source = training.setup(config, program.MODEL)
    program.train(config, devices, source)
    scored = evaluate.evaluate(config.workdir, num_samples=num_samples, seed=seed,
                               features="none")
    steps[model] = scored["step"]
    summaries.setdefault("real", scored["blobs"]["reference"])
    summaries[model] = scored["blobs"]["generated"]
    images, settings, _ = sample.draw_samples(config.workdir, 64, seed)
    low, high = settings["pixel_range"]
    grids[model] = (np.asarray(images) - low) / (high - low)
  assert all(step == updates for step in steps.values()), steps
  real = training.first_examples(source, 64)
  grids["real"] = (np.asarray(real, np.float32) + 1.0) / 2.0  # batches are in [-1, 1]
  write_report(folder, dataset, updates, num_samples, seed, summaries)
  pictures = [report.sample_grid(grids[name]) for name in ["real", *models]]
  gap = np.ones((pictures[0].shape[0], 4, *pictures[0].shape[2:]), np.uint8) * 255
  side_by_side = np.concatenate([p for picture in pictures for p in (picture, gap)][:-1], 1)
  report.save_png(os.path.join(folder, "samples.png"), side_by_side, scale=2)
  return summaries


def write_report(folder: str, dataset: str, updates: int, num_samples: int, seed: int,
                 summaries: dict) -> str:
  lines = [f"# {dataset}: {', '.join(m for m in summaries if m != 'real')} at {updates} "
           f"generator updates", "",
           f"{num_samples} images of each, seed {seed}; real: fresh draws of the blob generator. "
           f"samples.png shows 64 of each, in this order, real first.", "",
           "| | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
           "|---|" + "---|" * len(COLUMNS)]
  for name, stats in summaries.items():
    # n/a: no blob found to fit (a model that draws none)
    cells = ["n/a" if math.isnan(stats[key]) else fmt.format(stats[key])
             for key, _, fmt in COLUMNS]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  text = "\n".join(lines) + "\n"
  path = os.path.join(folder, "report.md")
  with open(path, "w") as f:
    f.write(text)
  return path


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; settings are --flags (see --help)")
  logging.set_verbosity(logging.WARNING)
  from jaxgen import training
  try:
    check(FLAGS.models, FLAGS.updates, FLAGS.num_samples)
    training.configure_jax()
    run(FLAGS.models, FLAGS.dataset, FLAGS.updates, FLAGS.num_samples, FLAGS.seed, FLAGS.root)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(open(os.path.join(FLAGS.root, FLAGS.dataset, "report.md")).read())


if __name__ == "__main__":
  define_flags()
  app.run(main)
