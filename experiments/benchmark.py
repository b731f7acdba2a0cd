"""Speed of jaxgen's training steps and data, one JSON line per run.

    python -m experiments.benchmark --case=wgan_gp_32 --batch=64
    python -m experiments.benchmark --case=wgan_gp_64 --batch=64 --steps=5
    python -m experiments.benchmark --case=blobs --batch=256
    python -m experiments.benchmark --case=loader_mnist --batch=64 --data_dir=DIR
    python -m experiments.benchmark --case=wgan_gp_32 --convs=plain   # flax's own convolutions
    python -m experiments.benchmark --case=wgan_gp_64 --precision=bfloat16   # for GPUs
    python -m experiments.benchmark --case=dcgan_64 --batch=64
    python -m experiments.benchmark --case=vae_mlp --batch=128
    python -m experiments.benchmark --case=vae_conv64 --batch=64
    python -m experiments.benchmark --case=realnvp_28 --batch=64

images_per_s counts real images consumed: n_critic (5) x batch per WGAN-GP generator step, batch
per DCGAN step. The WGAN-GP cases use the architectures and optimizer of
../shared/bench/torch_ref.py (DCGAN width 64, latent 100, Adam(1e-4, 0, 0.9), lambda 10), the DCGAN
cases its DCGAN (one discriminator update on real and fake, then one non-saturating generator
update on the same fake batch, Adam(2e-4, 0.5, 0.999)), on random data already on the device, so
the figure is the training step alone; compare it side by side with that reference (README,
Performance).
foreign_cpu_s is CPU time other processes took during the timed region: a large value marks a
contaminated measurement.

    python -m experiments.benchmark --suite                        # the seeded quality suite
    python -m experiments.benchmark --suite --suite_cases=vae_blobs1,dcgan_blobs1
    python -m experiments.benchmark --suite --data_dir=DIR         # and dcgan_mnist

--suite trains each case of SUITE with its program's own code (its Config, setup and train, as
the command line would), scores the final checkpoint with experiments.evaluate on
--suite_samples images per set, and prints one JSON line per case, then a markdown table.
Quality numbers are exactly reproducible for the same seed on the same machine and jax version;
speed and times vary with the hardware and its load.
"""

import functools
import json
import math
import os
import resource
import sys
import time

from absl import app, flags

from jaxgen.layers import PRECISIONS

LOADERS = ("mnist", "fashion_mnist", "cifar10", "celeba", "imagenette")
CASES = ("wgan_gp_32", "wgan_gp_64", "dcgan_32", "dcgan_64", "vae_mlp", "vae_conv64",
         "realnvp_28", "blobs") + tuple(
    f"loader_{name}" for name in LOADERS)
flags.DEFINE_enum("case", "wgan_gp_32", CASES, "what to measure")
flags.DEFINE_integer("batch", 64, "batch size")
flags.DEFINE_integer("steps", 10, "timed steps (loader cases time at least 200 batches)")
flags.DEFINE_integer("warmup", 2, "untimed steps after compilation")
flags.DEFINE_integer("num_blobs", 1, "blobs per image for --case=blobs")
flags.DEFINE_integer("width", 64, "network width of the GAN cases (the reference's is 64)")
flags.DEFINE_integer("latent", 100, "latent size of the GAN cases (the reference's is 100)")
flags.DEFINE_enum("convs", "jaxgen", ("jaxgen", "plain"),
                  "GAN cases' convolutions: jaxgen's layers, or flax's own lax convolutions with "
                  "JAX's autodiff and XLA's default CPU settings (the baseline they replace)")
flags.DEFINE_enum("precision", "float32", list(PRECISIONS),
                  "GAN networks' computation dtype (parameters and losses stay float32)")
flags.DEFINE_integer("steps_per_call", 1, "VAE and RealNVP cases: steps run as one device loop "
                     "per call (parallel.fused_steps, as the VAE program's --steps_per_call); "
                     "--steps counts calls")
flags.DEFINE_string("data_dir", None, "data directory of the loader cases and of the suite's "
                    "image datasets")
