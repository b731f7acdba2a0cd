"""DCGAN-style networks (Radford, Metz & Chintala 2015), used by DCGAN and the Wasserstein GANs.

Generator: z -> ConvT(k4 s1 p0) to 4x4, then ConvT(k4 s2 p1) layers that double the size and
halve the width, each followed by BatchNorm and ReLU, and a last ConvT(k4 s2 p1) to the image
channels with tanh. At 64x64x3 and width 64 that is z->512->256->128->64->3.

Critic: Conv(k4 s2 p1) layers with LeakyReLU(0.2) that halve the size and double the width
(64->128->256->512 at 64x64), then Conv(k4 s1 p0) from 4x4 to one score. No BatchNorm (the
gradient penalty is per example) and no sigmoid (a critic scores, it does not classify).

Weights are drawn from N(0, 0.02), BatchNorm scales from N(1, 0.02), as in the DCGAN paper.
BatchNorm uses PyTorch's running-average momentum (0.1 of the new batch) and epsilon 1e-5.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.layers import Conv, ConvTranspose

dcgan_init = nn.initializers.normal(0.02)


def _scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def num_upsamplings(image_size: int) -> int:
  """Stride-2 layers between 4x4 and `image_size`; a clear error for sizes DCGAN cannot make."""
  n = math.log2(image_size / 4) if image_size > 0 else -1
  if n < 1 or n != int(n):
    raise ValueError(f"image_size must be a power of two of at least 8 (8, 16, 32, 64, 128...), "
                     f"got {image_size}")
  return int(n)


class Generator(nn.Module):
  """Maps latent vectors (B, latent_dim) to images (B, size, size, channels) in [-1, 1]."""
  image_size: int = 32
  channels: int = 1
  width: int = 64  # channels of the last hidden layer; earlier layers double it
  latent_dim: int = 100
  axis_name: Any = None  # BatchNorm statistics are averaged over this pmap axis
  dtype: Any = None

  @nn.compact
  def __call__(self, z, *, train: bool):
    n = num_upsamplings(self.image_size)
    x = z.reshape(z.shape[0], 1, 1, z.shape[-1])
    for i in range(n):
      features = self.width * 2 ** (n - 1 - i)
      stride, padding = (1, 0) if i == 0 else (2, 1)
      x = ConvTranspose(features, 4, stride, padding, use_bias=False, kernel_init=dcgan_init,
                        dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       axis_name=self.axis_name, scale_init=_scale_init, dtype=self.dtype)(x)
      x = nn.relu(x)
    x = ConvTranspose(self.channels, 4, 2, 1, use_bias=False, kernel_init=dcgan_init,
                      dtype=self.dtype)(x)
    return jnp.tanh(x.astype(jnp.float32))


class Critic(nn.Module):
  """Maps images (B, size, size, C) to one unbounded score each, shape (B,)."""
  image_size: int = 32
  width: int = 64  # channels of the first layer; later layers double it
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    n = num_upsamplings(self.image_size)
    for i in range(n):
      x = Conv(self.width * 2 ** i, 4, 2, 1, kernel_init=dcgan_init, dtype=self.dtype)(x)
      x = nn.leaky_relu(x, 0.2)
    x = Conv(1, 4, 1, 0, kernel_init=dcgan_init, dtype=self.dtype)(x)
    return x.reshape(x.shape[0]).astype(jnp.float32)
