"""Train RealNVP (Dinh, Sohl-Dickstein & Bengio 2016), a normalizing flow with exact likelihoods.

    python -m experiments.realnvp --dataset=mnist --data_dir=~/tfds      # 28x28, CPU-sized flow
    python -m experiments.realnvp --dataset=mnist --preset=mnist --data_dir=~/tfds   # the paper's
    python -m experiments.realnvp --dataset=cifar10 --data_dir=~/tfds --workdir=runs/nvp_cifar
    python -m experiments.realnvp --dataset=celeba --data_dir=~/tfds --workdir=runs/nvp_celeba

The loss and every reported figure is the negative log-likelihood in bits per dimension of the
discrete pixels, dequantisation and logit-transform terms included, as the paper reports it (3.49
CIFAR-10, 3.02 CelebA 64x64; about 1.06 on MNIST). Each epoch ends with one evaluation row per split
(`epoch`, `split`, `bits_per_dim`): the test split whole, the train split on its first 10,000
examples. Samples at --temperature over training, and an interpolation in z at the end.
"""

import dataclasses
import functools

from jaxgen import training
from jaxgen.flags import setting
from jaxgen.layers import PRECISIONS

MODEL = "realnvp"
DIGITS = ("mnist", "fashion_mnist")
PRESETS = ("mnist_cpu", "mnist", "cifar10", "celeba64")
PRECISE_BN_BATCHES = 16  # training batches (the train split's first) behind --bn_stats=precise


