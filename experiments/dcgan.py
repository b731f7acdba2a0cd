"""Train DCGAN (Radford, Metz & Chintala 2015): the original GAN's losses on convolutional networks.

    python -m experiments.dcgan                                   # one blob per 32x32 image
    python -m experiments.dcgan --dataset=mnist --data_dir=~/tfds --workdir=runs/dcgan_mnist
    python -m experiments.dcgan --dataset=celeba --workdir=runs/dcgan_celeba     # 64x64
    python -m experiments.dcgan --dataset=mnist --latent_dim=10 --real_label=0.7,0.9

Generator: transposed convolutions with BatchNorm and ReLU, tanh out; discriminator: strided
convolutions with BatchNorm (not on the first layer) and LeakyReLU 0.2, one logit out; Adam(2e-4,
b1 = 0.5) for each network. Writes what every GAN program writes (README, What a run writes):
metrics with the discriminator's accuracy on real and fake, sample grids, loss and accuracy plots,
an interpolation and a latent sweep at the end, checkpoints; the same --workdir resumes.
"""

import dataclasses
import functools

from jaxgen import dcgan, gan_training, training
from jaxgen.flags import setting

MODEL = "dcgan"
CURVES = ["d_loss", "g_loss", "combined_loss", "d_accuracy_real", "d_accuracy_fake", "d_real",
          "d_fake"]


@dataclasses.dataclass(frozen=True)
class Config(gan_training.LossSettings, gan_training.ConvSettings):
  steps: int = setting(3000, "generator updates to train for (each after d_steps discriminator "
                             "updates)")
  workdir: str = setting("runs/dcgan", "where the run's files go; an existing run is resumed")
  learning_rate: float = setting(2e-4, "Adam learning rate of each network (DCGAN's)")
  b1: float = setting(0.5, "Adam's first-moment decay (DCGAN's 0.5)")

  def __post_init__(self):
    super().__post_init__()
    if self.learning_rate <= 0 or not 0 <= self.b1 < 1:
      raise ValueError(f"--learning_rate must be positive and --b1 in [0, 1), got "
                       f"{self.learning_rate} and {self.b1}")


networks = functools.partial(gan_training.dcgan_networks, critic=False)


def optimizers(config: Config):
  optimizer = dcgan.optimizer(config.learning_rate, b1=config.b1)
  return optimizer, optimizer  # one Adam state per network


step = gan_training.gan_step


sampler = gan_training.sampler_of(networks)


def train(config: Config, devices=None, source=None) -> dict:
  """Trains (or resumes) the run of `config`; returns the metrics of the last logged step."""
  return gan_training.train(config, model=MODEL, networks=networks, optimizers=optimizers,
                            step=step, batches_per_step=config.d_steps, curves=CURVES,
                            title="DCGAN", devices=devices, source=source)


if __name__ == "__main__":
  training.run_program(Config, MODEL, train)