flags.DEFINE_bool("suite", False, "train and score the fixed suite of seeded cases (SUITE)")
flags.DEFINE_string("suite_cases", "", "comma-separated suite cases to run; empty: all")
flags.DEFINE_float("suite_scale", 1.0, "multiplies every suite case's steps (a quick look; the "
                   "suite's figures are those of scale 1)")
flags.DEFINE_integer("suite_samples", 1000, "images per set of the suite's evaluations")
flags.DEFINE_string("suite_dir", "", "where the suite's runs go (must not hold them yet); empty: "
                    "a new temporary directory")
flags.DEFINE_string("classifier_dir", "", "a saved MNIST classifier for dcgan_mnist's scores "
                    "(default: experiments.evaluate's, trained there once if missing)")
FLAGS = flags.FLAGS

# The seeded suite: case -> (program, its settings, steps). Every case has seed 0; together they
# take a few minutes on two CPU cores, so most train on 16x16 blobs (four times less work a
# step; WGAN-GP draws its first blobs there after about 300 steps, on 32x32 after over 500).
SUITE = {
    "wgan_gp_blobs16": ("wgan_gp", dict(dataset="blobs1", image_size=16), 400),
    "dcgan_blobs1": ("dcgan", dict(dataset="blobs1"), 400),
    "vae_blobs16": ("vae", dict(dataset="blobs1", image_size=16, eval_examples=1000), 600),
    "realnvp_blobs16": ("realnvp", dict(dataset="blobs1", image_size=16, eval_examples=1000), 100),
    "dcgan_mnist": ("dcgan", dict(dataset="mnist"), 200),
}
SUITE_NEEDS_DATA = ("dcgan_mnist",)
SUITE_SEED = 0
# What each case's JSON line and table row show of the evaluation (all of it is in the run's
# evaluation.json): blob numbers of the generated set, its distances to the reference, and
# the feature scores.
SUITE_BLOBS = ("count_exact_fraction", "width_mean", "streak_fraction", "centre_ks")
SUITE_BLOB_DISTANCES = ("count_tv", "width_w1")
SUITE_FEATURES = ("fid", "kid", "precision", "recall")
# The program's own held-out figure, where it has one (the last test-split evaluation).
SUITE_LIKELIHOOD = {"vae": "neg_elbo", "realnvp": "bits_per_dim"}


class CpuRegion:
  """Wall time of a region, and the CPU seconds that other processes took meanwhile."""

  @staticmethod
  def _machine_busy_s():
    try:
      with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    except OSError:
      return float("nan")
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")

  @staticmethod
  def _own_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

  def __enter__(self):
    self.busy, self.own, self.t0 = self._machine_busy_s(), self._own_s(), time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self.t0
    own = self._own_s() - self.own
    self.foreign = max(0.0, self._machine_busy_s() - self.busy - own)
    return False


def drop_jaxgen_xla_flag() -> None:
  """Drops the XLA:CPU setting jaxgen.layers makes, so the plain baseline is JAX written plainly
  (before JAX starts its CPU backend, which reads XLA_FLAGS)."""
  from jaxgen import layers

  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "").replace(layers._CPU_FLAG, "").strip()


def dcgan_networks(image_size: int, channels: int, discriminator_class: str):
  """The reference's generator and critic or discriminator, with --convs's convolutions."""
  from jaxgen import dcgan, layers

  plain = FLAGS.convs == "plain"
  dtype = PRECISIONS[FLAGS.precision]
  generator = dcgan.Generator(
      image_size, channels, FLAGS.width, FLAGS.latent, dtype=dtype,
      conv_transpose=layers.PlainConvTranspose if plain else layers.ConvTranspose,
      upsample_conv=layers.PlainUpsampleConv if plain else layers.UpsampleConv)
  discriminator = getattr(dcgan, discriminator_class)(
      image_size, FLAGS.width, dtype=dtype, conv=layers.PlainConv if plain else layers.Conv)
  return generator, discriminator


