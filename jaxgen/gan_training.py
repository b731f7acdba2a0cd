"""The training loop of every GAN program (GAN, DCGAN, WGAN, WGAN-GP): k discriminator or critic
batches per generator update, a generator to sample from fixed noise, and the shared run files.

A program gives its networks, its two optimizers and its step; this loop does the rest, the same
way for all of them (resume, pmap, prefetch, metrics, grids, plots, checkpoints):

    train(config, model="dcgan", networks=networks, optimizers=optimizers, step=step,
          batches_per_step=config.d_steps, curves=["d_loss", "g_loss"], title="DCGAN")
"""

import dataclasses
import functools
import os
from typing import Callable

from jaxgen import training
from jaxgen.flags import setting

GENERATOR_LOSSES = ("non_saturating", "minimax")
UPSAMPLINGS = ("transpose", "resize")  # jaxgen.dcgan.UPSAMPLINGS, without importing flax here
NORMS = ("batch", "instance")  # jaxgen.dcgan.NORMS, likewise
LATENTS = ("normal", "uniform")  # jaxgen.dcgan.LATENTS, likewise


@dataclasses.dataclass(frozen=True)
class LossSettings(training.Settings):
  """The settings of the original GAN's losses (Goodfellow et al. 2014), for GAN and DCGAN."""
  loss: str = setting("non_saturating", "generator loss: non_saturating (-log D(G(z))) | "
                                        "minimax (log(1 - D(G(z))), minimised)")
  real_label: str = setting("1.0", "the discriminator's target for real images: a value, or "
                                   "low,high to draw each uniformly (one-sided label smoothing, "
                                   "e.g. 0.7,0.9)")
  d_steps: int = setting(1, "discriminator updates per generator update (k of Algorithm 1)")

  POSITIVE = training.Settings.POSITIVE + ("d_steps",)

  def __post_init__(self):
    super().__post_init__()
    if self.loss not in GENERATOR_LOSSES:
      raise ValueError(f"--loss must be one of {', '.join(GENERATOR_LOSSES)}, got {self.loss!r}")
    self.real_labels  # a one-line error for a bad --real_label

  @property
  def real_labels(self) -> tuple:
    """(low, high) of the real labels: equal for a fixed value."""
    try:
      values = [float(v) for v in self.real_label.split(",")]
    except ValueError:
      values = []
    if len(values) == 1:
      values *= 2
    if len(values) != 2 or not 0.0 <= values[0] <= values[1] <= 1.0:
      raise ValueError(f"--real_label must be a value or low,high within [0, 1] (e.g. 1.0 or "
                       f"0.7,0.9), got {self.real_label!r}")
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class ConvSettings(training.Settings):
  """The settings of the programs on DCGAN-style networks (DCGAN, WGAN, WGAN-GP): latent size and
  width, automatic from the dataset, and an image size those networks can make."""
  latent_dim: int = setting(0, "latent size; 0 picks 32 for blobs1, 64 for blobs10, 100 otherwise")
  width: int = setting(0, "channels of the networks' outermost hidden layers; 0 picks DCGAN's 64, "
                          "or 32 for the blobs (four times less work)")
  upsampling: str = setting("", "how the generator doubles the image size: transpose (DCGAN's "
                                "k4 s2 transposed convolutions) | resize (nearest-neighbour "
                                "upsampling then a 3x3 convolution); empty picks transpose "
                                "(WGAN-GP: resize for the blobs, README: the blob study)")
  mapping: str = setting("", "the generator's mapping MLP between z and its first layer: LxW "
                             "(L Dense-LeakyReLU layers of W units, e.g. 2x256) | none (DCGAN's "
                             "generator); empty picks none (WGAN-GP: 2x256 for the blobs, "
                             "README: the blob study)")
  generator_norm: str = setting("", "what normalises the generator's hidden layers: batch "
                                    "(DCGAN's BatchNorm) | instance (each image's own "
                                    "statistics, as StyleGAN); empty picks batch")
  latent: str = setting("", "the latent prior the generator sees: normal | uniform (DCGAN's "
                            "U(-1, 1), made from the normal draws by the normal CDF); empty "
                            "picks normal")
  coordinates: bool = setting(False, "CoordConv (Liu et al. 2018): give every stride-2 layer of "
                                     "the generator two channels of pixel coordinates")

  AUTOMATIC = training.Settings.AUTOMATIC + ("width", "latent_dim")
  BEFORE = {**training.Settings.BEFORE, "upsampling": "transpose", "mapping": "none",
            "generator_norm": "batch", "latent": "normal"}

  def __post_init__(self):
    super().__post_init__()
    if self.image_size:
      from jaxgen import dcgan
      dcgan.num_upsamplings(self.image_size)  # a one-line error for a size they cannot make
    for name, choices in (("upsampling", UPSAMPLINGS), ("generator_norm", NORMS),
                          ("latent", LATENTS)):
      if getattr(self, name) not in ("",) + choices:
        raise ValueError(f"--{name} must be one of {', '.join(choices)} (or empty for the "
                         f"dataset's default), got {getattr(self, name)!r}")
    if self.mapping:
      self.mapping_shape  # a one-line error for a bad --mapping

  @property
  def mapping_shape(self) -> tuple:
    """(layers, width) of the generator's mapping MLP; (0, 0) for none (resolved first)."""
    mapping = self.mapping or self.resolved().mapping
    if mapping == "none":
      return 0, 0
    try:
      layers, width = (int(v) for v in mapping.split("x"))
    except ValueError:
      layers = width = 0
    if layers < 1 or width < 1:
      raise ValueError(f"--mapping must be none or LxW with positive layers L and width W (e.g. "
                       f"2x256), or empty for the dataset's default; got {mapping!r}")
    return layers, width

  def automatic(self) -> dict:
    """DCGAN's width 64, latent 100 and transposed convolutions, or 32 channels and a latent of
    32 (one blob) or 64 (ten blobs) for the blob images."""
    blobs = self.dataset.startswith("blobs")
    return {**super().automatic(), "width": 32 if blobs else 64, "upsampling": "transpose",
            "mapping": "none", "generator_norm": "batch", "latent": "normal",
            "latent_dim": {"blobs1": 32, "blobs10": 64}.get(self.dataset, 100)}


