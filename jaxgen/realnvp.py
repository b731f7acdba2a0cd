"""RealNVP: density estimation with real-valued non-volume-preserving flows (Dinh, Sohl-Dickstein &
Bengio 2016, "Density estimation using Real NVP").

A flow f maps an image to a latent z of the same size with a tractable Jacobian, and the density
follows from the change of variables (eq. 3):

    log p(y) = log N(f(y); 0, I) + log |det df/dy|.

Affine coupling (eq. 6-9): with a binary mask m, the kept part conditions the changed part,

    y' = m * y + (1 - m) * (y * exp(s(m * y)) + t(m * y)),    log |det| = sum (1 - m) * s,

so the Jacobian is triangular and the inverse is y = (y' - t) * exp(-s) on the changed part.
Masks (Section 3.4): a spatial checkerboard, or half of the channels. Squeeze (Section 3.6):
2x2x1 blocks become 1x1x4, turning (H, W, C) into (H/2, W/2, 4C). Multi-scale (Section 3.6, eq.
14-15): each scale but the last runs checkerboard couplings, squeezes, runs channel-wise
couplings and factors out half of the channels as part of z; the last scale runs checkerboard
couplings only. Masks alternate from one coupling to the next so every variable gets changed.
s and t come from one residual network per coupling (Section 3.7), and s = scale * tanh(raw) with
a learned per-channel scale, so a coupling can never rescale by more than exp(|scale|) (eq. 8's
exp(s) cannot overflow in one step, which keeps training from blowing up).

The default module is exactly the PyTorch benchmark's reference (shared/bench/torch_ref.py, the
same layer list and parameter count): 1x28x28 MNIST, scale 1 with 3 checkerboard couplings,
squeeze to 4x14x14, 3 channel-wise couplings, 2 of the 4 channels factored out; scale 2 on
2x14x14 with 4 checkerboard couplings; every s/t network a ResNet of 64 channels and 4 blocks
(BatchNorm-ReLU-conv). `PRESETS` holds it and the paper's CIFAR-10 and CelebA 64x64 sizes.

Preprocessing and the reported likelihood (Section 4.1): integer pixels k in 0..255 are
dequantised with uniform noise, x = (k + u) / 256 in [0, 1)^D, and mapped to the logit space
y = logit(alpha + (1 - 2 alpha) x) with alpha = 0.05, whose log-determinant is part of the
density of x. The discrete likelihood is P(k) ~= p(x) / 256^D, and

    bits/dim = -(log p(x) - D log 256) / (D log 2)

is what the paper reports (3.49 CIFAR-10, 3.02 CelebA 64x64) and MNIST flows reach about 1.06.

Normalisation in the flow: the paper uses batch normalisation of each coupling's output. Here it
is `flow_norm="actnorm"` (Kingma & Dhariwal 2018, Section 3.1): a per-channel affine map
y = (x + loc) * exp(log_scale), initialised from the first batch so its outputs start with zero
mean and unit variance, log |det| = H * W * sum(log_scale). Why actnorm: it gives the same
well-scaled start, but the density of one image never depends on the other images of its batch,
training and evaluation compute the same density (no running averages in the flow itself), and
nothing needs synchronising over devices. `flow_norm="none"` is the reference (torch_ref has no
normalisation between couplings).

The s/t networks' own BatchNorm (as in the reference) makes the training-mode forward depend on
the batch: every inference use (sampling, test bits/dim, inverse) runs with `train=False`, i.e.
on the stored statistics, where each image's map is its own bijection. In training mode the
log-determinant is the one of the map for this batch's statistics, as in the paper. The stored
statistics are running averages, which lag the weights; `precise_batch_stats` recomputes them
with the current weights (the program does before every evaluation). `st_norm="none"` leaves
BatchNorm out of the s/t networks altogether.

Every s/t network's last convolution starts at zero (as in Glow), so each coupling starts as the
identity: the initial flow is a permutation (plus actnorm), which makes the data-dependent
initialisation exact and the first steps stable. The reference keeps PyTorch's default there; the
parameters, their shapes and count are the same.

Inputs: images as the training loop gives them, float32 NHWC in [-1, 1] mapped linearly from
pixels 0..255, from which `to_pixels` recovers the integers exactly, round((x + 1) * 127.5); uint8
arrays of pixels are taken as they are. MNIST runs at its own 28x28, no padding.
"""