def compiled_gflop(compiled) -> float:
  """XLA's cost analysis of a compiled program: its floating-point operations, in GFLOP (0 where
  the backend gives none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0)) / 1e9


def time_step(step, state, real, key, steps: int, warmup: int, images_per_step: int,
              *count) -> tuple:
  """(last metrics, timing) of `steps` calls of a jitted step function: the timing fields of the
  JSON line (images/s, s/step, compile seconds, foreign CPU seconds, XLA's GFLOP per step and the
  rate they ran at). `count`: the steps per call of a `parallel.fused_steps` function, passed
  as its last argument (per-step figures divide by it; XLA's count of a loop is one pass)."""
  import jax

  per_call = count[0] if count else 1
  t0 = time.perf_counter()
  step = step.lower(state, real, key, *count).compile()
  compile_s = time.perf_counter() - t0
  gflop = compiled_gflop(step)
  for _ in range(warmup):
    state, _ = step(state, real, key, *count)
  jax.block_until_ready(state)
  with CpuRegion() as region:
    for _ in range(steps):
      state, metrics = step(state, real, key, *count)
    jax.block_until_ready(metrics)
  timing = {"images_per_s": images_per_step * per_call * steps / region.wall,
            "s_per_step": region.wall / (steps * per_call), "compile_s": compile_s,
            "foreign_cpu_s": region.foreign}
  if gflop:
    timing.update(gflop_per_step=gflop, gflop_per_s=gflop * steps * per_call / region.wall)
  return metrics, timing


def wgan_gp_case(image_size: int, channels: int, batch: int, steps: int, warmup: int) -> dict:
  import jax
  from jaxgen import gan, wgan_gp

  n_critic = 5
  generator, critic = dcgan_networks(image_size, channels, "Critic")
  optimizer = wgan_gp.optimizer(1e-4)
  state = gan.init_state(jax.random.PRNGKey(0), generator=generator, discriminator=critic,
                         g_optimizer=optimizer, d_optimizer=optimizer,
                         image_shape=(image_size, image_size, channels))
  real = jax.random.uniform(jax.random.PRNGKey(1), (n_critic, batch, image_size, image_size,
                                                    channels), minval=-1.0, maxval=1.0)
  step = jax.jit(functools.partial(wgan_gp.train_step, generator=generator, critic=critic,
                                   optimizer=optimizer, gp_weight=10.0), donate_argnums=0)
  metrics, timing = time_step(step, state, real, jax.random.PRNGKey(2), steps, warmup,
                              images_per_step=n_critic * batch)
  return {**timing, "critic_loss": float(metrics["critic_loss"])}


def dcgan_case(image_size: int, channels: int, batch: int, steps: int, warmup: int) -> dict:
  """The reference's DCGAN step: k = 1 discriminator update, then the generator's on its fake."""
  import jax
  from jaxgen import dcgan, gan

  generator, discriminator = dcgan_networks(image_size, channels, "Discriminator")
  optimizer = dcgan.optimizer()
  state = gan.init_state(jax.random.PRNGKey(0), generator=generator, discriminator=discriminator,
                         g_optimizer=optimizer, d_optimizer=optimizer,
                         image_shape=(image_size, image_size, channels))
  real = jax.random.uniform(jax.random.PRNGKey(1), (1, batch, image_size, image_size, channels),
                            minval=-1.0, maxval=1.0)
  step = jax.jit(functools.partial(gan.train_step, generator=generator,
                                   discriminator=discriminator, g_optimizer=optimizer,
                                   d_optimizer=optimizer, loss="non_saturating"),
                 donate_argnums=0)
  metrics, timing = time_step(step, state, real, jax.random.PRNGKey(2), steps, warmup,
                              images_per_step=batch)
  return {**timing, "d_loss": float(metrics["d_loss"])}


def single_update_case(step, state, real, steps: int, warmup: int, loss: str) -> dict:
  """Timing of a one-batch-per-update step (VAE, RealNVP) on `real` already on the device; with
  --steps_per_call=K > 1, K steps per call as one device loop over K copies of `real`."""
  import jax
  import jax.numpy as jnp
  from jaxgen import parallel

  k = FLAGS.steps_per_call
  if k < 1:
    raise ValueError(f"--steps_per_call must be positive, got {k}")
  count = ()
  if k > 1:
    step, real, count = parallel.fused_steps(step), jnp.broadcast_to(real, (k, *real.shape)), (k,)
  metrics, timing = time_step(jax.jit(step, donate_argnums=0), state, real,
                              jax.random.PRNGKey(2), steps, warmup, real.shape[-4], *count)
  return {**timing, loss: float(metrics[loss]), "steps_per_call": k}


def vae_case(architecture: str, batch: int, steps: int, warmup: int) -> dict:
  """The reference's VAEs: MLP 784-400-20 with a Bernoulli likelihood on binary images, or the
  64x64x3 convolutional VAE with a unit-variance Gaussian; Adam(1e-3)."""
  import jax
  from jaxgen import vae

  dtype = PRECISIONS[FLAGS.precision]
  if architecture == "mlp":
    model, shape, likelihood = vae.mlp_vae((28, 28, 1), dtype=dtype), (28, 28, 1), "bernoulli"
    real = jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, (batch, *shape)) * 2.0 - 1.0
  else:
    model, shape, likelihood = vae.conv_vae(64, 3, 32, dtype=dtype), (64, 64, 3), "gaussian"
    real = jax.random.uniform(jax.random.PRNGKey(1), (batch, *shape), minval=-1.0, maxval=1.0)
  optimizer = vae.optimizer("adam", 1e-3)
  state = vae.init_state(jax.random.PRNGKey(0), model, optimizer, shape, likelihood)
  step = functools.partial(vae.train_step, model=model, optimizer=optimizer,
                           likelihood=likelihood)
  return single_update_case(step, state, real, steps, warmup, "neg_elbo")


