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

from jaxgen import gan_training, training
from jaxgen.flags import setting

MODEL = "wgan_gp"
CURVES = ["critic_loss", "generator_loss", "wasserstein", "gradient_penalty", "grad_norm"]


@dataclasses.dataclass(frozen=True)
class Config(gan_training.ConvSettings):
  batch_size: int = setting(0, "global batch per critic update, split over the devices; 0 picks "
                               "32 for the blobs (more steps per minute), 64 otherwise")
  steps: int = setting(3000, "generator updates to train for (each after n_critic critic updates)")
  workdir: str = setting("runs/wgan_gp", "where the run's files go; an existing run is resumed")
  n_critic: int = setting(5, "critic updates per generator update")
  gp_weight: float = setting(10.0, "gradient penalty weight lambda")
  learning_rate: float = setting(0.0, "Adam learning rate (b1=0, b2=0.9) of both networks; 0 "
                                      "picks the paper's 1e-4, or 1e-3 for the blobs (README: "
                                      "the blob study)")
  critic_head: str = setting("", "linear (DCGAN's: the score is linear in the last 4x4 map, a "
                                 "sum over its cells) | hidden (a hidden layer as wide as the "
                                 "last convolution, then the score) | global (one more stride-2 "
                                 "layer to a 2x2 map, so that every cell sees the whole image, "
                                 "then a linear score); empty picks global for blobs1 "
                                 "(README: the blob study), linear otherwise")

  POSITIVE = training.Settings.POSITIVE + ("n_critic",)
  AUTOMATIC = gan_training.ConvSettings.AUTOMATIC + ("learning_rate",)
  BEFORE = {**gan_training.ConvSettings.BEFORE, "critic_head": "linear"}

  def __post_init__(self):
    super().__post_init__()
    if self.gp_weight < 0:
      raise ValueError(f"--gp_weight must be non-negative, got {self.gp_weight}")
    if self.critic_head not in ("", "linear", "hidden", "global"):
      raise ValueError(f"--critic_head must be linear, hidden or global, got "
                       f"{self.critic_head!r}")

  def automatic(self) -> dict:
    blobs = self.dataset.startswith("blobs")
    return {**super().automatic(), "batch_size": 32 if blobs else 64,
            "learning_rate": 1e-3 if blobs else 1e-4,
            "upsampling": "resize" if blobs else "transpose",
            "mapping": "2x256" if blobs else "none",
            # blobs10 keeps DCGAN's head: with the global one it drew some empty images (2.9%)
            "critic_head": "global" if self.dataset == "blobs1" else "linear"}


networks = functools.partial(gan_training.dcgan_networks, critic=True)


def optimizers(config: Config):
  from jaxgen import wgan_gp
  optimizer = wgan_gp.optimizer(config.learning_rate)  # the paper's Adam for both networks
  return optimizer, optimizer


def step(config: Config, generator, critic, g_optimizer, d_optimizer):
  from jaxgen import wgan_gp
  return functools.partial(wgan_gp.train_step, generator=generator, critic=critic,
                           optimizer=g_optimizer, gp_weight=config.gp_weight)


sampler = gan_training.sampler_of(networks)


def train(config: Config, devices=None, source=None) -> dict:
  """Trains (or resumes) the run of `config`; returns the metrics of the last logged step."""
  return gan_training.train(config, model=MODEL, networks=networks, optimizers=optimizers,
                            step=step, batches_per_step=config.n_critic, curves=CURVES,
                            title="WGAN-GP", devices=devices, source=source)


if __name__ == "__main__":
  training.run_program(Config, MODEL, train)
