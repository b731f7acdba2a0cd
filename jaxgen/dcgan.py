"""DCGAN-style networks (Radford, Metz & Chintala 2015), used by DCGAN and the Wasserstein GANs.

Generator: z -> ConvT(k4 s1 p0) to 4x4 (optionally after a mapping MLP, see below), then
ConvT(k4 s2 p1) layers that double the size and halve the width, each followed by BatchNorm and
ReLU, and a last ConvT(k4 s2 p1) to the image channels with tanh. At 64x64x3 and width 64 that
is z->512->256->128->64->3.

A mapping MLP (`mapping_layers` Dense-LeakyReLU(0.2) layers of `mapping_width` units between z and
the first layer, as StyleGAN's mapping network; 0 layers is DCGAN's generator) lets the generator
decide where its objects go before it draws them: without one, the 4x4 map is one linear function
of z per cell, so "a blob in cell c" holds on a half-space of latents per cell, and half-spaces
cannot partition the latent space; latents where two or no cells switch on draw two blobs or
none. On the one-blob images two layers of 256 took WGAN-GP from 52-60% to 76-87% of samples
with exactly one blob over three seeds (README: the blob study).

Critic: Conv(k4 s2 p1) layers with LeakyReLU(0.2) that halve the size and double the width
(64->128->256->512 at 64x64), then Conv(k4 s1 p0) from 4x4 to one score. No BatchNorm (the
gradient penalty is per example) and no sigmoid (a critic scores, it does not classify). With
`global_view` one more such layer makes a 2x2 map, scored by a 2x2 convolution: each of its
cells sees the whole image, which a linear sum over 4x4 cells of 22-px windows does not (on the
one-blob images it took WGAN-GP from 85% to 96-98% of samples with exactly one blob).

Discriminator (the DCGAN paper's): the critic's layers without biases, BatchNorm after every
convolution but the first, and one logit out (the sigmoid is in the loss, `jaxgen.gan`).

Weights are drawn from N(0, 0.02), BatchNorm scales from N(1, 0.02), as in the DCGAN paper.
BatchNorm uses PyTorch's running-average momentum (0.1 of the new batch) and epsilon 1e-5.
Each network takes its convolution class as a field (`conv`, `conv_transpose`): jaxgen's fast
layers by default, `jaxgen.layers.PlainConv`/`PlainConvTranspose` for the plain-flax baseline;
the layers keep their names (Conv_i, ConvTranspose_i) whichever class computes them, so both
take the same parameters.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxgen.layers import Conv, ConvTranspose, UpsampleConv

UPSAMPLINGS = ("transpose", "resize")
NORMS = ("batch", "instance")
LATENTS = ("normal", "uniform")

dcgan_init = nn.initializers.normal(0.02)


def optimizer(learning_rate: float = 2e-4, b1: float = 0.5, b2: float = 0.999):
  """Adam as the DCGAN paper trains both networks (b1 = 0.5: 0.9 oscillated, section 4)."""
  return optax.adam(learning_rate, b1=b1, b2=b2)


def _scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def batch_norm(train: bool, axis_name, dtype) -> nn.BatchNorm:
  """DCGAN's BatchNorm with PyTorch's momentum and epsilon; statistics averaged over `axis_name`."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name, scale_init=_scale_init, dtype=dtype)


def num_upsamplings(image_size: int) -> int:
  """Stride-2 layers between 4x4 and `image_size`; a clear error for sizes DCGAN cannot make."""
  n = math.log2(image_size / 4) if image_size > 0 else -1
  if n < 1 or n != int(n):
    raise ValueError(f"image_size must be a power of two of at least 8 (8, 16, 32, 64, 128...), "
                     f"got {image_size}")
  return int(n)


def with_coordinates(x):
  """x (B, H, W, C) with two more channels: each pixel centre's row and column, in [-1, 1]."""
  b, h, w, _ = x.shape
  rows = jnp.broadcast_to(((jnp.arange(h) + 0.5) * (2.0 / h) - 1.0)[:, None], (h, w))
  cols = jnp.broadcast_to(((jnp.arange(w) + 0.5) * (2.0 / w) - 1.0)[None, :], (h, w))
  grid = jnp.broadcast_to(jnp.stack([rows, cols], -1)[None], (b, h, w, 2)).astype(x.dtype)
  return jnp.concatenate([x, grid], -1)