def realnvp_case(batch: int, steps: int, warmup: int) -> dict:
  """The reference's RealNVP on 28x28x1 (preset "mnist"): bits/dim loss, Adam(1e-3)."""
  import jax
  from jaxgen import realnvp

  model = realnvp.from_preset("mnist", dtype=PRECISIONS[FLAGS.precision])
  optimizer = realnvp.optimizer(1e-3)
  pixels = jax.random.randint(jax.random.PRNGKey(1), (batch, 28, 28, 1), 0, 256)
  real = pixels.astype("float32") / 127.5 - 1.0
  state = realnvp.init_state(jax.random.PRNGKey(0), real, model=model, optimizer=optimizer)
  step = functools.partial(realnvp.train_step, model=model, optimizer=optimizer)
  return single_update_case(step, state, real, steps, warmup, "bits_per_dim")


def blobs_case(batch: int, steps: int, num_blobs: int) -> dict:
  from jaxgen import data

  source = data.load("blobs10" if num_blobs == 10 else "blobs1", image_size=32,
                     batch_size=batch, seed=0)
  source.batch(0)
  with CpuRegion() as region:
    for i in range(steps):
      source.batch(i)
  return {"images_per_s": batch * steps / region.wall, "compile_s": 0.0,
          "foreign_cpu_s": region.foreign, "num_blobs": num_blobs}


