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
import sys

from absl import app, logging

from jaxgen import data, dcgan, parallel
from jaxgen.flags import define_flags, from_flags, setting
from jaxgen.layers import PRECISIONS


@dataclasses.dataclass(frozen=True)
class Config:
  dataset: str = setting("blobs1", "blobs1 | blobs10 | an image dataset (docs/datasets.md)")
  image_size: int = setting(0, "image height and width, a power of two of at least 8; 0 picks 64 "
                               "for celeba and imagenette (DCGAN's size), 32 otherwise")
  batch_size: int = setting(0, "global batch per critic update, split over the devices; 0 picks "
                               "32 for the blobs (more steps per minute), 64 otherwise")
  steps: int = setting(3000, "generator updates to train for (each after n_critic critic updates)")
  seed: int = setting(0, "seed of initialisation, noise and data order")
  workdir: str = setting("runs/wgan_gp", "where the run's files go; an existing run is resumed")
  latent_dim: int = setting(0, "latent size; 0 picks 32 for blobs1, 64 for blobs10, 100 otherwise")
  width: int = setting(0, "channels of the networks' outermost hidden layers; 0 picks DCGAN's 64, "
                          "or 32 for the blobs (four times less work)")
  n_critic: int = setting(5, "critic updates per generator update")
  gp_weight: float = setting(10.0, "gradient penalty weight lambda")
  learning_rate: float = setting(1e-4, "Adam learning rate (b1=0, b2=0.9) of both networks")
  num_devices: int = setting(0, "devices to split each batch over with pmap; 0 means all")
  log_every: int = setting(50, "steps between metrics.jsonl rows and progress updates")
  sample_every: int = setting(500, "steps between sample grids")
  checkpoint_every: int = setting(500, "steps between checkpoints")
  keep_checkpoints: int = setting(3, "newest checkpoints kept")
  blob_width: float = setting(1.5, "blob PSF standard deviation in pixels")
  blob_amplitude: float = setting(1.0, "blob peak brightness")
  data_dir: str = setting("", "where image datasets are prepared and cached (default: TFDS's)")
  precision: str = setting("float32", "float32 | bfloat16: the networks' computation dtype; "
                                      "parameters, optimizer, losses and penalty stay float32")

  def __post_init__(self):
    for name in ("steps", "n_critic", "log_every", "sample_every", "checkpoint_every",
                 "keep_checkpoints"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("image_size", "batch_size", "width", "latent_dim", "num_devices"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be 0 (automatic) or positive, got {getattr(self, name)}")
    if self.learning_rate <= 0 or self.gp_weight < 0:
      raise ValueError(f"--learning_rate must be positive and --gp_weight non-negative, got "
                       f"{self.learning_rate} and {self.gp_weight}")
    if self.precision not in PRECISIONS:
      raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                       f"{self.precision!r}")
    if self.num_devices:
      parallel.check_split(self.batch, self.num_devices)
    dcgan.num_upsamplings(self.size)
    data.check_name(self.dataset)

  # The automatic (0) settings, resolved.
  @property
  def size(self) -> int:
    return self.image_size or data.default_image_size(self.dataset)

  @property
  def batch(self) -> int:
    return self.batch_size or (32 if self.dataset in data.BLOB_DATASETS else 64)

  @property
  def net_width(self) -> int:
    return self.width or (32 if self.dataset in data.BLOB_DATASETS else 64)

  @property
  def latent(self) -> int:
    return self.latent_dim or {"blobs1": 32, "blobs10": 64}.get(self.dataset, 100)


def setup(config: Config):
  """Devices, data source and work directory: every check that can fail on user input, before
  any compilation."""
  from jaxgen import workdir  # writes config.json, or refuses a directory holding another run

  devices = parallel.select_devices(config.num_devices)
  parallel.check_split(config.batch, len(devices))
  source = data.load(config.dataset, image_size=config.size, batch_size=config.batch,
                     seed=config.seed, blob_width=config.blob_width,
                     blob_amplitude=config.blob_amplitude, data_dir=config.data_dir or None)
  workdir.prepare(config, "wgan_gp", source)
  return devices, source


def networks(config: Config, channels: int, axis_name=None):
  dtype = PRECISIONS[config.precision]
  generator = dcgan.Generator(config.size, channels, config.net_width, config.latent,
                              axis_name=axis_name, dtype=dtype)
  return generator, dcgan.Critic(config.size, config.net_width, dtype=dtype)


def train(config: Config, devices=None, source=None) -> dict:
  """Trains (or resumes) the run of `config`; returns the metrics of the last logged step."""
  # Heavy imports after the checks above, so that bad flags fail fast.
  import jax
  import numpy as np
  from jaxgen import checkpoint, gan, report, wgan_gp

  if devices is None:
    devices, source = setup(config)
  n_dev = len(devices)
  generator, critic = networks(config, source.image_shape[-1], axis_name=parallel.AXIS)
  optimizer = wgan_gp.optimizer(config.learning_rate)
  init_key, train_key, sample_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  state = gan.init_state(init_key, generator=generator, discriminator=critic,
                         g_optimizer=optimizer, d_optimizer=optimizer,
                         image_shape=source.image_shape)

  checkpoints = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"),
                                       config.keep_checkpoints)
  start = 0
  if checkpoints.latest_step() is not None:
    state, meta = checkpoints.restore(state)
    start = int(state.step)
    assert meta["data_position"] == start * config.n_critic, meta
    print(f"resuming {config.workdir} from step {start}", file=sys.stderr)

  step_fn = jax.pmap(
      functools.partial(wgan_gp.train_step, generator=generator, critic=critic,
                        optimizer=optimizer, gp_weight=config.gp_weight,
                        axis_name=parallel.AXIS),
      axis_name=parallel.AXIS, in_axes=(0, 0, None), donate_argnums=0, devices=devices)
  sample_fn = jax.jit(functools.partial(gan.generate, generator))
  fixed_z = jax.random.normal(sample_key, (64, config.latent))

  def real_batches(step):  # the n_critic batches of generator step `step`, split over devices
    first = step * config.n_critic
    real = np.stack([source.batch(first + i) for i in range(config.n_critic)])
    return parallel.put_sharded(parallel.shard(real, n_dev, axis=1), devices)

  sample_dir = os.path.join(config.workdir, "samples")
  os.makedirs(sample_dir, exist_ok=True)
  scale = max(1, 128 // config.size)

  def save_grid(name, images):
    report.save_png(os.path.join(sample_dir, name),
                    report.sample_grid((np.asarray(images) + 1.0) / 2.0, 8), scale)

  save_grid("real.png", source.batch(0)[:64])
  metrics_path = os.path.join(config.workdir, "metrics.jsonl")
  log = report.MetricsLog(metrics_path, resume_step=start)
  progress = report.Progress(config.steps, start)
  batches = data.Prefetch(real_batches, start)
  replicated = parallel.replicate(state, devices)
  last = {}
  try:
    for step in range(start, config.steps):
      replicated, metrics = step_fn(replicated, next(batches), train_key)
      done = step + 1
      final = done == config.steps
      if done % config.log_every == 0 or done % config.checkpoint_every == 0 or final:
        last = {k: float(v[0]) for k, v in jax.device_get(metrics).items()}
        if not all(np.isfinite(v) for v in last.values()):
          raise FloatingPointError(
              f"non-finite loss at step {done} ({last}); nothing from this step was saved. "
              f"Lower --learning_rate, or resume from the last checkpoint in {config.workdir}")
        progress.update(done, last)
        rate = progress.steps_per_s  # since the previous logged step (the first: since start)
        log.write(done, {**last, "steps_per_s": rate,
                         "images_per_s": rate * config.n_critic * config.batch})
      if done % config.sample_every == 0 or final:
        save_grid(f"step_{done:06d}.png",
                  sample_fn(parallel.unreplicate(replicated), fixed_z))
        report.plot_curves(report.read_metrics(metrics_path),
                           ["critic_loss", "generator_loss", "wasserstein", "gradient_penalty",
                            "grad_norm"], os.path.join(config.workdir, "loss_curves.png"),
                           f"WGAN-GP on {config.dataset}")
      if done % config.checkpoint_every == 0 or final:
        checkpoints.save(done, parallel.unreplicate(replicated),
                         {"data_position": done * config.n_critic})
  finally:
    batches.close()
    progress.close()
    checkpoints.close()
  return last


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; settings are --flags (see --help)")
  logging.set_verbosity(logging.WARNING)  # orbax reports every save step at INFO
  try:
    config = from_flags(Config)
    devices, source = setup(config)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  train(config, devices, source)


if __name__ == "__main__":
  define_flags(Config)
  app.run(main)