def dcgan_networks(config, channels: int, axis_name=None, *, critic: bool):
  """The DCGAN generator and a Wasserstein critic (`critic=True`) or DCGAN's discriminator, of
  `config`'s image size, width, latent size and precision."""
  from jaxgen import dcgan
  from jaxgen.layers import PRECISIONS

  # An unresolved "" takes the automatic value (a run saved before a setting existed is given
  # its Settings.BEFORE value first, e.g. DCGAN's transposed convolutions).
  config = config.resolved()
  dtype = PRECISIONS[config.precision]
  layers, width = config.mapping_shape
  generator = dcgan.Generator(config.image_size, channels, config.width, config.latent_dim,
                              axis_name=axis_name, dtype=dtype, upsampling=config.upsampling,
                              coordinates=config.coordinates,
                              mapping_layers=layers, mapping_width=width,
                              norm=config.generator_norm, latent=config.latent)
  if critic:
    # The hidden head is as wide as the last convolution (128 at 32x32 and width 32).
    hidden = config.width * 2 ** (dcgan.num_upsamplings(config.image_size) - 1) \
        if config.critic_head == "hidden" else 0
    return generator, dcgan.Critic(config.image_size, config.width, dtype=dtype, hidden=hidden,
                                   global_view=config.critic_head == "global")
  return generator, dcgan.Discriminator(config.image_size, config.width, axis_name=axis_name,
                                        dtype=dtype)


def gan_step(config: LossSettings, generator, discriminator, g_optimizer, d_optimizer):
  """The original GAN's step (`jaxgen.gan.train_step`) with `config`'s loss and real labels."""
  from jaxgen import gan
  return functools.partial(gan.train_step, generator=generator, discriminator=discriminator,
                           g_optimizer=g_optimizer, d_optimizer=d_optimizer, loss=config.loss,
                           real_label=config.real_labels)


def sampler_of(networks: Callable) -> Callable:
  """A program's `sampler(config, image_shape)` from its `networks`: (latent shape,
  generate(checkpointed state as a dict, z) -> images in [-1, 1])."""
  def sampler(config, image_shape):
    from jaxgen import gan
    generator, _ = networks(config, image_shape[-1])
    return (generator.latent_dim,), functools.partial(gan.generate_from_tree, generator)
  return sampler