def suite_case(name: str, directory: str, scale: float = 1.0, num_samples: int = 1000,
               data_dir: str = "", classifier_dir: str = "") -> dict:
  """Trains suite case `name` in directory/name with its program's code and scores it: one
  result dict (quality numbers, then speed and times)."""
  import importlib
  import statistics

  from experiments import evaluate
  from jaxgen import training

  program_name, settings, steps = SUITE[name]
  program = importlib.import_module(f"experiments.{program_name}")
  steps = max(1, round(steps * scale))
  workdir = os.path.join(directory, name)
  if os.path.exists(workdir):
    raise ValueError(f"{workdir} exists: the suite trains from scratch; give --suite_dir a new "
                     f"directory")
  config = program.Config(**settings, steps=steps, seed=SUITE_SEED, workdir=workdir,
                          log_every=max(1, steps // 10), sample_every=steps,
                          checkpoint_every=steps, data_dir=data_dir or "")
  config, devices, source = training.setup(config, program.MODEL)
  start = time.perf_counter()
  last = program.train(config, devices, source)
  train_s = time.perf_counter() - start
  start = time.perf_counter()
  scored = evaluate.evaluate(workdir, num_samples=num_samples, seed=SUITE_SEED,
                             features="classifier" if name in SUITE_NEEDS_DATA else "none",
                             classifier_dir=classifier_dir, data_dir=data_dir)
  evaluate_s = time.perf_counter() - start
  result = {"case": name, "model": program_name, "dataset": config.dataset, "steps": steps,
            "seed": SUITE_SEED, "num_samples": num_samples}
  if "blobs" in scored:
    generated = scored["blobs"]["generated"]
    distances = scored["blobs"]["generated_vs_reference"]
    result.update({f"blob_{k}": generated[k] for k in SUITE_BLOBS})
    result.update({f"blob_{k}": distances[k] for k in SUITE_BLOB_DISTANCES})
  if "scores" in scored:
    result.update({k: scored["scores"][k]["generated"] for k in SUITE_FEATURES})
    result.update({f"baseline_{k}": scored["scores"][k]["baseline"] for k in ("fid", "kid")})
    result["classifier_accuracy"] = scored["features"]["test_accuracy"]
  if program_name in SUITE_LIKELIHOOD:
    key = SUITE_LIKELIHOOD[program_name]
    result[f"test_{key}"] = last[key]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  # Logged intervals after the first (which holds the compilation).
  rates = [r["images_per_s"] for r in rows if "images_per_s" in r][1:] or [float("nan")]
  result.update({"images_per_s": statistics.median(rates), "train_s": train_s,
                 "evaluate_s": evaluate_s})
  return result


SPEED_KEYS = ("images_per_s", "train_s", "evaluate_s")


def suite_table(results: list) -> str:
  """The suite's results as a markdown table: quality numbers, then speed."""
  head = ("case", "model", "dataset", "steps", "seed", "num_samples")
  lines = ["| case | steps | quality (same seed, machine and jax: identical) | images/s | "
           "train s | evaluate s |", "|---|---|---|---|---|---|"]
  for r in results:
    if "skipped" in r:
      lines.append(f"| {r['case']} | | skipped: {r['skipped']} | | | |")
      continue
    quality = ", ".join(f"{k} {v:.4g}" for k, v in r.items()
                        if k not in head and k not in SPEED_KEYS)
    lines.append(f"| {r['case']} | {r['steps']} | {quality} | {r['images_per_s']:.1f} | "
                 f"{r['train_s']:.0f} | {r['evaluate_s']:.0f} |")
  return "\n".join(lines)


def check_suite(cases, scale: float, num_samples: int) -> None:
  unknown = [c for c in cases if c not in SUITE]
  if unknown:
    raise ValueError(f"unknown suite case {unknown[0]!r}; choose from {', '.join(SUITE)}")
  if scale <= 0 or num_samples < 2:
    raise ValueError(f"--suite_scale must be positive and --suite_samples at least 2, got "
                     f"{scale} and {num_samples}")


def run_suite(cases, directory: str, scale: float = 1.0, num_samples: int = 1000,
              data_dir: str = "", classifier_dir: str = "", out=sys.stdout) -> list:
  """Runs suite `cases` (names of SUITE) in `directory`, printing a JSON line per case to `out`
  as it finishes; returns the results. A case that needs an image dataset is skipped without
  --data_dir."""
  import jax

  check_suite(cases, scale, num_samples)
  results = []
  for name in cases:
    if name in SUITE_NEEDS_DATA and not data_dir:
      result = {"case": name, "skipped": "needs --data_dir with the dataset prepared"}
    else:
      result = suite_case(name, directory, scale, num_samples, data_dir, classifier_dir)
    results.append(result)
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v
              for k, v in result.items()}  # strict JSON: NaN (no blob fitted) as null
    print(json.dumps({**finite, "backend": jax.default_backend(), "devices": jax.device_count(),
                      "jax": jax.__version__}), file=out, flush=True)
  return results


