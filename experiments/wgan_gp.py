"""Train WGAN-GP (Gulrajani et al. 2017) with DCGAN-style networks.

    python -m experiments.wgan_gp                       # one Gaussian blob per 32x32 image
    python -m experiments.wgan_gp --dataset=blobs10 --latent_dim=64
    python -m experiments.wgan_gp --dataset=celeba --workdir=runs/celeba   # 64x64, DCGAN width

Writes to --workdir: config.json, metrics.jsonl, samples/step_*.png (from fixed noise),
samples/real.png, loss_curves.png and checkpoints/. Rerunning with the same --workdir resumes
from its latest checkpoint.
"""

import dataclasses
import functools
import os

from jaxgen import dcgan, training
from jaxgen.flags import setting
from jaxgen.layers import PRECISIONS

MODEL = "wgan_gp"
CURVES = ["critic_loss", "generator_loss", "wasserstein", "gradient_penalty", "grad_norm"]


@dataclasses.dataclass(frozen=True)
class Config(training.Settings):
  batch_size: int = setting(0, "global batch per critic update, split over the devices; 0 picks "
                               "32 for the blobs (more steps per minute), 64 otherwise")
  steps: int = setting(3000, "generator updates to train for (each after n_critic critic updates)")
  workdir: str = setting("runs/wgan_gp", "where the run's files go; an existing run is resumed")
  latent_dim: int = setting(0, "latent size; 0 picks 32 for blobs1, 64 for blobs10, 100 otherwise")
  width: int = setting(0, "channels of the networks' outermost hidden layers; 0 picks DCGAN's 64, "
                          "or 32 for the blobs (four times less work)")
  n_critic: int = setting(5, "critic updates per generator update")
  gp_weight: float = setting(10.0, "gradient penalty weight lambda")
  learning_rate: float = setting(1e-4, "Adam learning rate (b1=0, b2=0.9) of both networks")

  POSITIVE = training.Settings.POSITIVE + ("n_critic",)
  AUTOMATIC = training.Settings.AUTOMATIC + ("width", "latent_dim")

  def __post_init__(self):
    super().__post_init__()
    if self.learning_rate <= 0 or self.gp_weight < 0:
      raise ValueError(f"--learning_rate must be positive and --gp_weight non-negative, got "
                       f"{self.learning_rate} and {self.gp_weight}")
    if self.image_size:
      dcgan.num_upsamplings(self.image_size)

  def automatic(self) -> dict:
    blobs = self.dataset.startswith("blobs")
    return {**super().automatic(), "batch_size": 32 if blobs else 64,
            "width": 32 if blobs else 64,
            "latent_dim": {"blobs1": 32, "blobs10": 64}.get(self.dataset, 100)}


def networks(config: Config, channels: int, axis_name=None):
  dtype = PRECISIONS[config.precision]
  generator = dcgan.Generator(config.image_size, channels, config.width, config.latent_dim,
                              axis_name=axis_name, dtype=dtype)
  return generator, dcgan.Critic(config.image_size, config.width, dtype=dtype)


def sampler(config: Config, image_shape):
  """(latent shape, generate(checkpointed state as a dict, z) -> images in [-1, 1])."""
  from jaxgen import gan
  generator, _ = networks(config, image_shape[-1])
  return (config.latent_dim,), functools.partial(gan.generate_from_tree, generator)


def train(config: Config, devices=None, source=None) -> dict:
  """Trains (or resumes) the run of `config`; returns the metrics of the last logged step."""
  # Heavy imports after the checks of `setup`, so that bad flags fail fast.
  import jax
  import numpy as np
  from jaxgen import checkpoint, gan, parallel, report, wgan_gp

  if devices is None:
    config, devices, source = training.setup(config, MODEL)
  generator, critic = networks(config, source.image_shape[-1], axis_name=parallel.AXIS)
  optimizer = wgan_gp.optimizer(config.learning_rate)
  init_key, train_key, sample_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  state = gan.init_state(init_key, generator=generator, discriminator=critic,
                         optimizer=optimizer, image_shape=source.image_shape)
  checkpoints = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"),
                                       config.keep_checkpoints)
  state, start = training.resume(checkpoints, state, batches_per_step=config.n_critic)

  step_fn = parallel.pmap_step(functools.partial(
      wgan_gp.train_step, generator=generator, critic=critic, optimizer=optimizer,
      gp_weight=config.gp_weight, axis_name=parallel.AXIS), devices)
  sample_fn = jax.jit(functools.partial(gan.generate, generator))
  fixed_z = jax.random.normal(sample_key, (64, config.latent_dim))
  n = config.n_critic  # batches per generator step, stacked on a leading axis

  writer = report.Writer(config.workdir, config.steps, start, config.image_size)
  writer.grid("real.png", source.batch(0)[:64])
  batches = parallel.device_batches(
      lambda step: np.stack([source.batch(step * n + i) for i in range(n)]), devices, start,
      batch_axis=1)
  state = parallel.replicate(state, devices)
  last = {}
  try:
    for step in range(start, config.steps):
      state, metrics = step_fn(state, next(batches), train_key)
      done = step + 1
      if training.due(done, config.log_every, config.steps) or training.due(
          done, config.checkpoint_every, config.steps):
        last = writer.metrics(done, parallel.first(metrics), n * config.batch_size)
      if training.due(done, config.sample_every, config.steps):
        writer.grid(f"step_{done:06d}.png", sample_fn(parallel.unreplicate(state), fixed_z))
        writer.curves(CURVES, f"WGAN-GP on {config.dataset}")
      if training.due(done, config.checkpoint_every, config.steps):
        checkpoints.save(done, parallel.to_host(state), {"data_position": done * n})
  finally:
    batches.close()
    writer.close()
    checkpoints.close()
  return last


if __name__ == "__main__":
  training.run_program(Config, MODEL, train)