def latent_grids(generate: Callable, latent_dim: int, key, rows: int = 8, columns: int = 8):
  """(interpolation images, sweep images): `rows` rows between pairs of random latents, and one
  row per latent dimension (at most 32) across [-3, 3] with the others at one random draw."""
  import jax
  import numpy as np
  from jaxgen import latent

  k_ends, k_base = jax.random.split(key)
  ends = np.asarray(jax.random.normal(k_ends, (2, rows, latent_dim)))
  z = np.concatenate([latent.interpolation_latents(ends[0, r], ends[1, r], columns)
                      for r in range(rows)])
  base = np.asarray(jax.random.normal(k_base, (latent_dim,)))
  sweep = latent.sweep_latents(base, np.linspace(-3.0, 3.0, columns),
                               dims=range(min(latent_dim, 32)))
  return generate(z), generate(sweep)


def train(config, *, model: str, networks: Callable, optimizers: Callable, step: Callable,
          batches_per_step: int, curves: list, title: str, devices=None, source=None) -> dict:
  """Trains (or resumes) the run of `config`; returns the metrics of the last logged step.

  networks(config, channels, axis_name) -> (generator, discriminator)
  optimizers(config) -> (generator's optimizer, discriminator's)
  step(config, generator, discriminator, g_optimizer, d_optimizer) -> the family's train_step
    with everything but `axis_name` bound: fn(state, real, key, *, axis_name), `real` of shape
    (batches_per_step, batch, H, W, C).
  """
  # Heavy imports after the checks of `setup`, so that bad flags fail fast.
  import jax
  import numpy as np
  from jaxgen import checkpoint, evaluation, gan, parallel, report

  if devices is None:
    config, devices, source = training.setup(config, model)
  generator, discriminator = networks(config, source.image_shape[-1], parallel.AXIS)
  g_optimizer, d_optimizer = optimizers(config)
  init_key, train_key, sample_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  state = gan.init_state(init_key, generator=generator, discriminator=discriminator,
                         g_optimizer=g_optimizer, d_optimizer=d_optimizer,
                         image_shape=source.image_shape)
  checkpoints = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"),
                                       config.keep_checkpoints)
  n = batches_per_step
  state, start = training.resume(checkpoints, state, batches_per_step=n)

  step_fn = parallel.pmap_step(functools.partial(
      step(config, generator, discriminator, g_optimizer, d_optimizer),
      axis_name=parallel.AXIS), devices)
  sample_fn = jax.jit(functools.partial(gan.generate, generator))
  fixed_z = jax.random.normal(sample_key, (64, generator.latent_dim))

  evaluate = evaluation.during_training(config, source, (generator.latent_dim,), title)
  writer = report.Writer(config.workdir, config.steps, start, config.image_size)
  writer.grid("real.png", source.batch(0)[:64])
  batches = parallel.device_batches(
      lambda i: np.stack([source.batch(i * n + j) for j in range(n)]), devices, start,
      batch_axis=1)
  state = parallel.replicate(state, devices)
  last = {}
  with training.guarded(config, start, checkpoints, batches, writer) as stop:
    for i in range(start, config.steps):
      state, metrics = step_fn(state, next(batches), train_key)
      done = i + 1
      save = training.due(done, config.checkpoint_every, config.steps) or stop.requested
      if training.due(done, config.log_every, config.steps) or save:
        last = writer.metrics(done, parallel.first(metrics), n * config.batch_size)
      if evaluate and training.due(done, config.eval_every, config.steps):
        evaluate(writer, done, functools.partial(sample_fn, parallel.unreplicate(state)))
      if training.due(done, config.sample_every, config.steps):
        writer.grid(f"step_{done:06d}.png", sample_fn(parallel.unreplicate(state), fixed_z))
        writer.curves(curves, f"{title} on {config.dataset}")
      if save:
        checkpoints.save(done, parallel.first(state), {"data_position": done * n})
      stop.check(done)
    if start < config.steps:  # what each latent direction does, at the end of training
      generate = functools.partial(sample_fn, parallel.unreplicate(state))
      interpolation, sweep = latent_grids(generate, generator.latent_dim, sample_key)
      writer.grid("interpolation.png", interpolation)
      writer.grid("sweep.png", sweep)
  return last