import functools
import math
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxgen.layers import Conv
from jaxgen.parallel import draw, pmean

ALPHA = 0.05  # the logit transform's margin, Section 4.1
ST_NORMS = ("batch", "none")  # normalisation inside the s/t networks
BN_MOMENTUM = 0.9  # flax's convention: average <- 0.9 * average + 0.1 * batch (PyTorch's 0.1)
NUM_LEVELS = 256  # pixel values 0..255

# Architectures by name (RealNVP fields). "mnist" is torch_ref's exactly. "cifar10": the paper
# (Section 4.1) uses 8 residual blocks of 64 channels and downscales only once. "celeba64": at
# 64x64 the paper repeats scales until the last one sees 4x4 (5 scales), 2 residual blocks, and
# the official code's 32 base channels doubled at every scale (twice that in the channel-wise
# couplings). The two photographic presets normalise with actnorm where the paper has batch
# normalisation. "mnist_cpu": a model small enough to train on two CPU cores (README figures).
PRESETS = {
    "mnist": dict(image_shape=(28, 28, 1), num_scales=2, width=64, num_blocks=4,
                  flow_norm="none"),
    "mnist_cpu": dict(image_shape=(28, 28, 1), num_scales=2, checkerboard_couplings=3,
                      channel_couplings=3, final_couplings=3, width=32, num_blocks=1,
                      flow_norm="actnorm"),
    "cifar10": dict(image_shape=(32, 32, 3), num_scales=2, width=64, num_blocks=8,
                    flow_norm="actnorm"),
    "celeba64": dict(image_shape=(64, 64, 3), num_scales=5, width=32, num_blocks=2,
                     grow_width=True, flow_norm="actnorm"),
}


def from_preset(name: str, **overrides) -> "RealNVP":
  """The RealNVP of `PRESETS[name]`, with fields in `overrides` replaced (e.g. axis_name)."""
  if name not in PRESETS:
    raise ValueError(f"unknown RealNVP preset {name!r}; known: {', '.join(sorted(PRESETS))}")
  return RealNVP(**{**PRESETS[name], **overrides})


