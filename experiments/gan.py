"""Train the original GAN (Goodfellow et al. 2014) with fully connected networks, in two studies'
configurations (jaxgen/mlp_gan.py).

    python -m experiments.gan --dataset=mnist --data_dir=~/tfds --workdir=runs/gan_mnist
    python -m experiments.gan --preset=deep_batchnorm --learning_rate=1e-4 --b1=0.5  # blobs
    python -m experiments.gan --preset=deep_batchnorm --loss=minimax --real_label=0.7,0.9
    python -m experiments.gan --d_steps=2                          # k of Algorithm 1

Presets: one_hidden_layer (generator z-128-image with LeakyReLU and tanh, discriminator with one
128-unit LeakyReLU layer, Adam 2e-4, b1 0.5) and deep_batchnorm (generator of four
Linear-BatchNorm-ReLU blocks then Linear-sigmoid, discriminator of three Linear-LeakyReLU blocks,
Adam 1e-5); both latent 100 and batch 128. On the blob images only the deep generator learns
(with DCGAN's b1, as above; README gives what it makes): the one-hidden-layer one, without
BatchNorm, first makes every image black, its tanh outputs saturated, and then lights the same
few pixels for every latent.
Writes what every GAN program writes; the same --workdir resumes.
"""

import dataclasses

from jaxgen import gan_training, training
from jaxgen.flags import setting

MODEL = "gan"
CURVES = ["d_loss", "g_loss", "combined_loss", "d_accuracy_real", "d_accuracy_fake", "d_real",
          "d_fake"]
PRESETS = ("one_hidden_layer", "deep_batchnorm")


@dataclasses.dataclass(frozen=True)
class Config(gan_training.LossSettings):
  steps: int = setting(5000, "generator updates to train for (each after d_steps discriminator "
                             "updates)")
  workdir: str = setting("runs/gan", "where the run's files go; an existing run is resumed")
  preset: str = setting("one_hidden_layer", "networks and optimizer of a study: "
                                            + " | ".join(PRESETS))
  latent_dim: int = setting(0, "latent size; 0 picks the preset's (100)")
  learning_rate: float = setting(0.0, "Adam learning rate of each network; 0 picks the preset's")
  b1: float = setting(0.0, "Adam's first-moment decay; 0 picks the preset's (0.5 for "
                           "one_hidden_layer, 0.9 for deep_batchnorm)")

  AUTOMATIC = training.Settings.AUTOMATIC + ("latent_dim", "learning_rate", "b1")

  def __post_init__(self):
    super().__post_init__()
    if self.preset not in PRESETS:
      raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
    if not 0 <= self.b1 < 1:
      raise ValueError(f"--b1 must be in (0, 1), or 0 for the preset's, got {self.b1}")

  def automatic(self) -> dict:
    from jaxgen import mlp_gan
    chosen = mlp_gan.preset(self.preset)
    digits = self.dataset.split("/")[0] in ("mnist", "fashion_mnist")
    return {**super().automatic(), "batch_size": chosen.batch_size,
            **({"image_size": 28} if digits else {}),  # the studies' 784 inputs, unpadded
            "latent_dim": chosen.generator.latent_dim, "learning_rate": chosen.learning_rate,
            "b1": chosen.b1}


def _preset(config: Config, image_shape=(32, 32, 1), axis_name=None):
  from jaxgen import mlp_gan
  return mlp_gan.preset(config.preset, image_shape, axis_name=axis_name)


def networks(config: Config, channels: int, axis_name=None):
  chosen = _preset(config, (config.image_size, config.image_size, channels), axis_name)
  return chosen.generator.clone(latent_dim=config.latent_dim), chosen.discriminator


def optimizers(config: Config):
  chosen = dataclasses.replace(_preset(config), learning_rate=config.learning_rate, b1=config.b1)
  return chosen.optimizer(), chosen.optimizer()


step = gan_training.gan_step


sampler = gan_training.sampler_of(networks)


def train(config: Config, devices=None, source=None) -> dict:
  """Trains (or resumes) the run of `config`; returns the metrics of the last logged step."""
  return gan_training.train(config, model=MODEL, networks=networks, optimizers=optimizers,
                            step=step, batches_per_step=config.d_steps, curves=CURVES,
                            title=f"GAN ({config.preset})", devices=devices, source=source)


if __name__ == "__main__":
  training.run_program(Config, MODEL, train)