class Generator(nn.Module):
  """Maps latent vectors (B, latent_dim) to images (B, size, size, channels) in [-1, 1]."""
  image_size: int = 32
  channels: int = 1
  width: int = 64  # channels of the last hidden layer; earlier layers double it
  latent_dim: int = 100
  axis_name: Any = None  # BatchNorm statistics are averaged over this pmap axis
  dtype: Any = None
  # How each stride-2 layer doubles the size: "transpose" (DCGAN's k4 s2 p1 transposed
  # convolution) or "resize" (nearest-neighbour upsampling, then a 3x3 convolution).
  upsampling: str = "transpose"
  # CoordConv (Liu et al. 2018): two channels of pixel coordinates in [-1, 1] added to the input
  # of every stride-2 layer, so that where a pixel is can be computed, not only what is near it.
  coordinates: bool = False
  # Dense-LeakyReLU(0.2) layers between z and the first layer (flax's default LeCun-normal
  # initialisation): 0 is DCGAN's generator.
  mapping_layers: int = 0
  mapping_width: int = 256
  # What normalises each hidden layer: "batch" (DCGAN's BatchNorm, statistics over the batch) or
  # "instance" (each image's own statistics per channel, as StyleGAN's AdaIN; no running
  # averages): an image cannot then be drawn faint or empty by scaling its activations down.
  norm: str = "batch"
  # The prior the network sees: "normal" (z as drawn, N(0, I)) or "uniform" (DCGAN's and the
  # original GAN's U(-1, 1)^d, made from the same normal draws by the normal CDF, 2 Phi(z) - 1,
  # so every sampler and latent grid keeps drawing normals). On the blobs it did not remove the
  # seam at the image's edges that the README's blob study describes; the critic's view did.
  latent: str = "normal"
  conv_transpose: Any = ConvTranspose
  upsample_conv: Any = UpsampleConv

  @nn.compact
  def __call__(self, z, *, train: bool):
    n = num_upsamplings(self.image_size)
    if self.upsampling not in UPSAMPLINGS:
      raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLINGS)}, got "
                       f"{self.upsampling!r}")
    if self.norm not in NORMS:
      raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
    if self.latent not in LATENTS:
      raise ValueError(f"latent must be one of {', '.join(LATENTS)}, got {self.latent!r}")
    if self.latent == "uniform":
      z = jax.scipy.special.erf(z * (1.0 / math.sqrt(2.0)))
    for j in range(self.mapping_layers):
      z = nn.leaky_relu(nn.Dense(self.mapping_width, dtype=self.dtype, name=f"Mapping_{j}")(z),
                        0.2)
    x = z.reshape(z.shape[0], 1, 1, z.shape[-1])
    for i in range(n + 1):
      features = self.width * 2 ** (n - 1 - i) if i < n else self.channels
      name = f"ConvTranspose_{i}"
      if i == 0:  # the latent to 4x4
        layer = self.conv_transpose(features, 4, 1, 0, use_bias=False, kernel_init=dcgan_init,
                                    dtype=self.dtype, name=name)
      elif self.upsampling == "resize":
        layer = self.upsample_conv(features, 3, 2, 1, use_bias=False, kernel_init=dcgan_init,
                                   dtype=self.dtype, name=name)
      else:
        layer = self.conv_transpose(features, 4, 2, 1, use_bias=False, kernel_init=dcgan_init,
                                    dtype=self.dtype, name=name)
      if i > 0 and self.coordinates:
        x = with_coordinates(x)
      x = layer(x)
      if i < n:
        norm = batch_norm(train, self.axis_name, self.dtype) if self.norm == "batch" else \
            nn.InstanceNorm(epsilon=1e-5, dtype=self.dtype)
        x = nn.relu(norm(x))
    return jnp.tanh(x.astype(jnp.float32))


class Critic(nn.Module):
  """Maps images (B, size, size, C) to one unbounded score each, shape (B,)."""
  image_size: int = 32
  width: int = 64  # channels of the first layer; later layers double it
  dtype: Any = None
  # Units of a hidden layer between the last 4x4 map and the score; 0 is DCGAN's linear head.
  # A linear head scores the sum of what each 4x4 cell holds, so it cannot tell an image of two
  # far-apart blobs plus an empty one from two images of one blob; a hidden layer can count.
  hidden: int = 0
  # One more stride-2 layer, to a 2x2 map scored by a 2x2 convolution: each cell then sees the
  # whole image (46-px receptive fields at 32x32, against 22 px for the 4x4 cells), so even a
  # linear head is a nonlinear function of all of it.
  global_view: bool = False
  conv: Any = Conv

  @nn.compact
  def __call__(self, x):
    n = num_upsamplings(self.image_size) + (1 if self.global_view else 0)
    for i in range(n):
      x = self.conv(self.width * 2 ** i, 4, 2, 1, kernel_init=dcgan_init, dtype=self.dtype,
                    name=f"Conv_{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    k = 2 if self.global_view else 4
    x = self.conv(self.hidden or 1, k, 1, 0, kernel_init=dcgan_init, dtype=self.dtype,
                  name=f"Conv_{n}")(x)
    if self.hidden:
      x = nn.Dense(1, kernel_init=dcgan_init, dtype=self.dtype, name="Dense_0")(
          nn.leaky_relu(x.reshape(x.shape[0], self.hidden), 0.2))
    return x.reshape(x.shape[0]).astype(jnp.float32)


class Discriminator(nn.Module):
  """Maps images (B, size, size, C) to one logit each, shape (B,): log(D(x) / (1 - D(x))).

  At 64x64x3 the layers are 64-128-256-512, at 32x32x1 64-128-256 (the reference's networks).
  `train=True` normalises with the batch's statistics and updates the running averages
  (mutable "batch_stats"); the default uses the running averages.
  """
  image_size: int = 32
  width: int = 64  # channels of the first layer; later layers double it
  axis_name: Any = None  # BatchNorm statistics are averaged over this pmap axis
  dtype: Any = None
  conv: Any = Conv

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = num_upsamplings(self.image_size)
    for i in range(n):
      x = self.conv(self.width * 2 ** i, 4, 2, 1, use_bias=False, kernel_init=dcgan_init,
                    dtype=self.dtype, name=f"Conv_{i}")(x)
      if i > 0:  # not on the first layer (Radford et al. 2015, section 3)
        x = batch_norm(train, self.axis_name, self.dtype)(x)
      x = nn.leaky_relu(x, 0.2)
    x = self.conv(1, 4, 1, 0, use_bias=False, kernel_init=dcgan_init, dtype=self.dtype,
                  name=f"Conv_{n}")(x)
    return x.reshape(x.shape[0]).astype(jnp.float32)