@dataclasses.dataclass(frozen=True)
class Config(training.Settings):
  # Keeping host memory ran realnvp_28 at 9.8-10.8 images/s against 12.3-12.8 without (2-core
  # AMD EPYC Zen 3, README: Performance).
  KEEP_HOST_MEMORY = False
  steps: int = setting(0, "updates to train for; 0 means --epochs whole epochs")
  epochs: int = setting(10, "epochs to train for (blobs: 10,000 images each)")
  workdir: str = setting("runs/realnvp", "where the run's files go; an existing run is resumed")
  image_size: int = setting(0, "image height and width; 0 picks 28 for digits (their own size: "
                               "no padding), 64 for celeba and imagenette, 32 otherwise")
  preset: str = setting("", "architecture: mnist_cpu (32-channel, 1-block s/t nets, actnorm), "
                            "mnist (the paper-sized reference of the benchmark), cifar10, "
                            "celeba64; empty picks mnist_cpu for digits and blobs, cifar10 for "
                            "32x32 colour, celeba64 for 64x64")
  num_scales: int = setting(0, "scales of the multi-scale flow; 0 keeps the preset's")
  width: int = setting(0, "channels of the s/t residual networks; 0 keeps the preset's")
  num_blocks: int = setting(0, "residual blocks per s/t network; 0 keeps the preset's")
  st_norm: str = setting("", "normalisation inside the s/t networks: batch (the paper's "
                             "BatchNorm, running averages at inference) or none; empty keeps "
                             "the preset's")
  bn_stats: str = setting("", "the s/t networks' BatchNorm statistics at inference: precise "
                              "(recomputed with the current weights from 16 training batches "
                              "before every evaluation and at the end, and saved) or running "
                              "(the running averages); empty picks precise")
  learning_rate: float = setting(1e-3, "Adam learning rate")
  clip_norm: float = setting(0.0, "clip the global gradient norm of the bits/dim loss; 0: none")
  temperature: float = setting(0.7, "standard deviation of z in the sample grids (1 is the "
                                    "model itself; below 1 trades variety for cleaner samples)")
  eval_examples: int = setting(0, "examples of each split evaluated after every epoch; 0 means "
                                  "the whole test split and the first 10,000 training examples")
  batch_size: int = setting(0, "global batch per update, split over the devices; 0 picks 64")

  POSITIVE = ("epochs", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints")
  AUTOMATIC = training.Settings.AUTOMATIC + ("steps", "num_scales", "width", "num_blocks",
                                             "eval_examples")
  BEFORE = {**training.Settings.BEFORE, "st_norm": "batch", "bn_stats": "running"}

  def __post_init__(self):
    super().__post_init__()
    if self.preset and self.preset not in PRESETS:
      raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
    if self.st_norm not in ("", "batch", "none"):
      raise ValueError(f"--st_norm must be batch or none, got {self.st_norm!r}")
    if self.bn_stats not in ("", "precise", "running"):
      raise ValueError(f"--bn_stats must be precise or running, got {self.bn_stats!r}")
    if self.learning_rate <= 0 or self.clip_norm < 0 or self.temperature <= 0:
      raise ValueError(f"--learning_rate and --temperature must be positive and --clip_norm "
                       f"non-negative, got {self.learning_rate}, {self.temperature}, "
                       f"{self.clip_norm}")

  def automatic(self) -> dict:
    from jaxgen import realnvp
    digits = self.dataset.split("/")[0] in DIGITS
    size = self.image_size or (28 if digits else super().automatic()["image_size"])
    preset = self.preset or ("mnist_cpu" if digits or self.dataset.startswith("blobs") else
                             "celeba64" if size == 64 else "cifar10")
    fields = realnvp.PRESETS[preset]
    return {**super().automatic(), "image_size": size, "preset": preset,
            **{k: fields[k] for k in ("num_scales", "width", "num_blocks")},
            "st_norm": realnvp.from_preset(preset).st_norm, "bn_stats": "precise"}


def network(config: Config, image_shape, axis_name=None):
  from jaxgen import realnvp
  chosen = {"st_norm": config.st_norm} if config.st_norm else {}  # else the preset's
  return realnvp.from_preset(config.preset, image_shape=tuple(image_shape),
                             num_scales=config.num_scales, width=config.width,
                             num_blocks=config.num_blocks, axis_name=axis_name,
                             dtype=PRECISIONS[config.precision], **chosen)


def sampler(config: Config, image_shape):
  """(latent shape, generate(checkpointed state as a dict, z) -> images in [-1, 1]): z ~ N(0, I)
  of the flow's dimension, scaled by --temperature."""
  import math

  import jax.numpy as jnp
  from jaxgen import realnvp
  model = network(config, image_shape)

  def generate(tree, z):
    variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
    y = model.apply(variables, config.temperature * z, method=realnvp.RealNVP.inverse)
    pixels = jnp.clip(jnp.floor(realnvp.logit_inverse(y) * 256), 0.0, 255.0)
    return realnvp.to_model_range(pixels)
  return (math.prod(image_shape),), generate


def train(config: Config, devices=None, source=None) -> dict:
  """Trains (or resumes) the run of `config`; returns the last test-split evaluation."""
  import os

  import jax
  from jaxgen import checkpoint, evaluation, gan_training, parallel, realnvp, report

  if devices is None:
    config, devices, source = training.setup(config, MODEL)
  test = training.load_split(config, "test")
  model = network(config, source.image_shape, axis_name=parallel.AXIS)
  optimizer = realnvp.optimizer(config.learning_rate, config.clip_norm)
  init_key, train_key, sample_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed), 4)
  # actnorm's data-dependent initialisation sees the first training batch
  state = realnvp.init_state(init_key, source.batch(0), model=model.clone(axis_name=None),
                             optimizer=optimizer)
  checkpoints = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"),
                                       config.keep_checkpoints)
  state, start = training.resume(checkpoints, state, batches_per_step=1)
  per_epoch = max(1, source.num_examples // config.batch_size)
  total = config.steps or config.epochs * per_epoch

  step_fn = parallel.pmap_step(functools.partial(
      realnvp.train_step, model=model, optimizer=optimizer, axis_name=parallel.AXIS), devices)
  plain = model.clone(axis_name=None)
  bits = jax.jit(lambda s, x, k: {"bits_per_dim": realnvp.bits_per_dim(
      s.params, s.batch_stats, realnvp.to_pixels(x), jax.random.uniform(k, x.shape),
      model=plain)})
  _, generate = sampler(config, source.image_shape)
  generate = jax.jit(generate)
  stats_key = jax.random.fold_in(eval_key, 2**31 - 1)  # no step reaches it

  def precise(state, done):  # the BatchNorm statistics of the current weights, full batches
    count = max(1, min(PRECISE_BN_BATCHES, source.num_examples // config.batch_size))
    batches = [source.eval_batch(i)[0] for i in range(count)]
    return state.replace(batch_stats=realnvp.precise_batch_stats(
        state.params, state.batch_stats, batches, jax.random.fold_in(stats_key, done),
        model=plain))
  fixed_z = jax.random.normal(sample_key, (64, realnvp.num_dims(plain)))

  def tree(state):  # the checkpoint's view, which `sampler` reads
    return {"params": state.params, "batch_stats": state.batch_stats}

  score = evaluation.during_training(config, source, fixed_z.shape[1:], "RealNVP")
  writer = report.Writer(config.workdir, total, start, config.image_size)
  writer.grid("real.png", source.batch(0)[:64])
  batches = parallel.device_batches(source.batch, devices, start)
  state = parallel.replicate(state, devices)
  last = {}
  with training.guarded(config, start, checkpoints, batches, writer) as stop:
    for i in range(start, total):
      state, metrics = step_fn(state, next(batches), train_key)
      done = i + 1
      if training.due(done, config.log_every, total):
        writer.metrics(done, parallel.first(metrics), config.batch_size)
      if done % per_epoch == 0 or done == total:
        if config.bn_stats == "precise":  # before the evaluation and the epoch's checkpoint
          state = parallel.replicate(precise(parallel.unreplicate(state), done), devices)
        evaluate = functools.partial(bits, parallel.unreplicate(state))
        last = training.evaluate_epoch(writer, done, per_epoch, evaluate, source, test,
                                       jax.random.fold_in(eval_key, done), config.eval_examples)
      if score and training.due(done, config.eval_every, total):
        score(writer, done, functools.partial(generate, tree(parallel.unreplicate(state))))
      if training.due(done, config.sample_every, total):
        writer.grid(f"step_{done:06d}.png", generate(tree(parallel.unreplicate(state)), fixed_z))
        writer.curves(["bits_per_dim", "grad_norm"], f"RealNVP on {config.dataset}")
      if (training.due(done, config.checkpoint_every, total) or done % per_epoch == 0
          or stop.requested):
        checkpoints.save(done, parallel.first(state), {"data_position": done})
      stop.check(done)
    if start < total:  # interpolation in z between random draws (no sweep: z is image-sized)
      interpolation, _ = gan_training.latent_grids(
          functools.partial(generate, tree(parallel.unreplicate(state))), fixed_z.shape[1],
          sample_key)
      writer.grid("interpolation.png", interpolation)
  return last


if __name__ == "__main__":
  training.run_program(Config, MODEL, train)