# ---------------------------------------------------------------- preprocessing (Section 4.1)
def to_pixels(images: jax.Array) -> jax.Array:
  """Pixel values 0..255 as float32: exact from model-range images (float in [-1, 1], the
  linear map of 0..255), taken as they are from integer (uint8) arrays."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32)
  return jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0.0, NUM_LEVELS - 1.0)


def to_model_range(pixels: jax.Array) -> jax.Array:
  """Pixel values 0..255 back to the data's [-1, 1] (what jaxgen.data's sources give)."""
  return pixels * (2.0 / (NUM_LEVELS - 1)) - 1.0


def dequantize(pixels: jax.Array, noise: jax.Array) -> jax.Array:
  """x = (k + u) / 256 in [0, 1): uniform dequantisation with noise u in [0, 1)."""
  return (pixels + noise) / NUM_LEVELS


def logit_transform(x: jax.Array, alpha: float = ALPHA):
  """y = logit(alpha + (1 - 2 alpha) x) and its log |det dy/dx| per example (B,)."""
  p = alpha + (1.0 - 2.0 * alpha) * x
  log_p, log_1mp = jnp.log(p), jnp.log1p(-p)
  log_det = math.log(1.0 - 2.0 * alpha) - log_p - log_1mp
  return log_p - log_1mp, jnp.sum(log_det.reshape(x.shape[0], -1), axis=1)


def logit_inverse(y: jax.Array, alpha: float = ALPHA) -> jax.Array:
  """x in [0, 1] from logit space (clipped: a sample can land outside the data's margin)."""
  return jnp.clip((jax.nn.sigmoid(y) - alpha) / (1.0 - 2.0 * alpha), 0.0, 1.0)


# ---------------------------------------------------------------- layers (Section 3)
def checkerboard(height: int, width: int, parity: int) -> jax.Array:
  """(1, H, W, 1) mask, 1 where (row + column) % 2 == parity: the variables a coupling keeps."""
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  return ((rows + cols) % 2 == parity).astype(jnp.float32)[None, :, :, None]


def squeeze(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H/2, W/2, 4C); channel c * 4 + 2 * dy + dx holds x[2i + dy, 2j + dx, c]
  (torch_ref's order, so the channels factored out are the reference's)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x: jax.Array) -> jax.Array:
  """Inverse of `squeeze`."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, c // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, 2 * h, 2 * w, c // 4)


class ScaleShiftResNet(nn.Module):
  """s and t of one coupling: conv3x3 to `width`, `num_blocks` residual blocks (BatchNorm-ReLU-
  conv3x3, twice, plus the skip), BatchNorm-ReLU-conv3x3 to 2 * out_channels; s = scale *
  tanh(raw s) with a per-channel scale that starts at 1. BatchNorm as PyTorch's (momentum 0.1 of
  the new batch, epsilon 1e-5), statistics averaged over `axis_name`; `norm="none"` leaves it out
  (the same network otherwise: ReLU-conv blocks), so that training and inference compute the same
  map and no image's density depends on its batch."""
  out_channels: int
  width: int = 64
  num_blocks: int = 4
  axis_name: Any = None
  conv: Any = Conv
  dtype: Any = None
  norm: str = "batch"  # "batch" | "none"

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.norm not in ST_NORMS:
      raise ValueError(f"the s/t networks' norm must be one of {', '.join(ST_NORMS)}, got "
                       f"{self.norm!r}")
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=1e-5, axis_name=self.axis_name, dtype=self.dtype)
    if self.norm == "none":
      norm = lambda name: lambda h: h  # noqa: E731
    conv = functools.partial(self.conv, kernel_size=3, strides=1, padding=1, dtype=self.dtype)
    h = conv(self.width, name="input")(x)
    for i in range(self.num_blocks):
      r = conv(self.width, name=f"block{i}_conv0")(nn.relu(norm(name=f"block{i}_norm0")(h)))
      h = h + conv(self.width, name=f"block{i}_conv1")(nn.relu(norm(name=f"block{i}_norm1")(r)))
    # zero output: the coupling starts as the identity
    out = conv(2 * self.out_channels, kernel_init=nn.initializers.zeros, name="output")(
        nn.relu(norm(name="output_norm")(h)))
    raw_s, t = jnp.split(out.astype(jnp.float32), 2, axis=-1)
    scale = self.param("scale", nn.initializers.ones, (self.out_channels,))
    return scale.reshape(1, 1, 1, -1) * jnp.tanh(raw_s), t


class AffineCoupling(nn.Module):
  """Affine coupling (eq. 6-9) with a checkerboard mask (`mask="checkerboard"`: the pixels with
  (row + column) % 2 == parity are kept) or a channel-wise one (`mask="channel"`: parity 0 keeps
  the first half of the channels, parity 1 the second half).

  __call__(x, train=..., inverse=False) -> (output, log |det| of the map applied), (B,) per
  example: forward y = x * exp(s) + t on the changed part; inverse=True undoes it (-sum s).
  """
  mask: str
  parity: int
  width: int = 64
  num_blocks: int = 4
  axis_name: Any = None
  conv: Any = Conv
  dtype: Any = None
  st_norm: str = "batch"

  @nn.compact
  def __call__(self, x, *, train: bool, inverse: bool = False):
    if self.mask not in ("checkerboard", "channel"):
      raise ValueError(f"mask must be 'checkerboard' or 'channel', got {self.mask!r}")
    b, h, w, c = x.shape
    if self.mask == "checkerboard":
      net = ScaleShiftResNet(c, self.width, self.num_blocks, self.axis_name, self.conv,
                             self.dtype, self.st_norm, name="net")
      keep = checkerboard(h, w, self.parity)
      s, t = net(x * keep, train=train)  # the kept pixels are the same in x and in y
      s, t = s * (1.0 - keep), t * (1.0 - keep)  # s = t = 0 leaves the kept pixels exactly
      out = (x - t) * jnp.exp(-s) if inverse else x * jnp.exp(s) + t
    else:
      if c % 2:
        raise ValueError(f"a channel-wise coupling needs an even number of channels, got {c}")
      net = ScaleShiftResNet(c // 2, self.width, self.num_blocks, self.axis_name, self.conv,
                             self.dtype, self.st_norm, name="net")
      first, second = jnp.split(x, 2, axis=-1)
      kept, changed = (first, second) if self.parity == 0 else (second, first)
      s, t = net(kept, train=train)
      changed = (changed - t) * jnp.exp(-s) if inverse else changed * jnp.exp(s) + t
      out = jnp.concatenate([kept, changed] if self.parity == 0 else [changed, kept], axis=-1)
    log_det = jnp.sum(s.reshape(b, -1), axis=1)
    return out, -log_det if inverse else log_det