def main_suite() -> None:
  import tempfile

  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax reports every save at INFO
  cases = [c for c in FLAGS.suite_cases.split(",") if c] or list(SUITE)
  try:
    check_suite(cases, FLAGS.suite_scale, FLAGS.suite_samples)
    directory = FLAGS.suite_dir or tempfile.mkdtemp(prefix="jaxgen-suite-")
    print(f"suite runs in {directory}", file=sys.stderr)
    results = run_suite(cases, directory, FLAGS.suite_scale, FLAGS.suite_samples,
                        FLAGS.data_dir or "", FLAGS.classifier_dir)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(suite_table(results))


def main(argv):
  del argv
  # Before JAX starts its CPU backend, which reads XLA_FLAGS. No compilation cache here: it would
  # hide the compile time this program reports.
  kept = False  # host memory kept for reuse (jaxgen.host_memory)
  if FLAGS.convs == "plain":
    drop_jaxgen_xla_flag()
  else:  # what the programs set (training.configure_jax)
    from jaxgen import host_memory, layers
    layers.configure_cpu()
    if FLAGS.case != "realnvp_28":  # as the programs: experiments.realnvp does not keep it
      kept = host_memory.keep_freed_memory()
  if FLAGS.suite:
    return main_suite()
  import jax

  case = FLAGS.case
  extra = {}
  gan_case = case.startswith(("wgan_gp", "dcgan"))  # the cases --convs and --precision apply to
  if gan_case:
    extra = {"width": FLAGS.width, "latent": FLAGS.latent, "convs": FLAGS.convs,
             "precision": FLAGS.precision}
  if case.startswith("loader_"):
    from jaxgen import image_source
    # Enough batches to time: one batch takes well under a millisecond.
    result = image_source.loader_benchmark(case[len("loader_"):], FLAGS.batch,
                                           data_dir=FLAGS.data_dir, steps=max(FLAGS.steps, 200))
    result["compile_s"] = 0.0
  elif case == "wgan_gp_32":
    result = wgan_gp_case(32, 1, FLAGS.batch, FLAGS.steps, FLAGS.warmup)
  elif case == "wgan_gp_64":
    result = wgan_gp_case(64, 3, FLAGS.batch, FLAGS.steps, FLAGS.warmup)
  elif case.startswith("dcgan"):
    size, channels = (32, 1) if case == "dcgan_32" else (64, 3)
    result = dcgan_case(size, channels, FLAGS.batch, FLAGS.steps, FLAGS.warmup)
  elif case.startswith("vae"):
    result = vae_case(case[len("vae_"):].replace("conv64", "conv"), FLAGS.batch, FLAGS.steps,
                      FLAGS.warmup)
  elif case == "realnvp_28":
    result = realnvp_case(FLAGS.batch, FLAGS.steps, FLAGS.warmup)
  else:
    result = blobs_case(FLAGS.batch, FLAGS.steps, FLAGS.num_blobs)
  from jaxgen import conv_forms
  if not (FLAGS.convs == "plain" and gan_case):
    # compile_s includes the first-use timing of convolution forms (once per machine and shape)
    extra.update(conv_forms=conv_forms.mode(), forms_measured=conv_forms.measured["shapes"],
                 forms_measured_s=round(conv_forms.measured["seconds"], 2))
  print(json.dumps({"case": case, "batch": FLAGS.batch, "steps": FLAGS.steps, **extra,
                    **{k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()},
                    "backend": jax.default_backend(), "devices": jax.device_count(),
                    "xla_flags": os.environ.get("XLA_FLAGS", ""), "memory_kept": kept,
                    "jax": jax.__version__}), flush=True)


if __name__ == "__main__":
  if any(a.startswith("--case=") and a[7:] not in CASES for a in sys.argv):
    sys.exit(f"error: unknown --case; choose one of {', '.join(CASES)}")
  app.run(main)
