"""Train WGAN with weight clipping (Arjovsky, Chintala & Bottou 2017) on DCGAN-style networks.

    python -m experiments.wgan                                    # one blob per 32x32 image
    python -m experiments.wgan --dataset=mnist --data_dir=~/tfds --workdir=runs/wgan_mnist
    python -m experiments.wgan --dataset=celeba --workdir=runs/wgan_celeba      # 64x64

n_critic critic updates, each followed by clipping every critic weight to [-c, c], then one
generator update; RMSprop(5e-5) and c = 0.01 as the paper. The critic is the paper's: DCGAN's
discriminator with its BatchNorm (which rescales what clipping shrinks) and no sigmoid. Writes what
every GAN program writes; the same --workdir resumes.
"""

import dataclasses
import functools

from jaxgen import gan_training, training
from jaxgen.flags import setting

MODEL = "wgan"
CURVES = ["critic_loss", "generator_loss", "wasserstein", "combined_loss"]


@dataclasses.dataclass(frozen=True)
class Config(gan_training.ConvSettings):
  steps: int = setting(3000, "generator updates to train for (each after n_critic critic updates)")
  workdir: str = setting("runs/wgan", "where the run's files go; an existing run is resumed")
  n_critic: int = setting(5, "critic updates per generator update")
  clip: float = setting(0.01, "every critic weight is clipped to [-clip, clip] after each update")
  learning_rate: float = setting(5e-5, "RMSprop learning rate of both networks")

  POSITIVE = training.Settings.POSITIVE + ("n_critic",)

  def __post_init__(self):
    super().__post_init__()
    if self.learning_rate <= 0 or self.clip <= 0:
      raise ValueError(f"--learning_rate and --clip must be positive, got {self.learning_rate} "
                       f"and {self.clip}")


networks = functools.partial(gan_training.dcgan_networks, critic=False)  # BatchNorm kept


def optimizers(config: Config):
  from jaxgen import wgan
  return wgan.optimizer(config.learning_rate), wgan.optimizer(config.learning_rate)


def step(config: Config, generator, critic, g_optimizer, d_optimizer):
  from jaxgen import wgan
  return functools.partial(wgan.train_step, generator=generator, critic=critic,
                           g_optimizer=g_optimizer, d_optimizer=d_optimizer, clip=config.clip)


sampler = gan_training.sampler_of(networks)


def train(config: Config, devices=None, source=None) -> dict:
  """Trains (or resumes) the run of `config`; returns the metrics of the last logged step."""
  return gan_training.train(config, model=MODEL, networks=networks, optimizers=optimizers,
                            step=step, batches_per_step=config.n_critic, curves=CURVES,
                            title="WGAN (clipping)", devices=devices, source=source)


if __name__ == "__main__":
  training.run_program(Config, MODEL, train)