class ActNorm(nn.Module):
  """Per-channel y = (x + loc) * exp(log_scale) (Kingma & Dhariwal 2018, Section 3.1),
  log |det| = H * W * sum(log_scale). Initialised from the data `init` sees: loc = -mean,
  log_scale = -log(std) per channel, so the first batch comes out with zero mean, unit variance.

  __call__(x, inverse=False) -> (output, log |det| of the map applied) with (B,) log-dets.
  """

  @nn.compact
  def __call__(self, x, *, inverse: bool = False):
    axes = tuple(range(x.ndim - 1))
    loc = self.param("loc", lambda _: -jnp.mean(x, axis=axes))
    # the floor keeps a constant channel of a tiny init batch from getting an enormous scale
    log_scale = self.param("log_scale",
                           lambda _: -jnp.log(jnp.maximum(jnp.std(x, axis=axes), 1e-3)))
    log_det = jnp.full((x.shape[0],), jnp.sum(log_scale) * math.prod(x.shape[1:-1]))
    loc, log_scale = loc.reshape(1, 1, 1, -1), log_scale.reshape(1, 1, 1, -1)
    if inverse:
      return x * jnp.exp(-log_scale) - loc, -log_det
    return (x + loc) * jnp.exp(log_scale), log_det


# ---------------------------------------------------------------- the multi-scale flow
class RealNVP(nn.Module):
  """The multi-scale RealNVP flow on logit-space images (B, H, W, C) (Section 3.6).

  Each of the `num_scales - 1` first scales: `checkerboard_couplings` checkerboard couplings,
  squeeze, `channel_couplings` channel-wise couplings, then half of the channels leave as part of
  z; the last scale: `final_couplings` checkerboard couplings. Every s/t network has `num_blocks`
  residual blocks of `width` channels; with `grow_width` the width doubles at every scale and the
  channel-wise couplings use twice their scale's width (the official code's sizes).

  Methods (called with `apply(..., method=RealNVP.forward)` etc.):
    forward(y, train) -> (z (B, D), log |det dz/dy| (B,))   (also __call__, what `init` runs)
    inverse(z, train=False) -> y (B, H, W, C)
  z lists the factored-out parts scale by scale, the last scale's output at the end, each
  flattened in NHWC order.
  """
  image_shape: Tuple[int, int, int] = (28, 28, 1)
  num_scales: int = 2
  checkerboard_couplings: int = 3
  channel_couplings: int = 3
  final_couplings: int = 4
  width: int = 64
  num_blocks: int = 4
  grow_width: bool = False
  flow_norm: str = "none"  # "none" (torch_ref) | "actnorm" after every coupling
  st_norm: str = "batch"  # inside the s/t networks: "batch" (the paper, torch_ref) | "none"
  axis_name: Any = None  # BatchNorm statistics are averaged over this pmap axis
  conv: Any = Conv
  dtype: Any = None  # computation dtype of the s/t networks; the flow itself stays float32

  def plan(self):
    """The flow as a list of ("coupling", mask, parity, width), ("squeeze",), ("split",)."""
    h, w, _ = self.image_shape
    factor = 2 ** (self.num_scales - 1)
    if self.num_scales < 1 or self.final_couplings < 1:
      raise ValueError(f"RealNVP needs num_scales >= 1 and final_couplings >= 1, got "
                       f"{self.num_scales} and {self.final_couplings}")
    if h % factor or w % factor:
      raise ValueError(f"RealNVP with num_scales={self.num_scales} squeezes "
                       f"{self.num_scales - 1} times and needs height and width divisible by "
                       f"{factor}, got image_shape={tuple(self.image_shape)}")
    if self.flow_norm not in ("none", "actnorm"):
      raise ValueError(f"flow_norm must be 'none' or 'actnorm', got {self.flow_norm!r}")
    if self.st_norm not in ST_NORMS:
      raise ValueError(f"st_norm must be one of {', '.join(ST_NORMS)}, got {self.st_norm!r}")
    steps = []
    for scale in range(self.num_scales):
      width = self.width * 2 ** scale if self.grow_width else self.width
      last = scale == self.num_scales - 1
      for i in range(self.final_couplings if last else self.checkerboard_couplings):
        steps.append(("coupling", "checkerboard", i % 2, width))
      if last:
        break
      steps.append(("squeeze",))
      for i in range(self.channel_couplings):
        steps.append(("coupling", "channel", i % 2, 2 * width if self.grow_width else width))
      steps.append(("split",))
    return steps

  def latent_shapes(self):
    """(H, W, C) of every part of z, in the order z lists them."""
    h, w, c = self.image_shape
    shapes = []
    for step in self.plan():
      if step[0] == "squeeze":
        h, w, c = h // 2, w // 2, 4 * c
      elif step[0] == "split":
        shapes.append((h, w, c // 2))
        c -= c // 2
    return shapes + [(h, w, c)]

  def setup(self):
    couplings = [s for s in self.plan() if s[0] == "coupling"]
    self.couplings = [
        AffineCoupling(mask, parity, width, self.num_blocks, self.axis_name, self.conv,
                       self.dtype, self.st_norm) for _, mask, parity, width in couplings]
    self.norms = [ActNorm() for _ in couplings] if self.flow_norm == "actnorm" else []

  def _check(self, shape):
    if tuple(shape[1:]) != tuple(self.image_shape):
      raise ValueError(f"RealNVP(image_shape={tuple(self.image_shape)}) got images of shape "
                       f"{tuple(shape[1:])}")

  def __call__(self, y, *, train: bool):
    return self.forward(y, train=train)

  def forward(self, y, *, train: bool):
    self._check(y.shape)
    x, log_det, parts, k = y.astype(jnp.float32), jnp.zeros((y.shape[0],)), [], 0
    for step in self.plan():
      if step[0] == "squeeze":
        x = squeeze(x)
      elif step[0] == "split":
        half = x.shape[-1] // 2
        parts.append(x[..., :half])
        x = x[..., half:]
      else:
        x, ld = self.couplings[k](x, train=train)
        log_det = log_det + ld
        if self.norms:
          x, ld = self.norms[k](x)
          log_det = log_det + ld
        k += 1
    parts.append(x)
    return jnp.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1), log_det

  def inverse(self, z, *, train: bool = False):
    shapes = self.latent_shapes()
    sizes = [math.prod(s) for s in shapes]
    if z.ndim != 2 or z.shape[1] != sum(sizes):
      raise ValueError(f"RealNVP.inverse needs z of shape (batch, {sum(sizes)}), got {z.shape}")
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    parts = [z[:, a:b].reshape(z.shape[0], *s) for a, b, s in zip(offsets, offsets[1:], shapes)]
    x, k = parts.pop(), len(self.couplings)
    for step in reversed(self.plan()):
      if step[0] == "squeeze":
        x = unsqueeze(x)
      elif step[0] == "split":
        x = jnp.concatenate([parts.pop(), x], axis=-1)
      else:
        k -= 1
        if self.norms:
          x, _ = self.norms[k](x, inverse=True)
        x, _ = self.couplings[k](x, train=train, inverse=True)
    return x


# ---------------------------------------------------------------- likelihood (eq. 3, Section 4.1)
def num_dims(model: RealNVP) -> int:
  return math.prod(model.image_shape)


def standard_normal_log_density(z: jax.Array) -> jax.Array:
  """log N(z; 0, I) per example, z of shape (B, D)."""
  return jnp.sum(-0.5 * z * z - 0.5 * math.log(2 * math.pi), axis=1)


def _log_density(model, variables, x, train):
  """log p(x) in nats per example for x in [0, 1)^D: logit preprocessing, flow, N(0, I); and the
  updated BatchNorm averages (train) or None."""
  y, log_det_logit = logit_transform(x)
  if train:
    (z, log_det_flow), updates = model.apply(variables, y, train=True, method=RealNVP.forward,
                                             mutable=["batch_stats"])
    stats = updates["batch_stats"]
  else:
    z, log_det_flow = model.apply(variables, y, train=False, method=RealNVP.forward)
    stats = None
  return standard_normal_log_density(z) + log_det_flow + log_det_logit, stats


def log_density(params, batch_stats, x, *, model: RealNVP) -> jax.Array:
  """log p(x) (nats, per example) of continuous images x in [0, 1)^D (B, H, W, C), inference mode."""
  return _log_density(model, {"params": params, "batch_stats": batch_stats}, x, False)[0]


def to_bits_per_dim(log_px: jax.Array, dims: int) -> jax.Array:
  """-(log p(x) - D log 256) / (D log 2): bits per dimension of the discrete pixels."""
  return -(log_px - dims * math.log(NUM_LEVELS)) / (dims * math.log(2.0))


def bits_per_dim(params, batch_stats, pixels, noise, *, model: RealNVP) -> jax.Array:
  """The paper's bits/dim per example (B,) of integer pixels 0..255 (B, H, W, C) dequantised with
  `noise` in [0, 1): dequantisation and logit terms included, inference mode."""
  x = dequantize(pixels.astype(jnp.float32), noise)
  return to_bits_per_dim(log_density(params, batch_stats, x, model=model), num_dims(model))


def eval_bits_per_dim(params, batch_stats, batch, key, *, model: RealNVP) -> jax.Array:
  """Mean bits/dim of a batch of images (model range or uint8), noise drawn from `key`;
  inference mode, so each image's value is independent of the rest of the batch."""
  pixels = to_pixels(batch)
  noise = jax.random.uniform(key, pixels.shape)
  return jnp.mean(bits_per_dim(params, batch_stats, pixels, noise, model=model))


def batch_statistics(params, batch_stats, batch, key, *, model: RealNVP):
  """The s/t networks' BatchNorm statistics of one batch (images in model range or uint8,
  dequantised with noise from `key`), a tree like `batch_stats`: every layer's per-channel mean
  and (biased) variance of its input, the layers before it normalising with the batch's own
  statistics, as training does. (From zero averages flax's update leaves (1 - momentum) times
  the batch's statistics, which this divides out.)"""
  pixels = to_pixels(batch)
  x = dequantize(pixels, jax.random.uniform(key, pixels.shape))
  zero = jax.tree.map(jnp.zeros_like, batch_stats)
  _, stats = _log_density(model, {"params": params, "batch_stats": zero}, x, True)
  return jax.tree.map(lambda v: v / (1.0 - BN_MOMENTUM), stats)


_batch_statistics = jax.jit(batch_statistics, static_argnames="model")


def precise_batch_stats(params, batch_stats, batches, key, *, model: RealNVP):
  """Inference statistics for the s/t networks' BatchNorm recomputed with the current weights:
  the mean over `batches` (a list of training batches) of each batch's statistics ("precise
  BatchNorm", Wu & Johnson 2021). The running averages lag the weights by about ten steps, and
  on MNIST that lag cost up to 0.06 bits/dim at a checkpoint and made the test curve jump
  (README); these follow the weights exactly. `model` without an axis_name (one device)."""
  if not jax.tree.leaves(batch_stats):
    return batch_stats  # no BatchNorm (st_norm="none")
  total = None
  for i, batch in enumerate(batches):
    stats = _batch_statistics(params, batch_stats, batch, jax.random.fold_in(key, i), model=model)
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  return jax.tree.map(lambda v: v / len(batches), total)


def sample(params, batch_stats, key, n: int, *, model: RealNVP, temperature: float = 1.0):
  """`n` images (n, H, W, C) in [-1, 1] on the pixel grid (k / 127.5 - 1), from z ~ N(0, T^2 I)
  through the inverse flow and the inverse logit transform (inference mode)."""
  z = temperature * jax.random.normal(key, (n, num_dims(model)))
  y = model.apply({"params": params, "batch_stats": batch_stats}, z, method=RealNVP.inverse)
  pixels = jnp.clip(jnp.floor(logit_inverse(y) * NUM_LEVELS), 0.0, NUM_LEVELS - 1.0)
  return to_model_range(pixels)


# ---------------------------------------------------------------- training
@struct.dataclass
class RealNVPState:
  """The whole training state: a plain pytree, checkpointed as it is."""
  step: jax.Array
  params: Any
  batch_stats: Any  # the s/t networks' BatchNorm statistics: running averages, or precise ones
  opt_state: Any


def optimizer(learning_rate: float = 1e-3, clip_norm: float = 0.0):
  """Adam (the paper's and torch_ref's, 1e-3). clip_norm > 0 clips the global gradient norm of
  the bits/dim loss first (the official code clips at 100 on nats per image, i.e. at
  100 / (D log 2) in these units; README gives the measured effect)."""
  adam = optax.adam(learning_rate)
  return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else adam


def init_state(key, batch, *, model: RealNVP, optimizer: optax.GradientTransformation):
  """Fresh parameters from `key`, actnorm (if any) initialised on `batch` (images in model range
  or uint8, the more the better: its per-channel statistics set the initial scales)."""
  k_init, k_noise = jax.random.split(key)
  pixels = to_pixels(jnp.asarray(batch))
  y, _ = logit_transform(dequantize(pixels, jax.random.uniform(k_noise, pixels.shape)))
  # training mode: actnorm starts from the statistics training will see
  variables = jax.jit(functools.partial(model.init, train=True))(k_init, y)
  params = variables["params"]
  return RealNVPState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=optimizer.init(params))


