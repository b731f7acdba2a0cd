"""Fully connected GAN networks (Goodfellow et al. 2014 trained MLPs), in two studies' setups.

Both networks take and make NHWC images like every jaxgen network: the generator reshapes its
output to `image_shape`, the discriminator flattens its input. Train them with
`jaxgen.gan.train_step`.

Presets (`preset(name, image_shape)`):
  'deep_batchnorm'    generator z -> 4 x [Linear-BatchNorm-ReLU] (128-256-512-1024) -> Linear
                      -> sigmoid; discriminator 3 x [Linear-LeakyReLU(0.2)] (512-256-128) ->
                      Linear to one logit; latent 100, batch 128, Adam(1e-5) for both networks.
                      The study's sigmoid made images in [0, 1]; jaxgen's data are in [-1, 1],
                      so the output is 2 * sigmoid(x) - 1 (= tanh(x / 2)): the same network,
                      its range mapped linearly onto the data's.
  'one_hidden_layer'  generator z -> Linear(128)-LeakyReLU(0.2) -> Linear -> tanh;
                      discriminator Linear(128)-LeakyReLU(0.2) -> Linear to one logit; latent
                      100, batch 128, Adam(2e-4, b1 = 0.5). The study gave neither the
                      generator's hidden width nor Adam's settings: 128 (the discriminator's)
                      and DCGAN's Adam are this file's choices.
Linear kernels are initialised as PyTorch's nn.Linear initialises them (uniform within
1/sqrt(fan_in)); biases start at zero (PyTorch draws them from the same range).
"""

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# PyTorch's nn.Linear weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance 1 / (3 fan_in).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

ACTIVATIONS = {"relu": nn.relu, "leaky_relu": lambda x: nn.leaky_relu(x, 0.2)}
OUTPUTS = {
    "sigmoid": lambda x: 2.0 * jax.nn.sigmoid(x) - 1.0,  # the study's sigmoid, onto [-1, 1]
    "tanh": jnp.tanh,
}


def _choice(table: dict, name: str, what: str):
  if name not in table:
    raise ValueError(f"{what} must be one of {', '.join(table)}, got {name!r}")
  return table[name]


class Generator(nn.Module):
  """Maps latent vectors (B, latent_dim) to images (B, *image_shape) in [-1, 1]."""
  image_shape: Sequence[int] = (28, 28, 1)
  widths: Sequence[int] = (128, 256, 512, 1024)  # hidden layers
  latent_dim: int = 100
  batch_norm: bool = True  # after every hidden Linear
  activation: str = "relu"  # of the hidden layers: relu | leaky_relu (slope 0.2)
  output: str = "sigmoid"  # sigmoid (mapped to [-1, 1]) | tanh
  axis_name: Any = None  # BatchNorm statistics are averaged over this pmap axis
  dtype: Any = None

  @nn.compact
  def __call__(self, z, *, train: bool):
    activation = _choice(ACTIVATIONS, self.activation, "activation")
    output = _choice(OUTPUTS, self.output, "output")
    x = z
    for width in self.widths:
      x = nn.Dense(width, kernel_init=torch_linear_init, dtype=self.dtype)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         axis_name=self.axis_name, dtype=self.dtype)(x)
      x = activation(x)
    x = nn.Dense(math.prod(self.image_shape), kernel_init=torch_linear_init, dtype=self.dtype)(x)
    return output(x.astype(jnp.float32)).reshape(z.shape[0], *self.image_shape)


class Discriminator(nn.Module):
  """Maps images (B, H, W, C) in [-1, 1] to one logit each, shape (B,). No BatchNorm: `train`
  changes nothing and exists so that every GAN discriminator is called alike.

  It reads each pixel as a brightness in [0, 1], (x + 1) / 2, so that black, most of every blob
  or digit image, is a zero input and each unit's pre-activation on a dark image is its bias:
  zero at initialisation, the LeakyReLU's kink, where the units respond to where light is.
  Read in [-1, 1], black adds -sum(w) to every unit, a fixed offset several times larger than
  what one blob adds (0.45 against 0.1 at initialisation): on blobs almost no unit then
  crosses its kink (after 5000 steps 0.01% of unit-image pairs), the network is linear in the
  image, can only compare mean images, and a generator of black speckles with the data's mean
  brightness held it at D = 1/2. The same network either way up to its first layer's bias.
  """
  widths: Sequence[int] = (512, 256, 128)  # hidden layers
  negative_slope: float = 0.2  # of the LeakyReLUs
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = (x.reshape(x.shape[0], -1) + 1.0) / 2.0  # brightness: black is a zero input
    for width in self.widths:
      x = nn.leaky_relu(nn.Dense(width, kernel_init=torch_linear_init, dtype=self.dtype)(x),
                        self.negative_slope)
    x = nn.Dense(1, kernel_init=torch_linear_init, dtype=self.dtype)(x)
    return x.reshape(x.shape[0]).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Preset:
  """A study's networks, batch size and optimizer (the same Adam for both networks)."""
  generator: Generator
  discriminator: Discriminator
  batch_size: int
  learning_rate: float
  b1: float = 0.9
  b2: float = 0.999

  def optimizer(self) -> optax.GradientTransformation:
    return optax.adam(self.learning_rate, b1=self.b1, b2=self.b2)


PRESETS = ("deep_batchnorm", "one_hidden_layer")


def preset(name: str, image_shape: Sequence[int] = (28, 28, 1), axis_name=None) -> Preset:
  """The named study configuration (module docstring) for images of `image_shape` (H, W, C)."""
  image_shape = tuple(image_shape)
  if name == "deep_batchnorm":
    return Preset(
        Generator(image_shape, (128, 256, 512, 1024), 100, batch_norm=True, activation="relu",
                  output="sigmoid", axis_name=axis_name),
        Discriminator((512, 256, 128)), batch_size=128, learning_rate=1e-5)
  if name == "one_hidden_layer":
    return Preset(
        Generator(image_shape, (128,), 100, batch_norm=False, activation="leaky_relu",
                  output="tanh", axis_name=axis_name),
        Discriminator((128,)), batch_size=128, learning_rate=2e-4, b1=0.5)
  raise ValueError(f"MLP GAN preset must be one of {', '.join(PRESETS)}, got {name!r}")