def train_step(state: RealNVPState, batch, key, *, model: RealNVP,
               optimizer: optax.GradientTransformation, axis_name=None):
  """One Adam step on the mean bits/dim of `batch` (this device's part of the global batch under
  pmap; images in model range or uint8), dequantisation noise from fold_in(key, state.step).

  Returns the new state and metrics: bits_per_dim (the loss, the paper's measure on the
  training batch in training mode), nll (nats per image of the discrete pixels), grad_norm
  (before any clipping).
  """
  if model.axis_name != axis_name:
    raise ValueError(f"the model's BatchNorm averages over axis_name={model.axis_name!r} but the "
                     f"step runs with axis_name={axis_name!r}; build the model with the same one")
  pixels = to_pixels(batch)
  noise = draw(jax.random.uniform, jax.random.fold_in(key, state.step), pixels.shape, axis_name)
  x = dequantize(pixels, noise)
  dims = num_dims(model)

  def loss_fn(params):
    log_px, stats = _log_density(model, {"params": params, "batch_stats": state.batch_stats}, x,
                                 True)
    nll = jnp.mean(dims * math.log(NUM_LEVELS) - log_px)
    return nll / (dims * math.log(2.0)), (nll, stats)

  (loss, (nll, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = pmean(grads, axis_name)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  metrics = {"bits_per_dim": loss, "nll": nll, "grad_norm": optax.tree.norm(grads)}
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=stats, opt_state=opt_state)
  return new_state, pmean(metrics, axis_name)
