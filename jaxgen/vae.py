"""Variational autoencoders (Kingma & Welling 2013) and beta-VAE (Higgins et al. 2017).

Model: p(z) = N(0, I), a decoder p(x | z), an encoder q(z | x) = N(mean(x), diag exp(logvar(x))).
Training maximises the evidence lower bound (ELBO, eq. 10 of Kingma & Welling):

    log p(x) >= E_q[log p(x | z)] - KL(q(z | x) || p(z)),

the expectation estimated with one reparameterised sample z = mean + exp(logvar / 2) * eps,
eps ~ N(0, I) (section 2.4), the KL in closed form (appendix B). beta-VAE weights the KL by beta
(eq. 4 of Higgins et al.); beta = 1 is the plain VAE. All quantities are nats per example: summed
over pixels and latent dimensions, averaged over the batch.

Reading order: the networks, the posterior sample, the likelihoods and the KL, bits per dimension,
the training state and step, the importance-sampled log-likelihood of Burda et al. (2015).

Initialisation: every kernel is drawn like PyTorch's default for Linear, Conv2d and
ConvTranspose2d, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with PyTorch's fan_in (for a transposed
convolution that is out_channels * k * k); biases start at zero (PyTorch draws them from the same
uniform, which Flax's bias initialisers cannot do without the fan-in).
"""

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from jaxgen.dcgan import num_upsamplings
from jaxgen.layers import Conv, ConvTranspose
from jaxgen.parallel import draw, pmean

# PyTorch's default kernel initialisation: variance 1 / (3 fan_in), uniform.
kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# The encoder's log-variance is clipped to this range before it is used (see VAE.encode).
LOGVAR_RANGE = (-30.0, 20.0)


# ---------------------------------------------------------------- networks

class MLPEncoder(nn.Module):
  """Images (B, ...) -> (mean, logvar), each (B, latent_dim); ReLU hidden layers.

  With hidden_dims=(400,) and latent_dim=20 on 28x28x1 this is the reference 784-400-20 encoder
  (PyTorch's fc1, fc21, fc22: one hidden layer, two linear heads).
  """
  hidden_dims: Sequence[int] = (400,)
  latent_dim: int = 20
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], -1)  # NHWC flattened; for one channel the same order as NCHW
    for i, width in enumerate(self.hidden_dims):
      h = nn.relu(nn.Dense(width, kernel_init=kernel_init, dtype=self.dtype, name=f"hidden_{i}")(h))
    mean = nn.Dense(self.latent_dim, kernel_init=kernel_init, dtype=self.dtype, name="mean")(h)
    logvar = nn.Dense(self.latent_dim, kernel_init=kernel_init, dtype=self.dtype, name="logvar")(h)
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)


class MLPDecoder(nn.Module):
  """Latents (B, L) -> per-pixel outputs (B, *output_shape): Bernoulli logits or Gaussian means.

  With hidden_dims=(400,) and output_shape=(28, 28, 1) this is the reference 20-400-784 decoder.
  """
  hidden_dims: Sequence[int] = (400,)
  output_shape: Sequence[int] = (28, 28, 1)
  dtype: Any = None

  @nn.compact
  def __call__(self, z):
    h = z
    for i, width in enumerate(self.hidden_dims):
      h = nn.relu(nn.Dense(width, kernel_init=kernel_init, dtype=self.dtype, name=f"hidden_{i}")(h))
    out = nn.Dense(math.prod(self.output_shape), kernel_init=kernel_init, dtype=self.dtype,
                   name="output")(h)
    return out.reshape(z.shape[0], *self.output_shape).astype(jnp.float32)


def conv_channels(image_size: int, channels_list: Optional[Sequence[int]]) -> tuple:
  """Widths of the stride-2 layers: given, or 32, 64, ... halving the image down to 4x4."""
  if channels_list is None:
    return tuple(32 * 2 ** i for i in range(num_upsamplings(image_size)))
  if not channels_list or image_size % 2 ** len(channels_list):
    raise ValueError(f"image_size {image_size} cannot be halved {len(channels_list)} times "
                     f"(channels_list={tuple(channels_list)}); give one width per halving")
  return tuple(channels_list)


class ConvEncoder(nn.Module):
  """Images (B, S, S, C) -> (mean, logvar), each (B, latent_dim).

  Conv k4 s2 p1 layers with ReLU halve the size (widths `channels_list`, by default 32, 64, ... down
  to 4x4), then one Linear to mean and log-variance together. At 64x64x3 and latent 32 that is the
  reference `vae_conv64`: 3-32-64-128-256 to 256x4x4, Linear 4096 -> 64. The feature map is
  flattened as NHWC, PyTorch flattens NCHW: the same function class, a permutation of the Linear's
  rows.
  """
  image_size: int = 64
  channels_list: Optional[Sequence[int]] = None
  latent_dim: int = 32
  conv: Any = Conv
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"ConvEncoder(image_size={self.image_size}) got images of shape "
                       f"{x.shape[1:]}")
    h = x
    for i, width in enumerate(conv_channels(self.image_size, self.channels_list)):
      h = nn.relu(self.conv(width, 4, 2, 1, kernel_init=kernel_init, dtype=self.dtype,
                            name=f"conv_{i}")(h))
    stats = nn.Dense(2 * self.latent_dim, kernel_init=kernel_init, dtype=self.dtype,
                     name="stats")(h.reshape(h.shape[0], -1)).astype(jnp.float32)
    return stats[:, :self.latent_dim], stats[:, self.latent_dim:]


class ConvDecoder(nn.Module):
  """Latents (B, L) -> per-pixel outputs (B, S, S, output_channels).

  Linear to (widest) x s x s with ReLU, then ConvT k4 s2 p1 layers with ReLU through the encoder's
  widths in reverse, and a last ConvT k4 s2 p1 to the image channels with no activation. At 64x64x3
  that is the reference: Linear 32 -> 256x4x4, ConvT 256-128-64-32, ConvT 32 -> 3.
  """
  image_size: int = 64
  channels_list: Optional[Sequence[int]] = None  # the encoder's widths, in the encoder's order
  output_channels: int = 3
  conv_transpose: Any = ConvTranspose
  dtype: Any = None

  @nn.compact
  def __call__(self, z):
    widths = conv_channels(self.image_size, self.channels_list)[::-1]
    size = self.image_size // 2 ** len(widths)
    h = nn.Dense(widths[0] * size * size, kernel_init=kernel_init, dtype=self.dtype,
                 name="from_latent")(z)
    h = nn.relu(h).reshape(z.shape[0], size, size, widths[0])
    for i, width in enumerate(widths[1:]):
      h = nn.relu(self.conv_transpose(width, 4, 2, 1, kernel_init=kernel_init, dtype=self.dtype,
                                      name=f"conv_transpose_{i}")(h))
    out = self.conv_transpose(self.output_channels, 4, 2, 1, kernel_init=kernel_init,
                              dtype=self.dtype, name=f"conv_transpose_{len(widths) - 1}")(h)
    return out.astype(jnp.float32)


# ---------------------------------------------------------------- the model, its posterior sample

def reparameterize(mean: jax.Array, logvar: jax.Array, eps: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) * eps: a sample of N(mean, diag exp(logvar)) for eps ~ N(0, I)
  that is differentiable in mean and logvar (Kingma & Welling, section 2.4)."""
  return mean + jnp.exp(0.5 * logvar) * eps


class VAE(nn.Module):
  """An encoder q(z | x) and a decoder p(x | z); parameters {'encoder': ..., 'decoder': ...}."""
  encoder: nn.Module
  decoder: nn.Module

  def encode(self, x):
    """(mean, logvar) of q(z | x), logvar clipped to LOGVAR_RANGE.

    The clip sits where the network's output becomes a log-variance, so the sample, the KL and the
    importance weights all use one (proper) Gaussian. Why: exp overflows float32 beyond 88, and
    Adam squares gradients, and the KL's gradient exp(logvar) / 2 squared overflows beyond ~40;
    variances outside exp(-30)..exp(20) serve no model of data in [-1, 1] under a unit prior.
    """
    mean, logvar = self.encoder(x)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z):
    """The decoder's per-pixel output: Bernoulli logits or Gaussian means."""
    return self.decoder(z)

  def __call__(self, x, key, axis_name=None):
    """(decoder output at one posterior sample, mean, logvar). `key` draws eps for the global
    batch through `parallel.draw`, so 1 and N devices agree."""
    mean, logvar = self.encode(x)
    eps = draw(jax.random.normal, key, mean.shape, axis_name)
    return self.decode(reparameterize(mean, logvar, eps)), mean, logvar


def mlp_vae(image_shape=(28, 28, 1), hidden_dims=(400,), latent_dim=20, dtype=None) -> VAE:
  """The MLP VAE; the defaults are the reference 784-400-20."""
  return VAE(MLPEncoder(tuple(hidden_dims), latent_dim, dtype),
             MLPDecoder(tuple(hidden_dims)[::-1], tuple(image_shape), dtype))


def conv_vae(image_size=64, channels=3, latent_dim=32, channels_list=None, dtype=None,
             conv=Conv, conv_transpose=ConvTranspose) -> VAE:
  """The convolutional VAE; the defaults are the reference `vae_conv64`."""
  widths = None if channels_list is None else tuple(channels_list)
  return VAE(ConvEncoder(image_size, widths, latent_dim, conv=conv, dtype=dtype),
             ConvDecoder(image_size, widths, channels, conv_transpose=conv_transpose, dtype=dtype))


# ---------------------------------------------------------------- likelihoods and the KL

def _per_example_sum(x):
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def bernoulli_log_likelihood(logits: jax.Array, x01: jax.Array) -> jax.Array:
  """sum_i x_i log sigmoid(l_i) + (1 - x_i) log(1 - sigmoid(l_i)) per example, shape (B,).

  Written x l - softplus(l), finite for any logits. Targets x01 lie in [0, 1]: binary pixels, or
  grey values (then it is the cross-entropy, not a normalised likelihood of the grey values). The
  data sources give [-1, 1]: pass (x + 1) / 2.
  """
  return _per_example_sum(x01 * logits - jax.nn.softplus(logits))


def gaussian_log_likelihood(mean: jax.Array, x: jax.Array, log_scale) -> jax.Array:
  """sum_i log N(x_i; mean_i, exp(log_scale)^2) per example, shape (B,).

  log_scale: a scalar, or one value per channel (C,) broadcast over (B, H, W, C).
  """
  log_scale = jnp.asarray(log_scale, jnp.float32)
  log_scale = log_scale.reshape((1,) * (x.ndim - log_scale.ndim) + log_scale.shape)
  log_scale = jnp.broadcast_to(log_scale, x.shape)
  z = (x - mean) * jnp.exp(-log_scale)
  return _per_example_sum(-0.5 * z * z - log_scale - 0.5 * math.log(2 * math.pi))


def kl_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, diag exp(logvar)) || N(0, I)) per example, shape (B,) (Kingma & Welling, app. B):
  0.5 sum_j (exp(logvar_j) + mean_j^2 - 1 - logvar_j), with expm1 for accuracy near the prior."""
  return 0.5 * jnp.sum(jnp.expm1(logvar) - logvar + mean * mean, axis=-1)


# Names of the likelihood p(x | z), the `likelihood` option of the step and evaluation functions:
#   bernoulli            Bernoulli of the grey values (x + 1) / 2 as targets (cross-entropy).
#   bernoulli_threshold  Bernoulli of the pixels binarised at grey 0.5, fixed.
#   bernoulli_stochastic Bernoulli of pixels drawn ~ Bernoulli(grey), afresh at every step and
#                        evaluation (the dynamic binarisation of Burda et al. 2015).
#   gaussian             Gaussian of the [-1, 1] values with unit scale: the reference's
#                        0.5 * squared error plus its constant. (Another fixed scale s is this
#                        with beta multiplied by s^2, up to a constant.)
#   gaussian_channel     Gaussian with a learned log-scale per colour channel.
#   gaussian_scalar      Gaussian with one learned log-scale.
# A learned scale is the maximum-likelihood noise level, so the reconstruction term and the KL are
# balanced by the data rather than by a guess (Rybkin et al. 2021 show a fixed unit scale gives
# blurry samples); one per channel costs C numbers and lets channels with different noise differ.
LIKELIHOODS = ("bernoulli", "bernoulli_threshold", "bernoulli_stochastic", "gaussian",
               "gaussian_channel", "gaussian_scalar")


def check_likelihood(likelihood: str) -> str:
  if likelihood not in LIKELIHOODS:
    raise ValueError(f"likelihood={likelihood!r}; use one of {', '.join(LIKELIHOODS)}")
  return likelihood


def is_continuous(likelihood: str) -> bool:
  """True for the Gaussian likelihoods: densities on [-1, 1], reported in bits per dimension."""
  return check_likelihood(likelihood).startswith("gaussian")


def likelihood_params(likelihood: str, channels: int) -> dict:
  """The likelihood's own learned parameters: a log-scale for the learned Gaussians, else none."""
  if check_likelihood(likelihood) == "gaussian_channel":
    return {"log_scale": jnp.zeros((channels,), jnp.float32)}
  if likelihood == "gaussian_scalar":
    return {"log_scale": jnp.zeros((), jnp.float32)}
  return {}


def targets(x: jax.Array, key: jax.Array, likelihood: str, axis_name=None) -> jax.Array:
  """What the likelihood scores: [0, 1] targets for the Bernoullis, x itself for the Gaussians."""
  if is_continuous(likelihood):
    return x
  grey = (x + 1.0) * 0.5
  if likelihood == "bernoulli_threshold":
    return (grey > 0.5).astype(x.dtype)
  if likelihood == "bernoulli_stochastic":
    return (draw(jax.random.uniform, key, x.shape, axis_name) < grey).astype(x.dtype)
  return grey


def log_likelihood(output: jax.Array, target: jax.Array, lik_params: dict,
                   likelihood: str) -> jax.Array:
  """log p(x | z) per example, (B,), for the decoder's `output` and `targets(...)`."""
  if not is_continuous(likelihood):
    return bernoulli_log_likelihood(output, target)
  return gaussian_log_likelihood(output, target, lik_params.get("log_scale", 0.0))


def mean_images(output: jax.Array, likelihood: str) -> jax.Array:
  """The mean of p(x | z) in the data's [-1, 1] range, for pictures."""
  if is_continuous(likelihood):
    return jnp.clip(output, -1.0, 1.0)
  return 2.0 * jax.nn.sigmoid(output) - 1.0


# ---------------------------------------------------------------- bits per dimension

def bits_per_dim(nats_per_example, num_dims: int):
  """Bits per dimension of a continuous density on data x = p / 127.5 - 1 (pixels p in 0..255).

      bits/dim = (nats / D + log 127.5) / log 2.

  In pixel units the density is p_x / 127.5 per dimension, so its negative log gains log 127.5
  per dimension. Evaluated on dequantised pixels (p + u, u ~ U[0, 1)) it is an upper bound on the
  discrete bits/dim by Jensen (as for flows); evaluated on the bare grid it is the usual figure but
  not a bound. From a negative ELBO it bounds the bound.
  """
  return (nats_per_example / num_dims + math.log(127.5)) / math.log(2.0)


# ---------------------------------------------------------------- state and step

@struct.dataclass
class VAEState:
  """The whole training state: a plain pytree, checkpointed as it is."""
  step: jax.Array
  params: Any  # {'model': the VAE module's parameters, 'likelihood': likelihood_params(...)}
  opt_state: Any


def optimizer(name: str = "adam", learning_rate: float = 1e-3) -> optax.GradientTransformation:
  """Adam (Kingma & Ba, the reference's) or RMSProp (optax's decay 0.9, eps 1e-8)."""
  if name == "adam":
    return optax.adam(learning_rate)
  if name == "rmsprop":
    return optax.rmsprop(learning_rate)
  raise ValueError(f"optimizer={name!r}; use 'adam' or 'rmsprop'")


def init_state(key: jax.Array, model: VAE, optimizer: optax.GradientTransformation,
               image_shape, likelihood: str = "bernoulli") -> VAEState:
  """Fresh parameters from `key` (and the learned log-scale of a learned Gaussian likelihood);
  the initialisation is one compiled program."""
  x = jnp.zeros((1, *image_shape), jnp.float32)
  params = {"model": jax.jit(model.init)(key, x, jax.random.PRNGKey(0))["params"],
            "likelihood": likelihood_params(likelihood, image_shape[-1])}
  return VAEState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def per_example_terms(params, x: jax.Array, key: jax.Array, *, model: VAE, beta: float,
                      likelihood: str, axis_name=None) -> dict:
  """The ELBO's terms per example, each (B,), in nats:

  recon = -log p(x | z) at one posterior sample, kl = KL(q(z | x) || p(z)),
  neg_elbo = recon + kl (the bound, whatever beta), loss = recon + beta * kl (what is minimised),
  and bits_per_dim of neg_elbo for the Gaussian likelihoods.
  """
  if likelihood in ("gaussian_channel", "gaussian_scalar") and not params["likelihood"]:
    raise ValueError(f"likelihood={likelihood!r} learns a log-scale, but these parameters have "
                     f"none; make the state with init_state(..., likelihood={likelihood!r})")
  k_sample, k_targets = jax.random.split(key)
  output, mean, logvar = model.apply({"params": params["model"]}, x, k_sample, axis_name)
  recon = -log_likelihood(output, targets(x, k_targets, likelihood, axis_name),
                          params["likelihood"], likelihood)
  kl = kl_standard_normal(mean, logvar)
  terms = {"recon": recon, "kl": kl, "neg_elbo": recon + kl, "loss": recon + beta * kl}
  if is_continuous(likelihood):
    terms["bits_per_dim"] = bits_per_dim(terms["neg_elbo"], math.prod(x.shape[1:]))
  return terms


def train_step(state: VAEState, batch: jax.Array, key: jax.Array, *, model: VAE,
               optimizer: optax.GradientTransformation, beta: float = 1.0,
               likelihood: str = "bernoulli", axis_name=None):
  """One update on the batch mean of recon + beta * KL.

  batch: (B, H, W, C) images in [-1, 1] (this device's part of the global batch under pmap).
  key: the run's base key; the step draws from fold_in(key, state.step).
  Returns the new state and batch means of per_example_terms (nats per example).
  """
  check_likelihood(likelihood)
  key = jax.random.fold_in(key, state.step)

  def loss_fn(params):
    terms = per_example_terms(params, batch, key, model=model, beta=beta, likelihood=likelihood,
                              axis_name=axis_name)
    return jnp.mean(terms["loss"]), terms

  grads, terms = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(pmean(grads, axis_name), state.opt_state, state.params)
  metrics = {name: jnp.mean(value) for name, value in terms.items()}
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  return new_state, pmean(metrics, axis_name)


def eval_batch(params, batch: jax.Array, key: jax.Array, *, model: VAE, beta: float = 1.0,
               likelihood: str = "bernoulli") -> dict:
  """per_example_terms on one batch: per-example values (B,), never batch means, so a split's
  figure is the mean over all its examples (drop any padding before averaging)."""
  check_likelihood(likelihood)
  return per_example_terms(params, batch, key, model=model, beta=beta, likelihood=likelihood)


def generate(params, z: jax.Array, *, model: VAE, likelihood: str) -> jax.Array:
  """Mean images of p(x | z) in [-1, 1] for latents z (B, L)."""
  return mean_images(model.apply({"params": params["model"]}, z, method=VAE.decode), likelihood)


def posterior(params, x: jax.Array, *, model: VAE):
  """(mean, logvar) of q(z | x)."""
  return model.apply({"params": params["model"]}, x, method=VAE.encode)


def reconstruct(params, x: jax.Array, *, model: VAE, likelihood: str) -> jax.Array:
  """Mean images of p(x | z) at the posterior mean of each x."""
  return generate(params, posterior(params, x, model=model)[0], model=model, likelihood=likelihood)


# ---------------------------------------------------------------- importance-sampled log-likelihood

def _standard_normal_log_density(eps):
  return -0.5 * jnp.sum(eps * eps, axis=-1) - 0.5 * eps.shape[-1] * math.log(2 * math.pi)


def importance_log_likelihood(params, x: jax.Array, key: jax.Array, *, model: VAE,
                              likelihood: str, num_samples: int = 1000,
                              samples_per_chunk: int = 10) -> jax.Array:
  """log p(x) per example, (B,), estimated with k = num_samples importance samples from q(z | x):

      log p(x) ~= logsumexp_k [log p(x | z_k) + log p(z_k) - log q(z_k | x)] - log k

  (Burda et al. 2015, eq. 8; k >= 100, 5000 in their tables). Its expectation lies between the
  ELBO (k = 1) and log p(x) and rises to log p(x) as k grows. The samples are decoded
  `samples_per_chunk` at a time and folded into a running logsumexp, so memory is that of one
  chunk. Sample k is drawn from fold_in(key, k): the chunking does not change the estimate.
  """
  check_likelihood(likelihood)
  if num_samples < 1 or samples_per_chunk < 1 or num_samples % samples_per_chunk:
    raise ValueError(f"num_samples={num_samples} must be a positive multiple of "
                     f"samples_per_chunk={samples_per_chunk}")
  k_targets, k_eps = jax.random.split(key)
  target = targets(x, k_targets, likelihood)  # one binarisation shared by all k samples
  mean, logvar = posterior(params, x, model=model)
  batch = x.shape[0]
  tiled = jnp.broadcast_to(target[None], (samples_per_chunk, *target.shape))
  tiled = tiled.reshape(samples_per_chunk * batch, *target.shape[1:])

  def add_chunk(running, chunk):
    ids = chunk * samples_per_chunk + jnp.arange(samples_per_chunk)
    eps = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k_eps, i), mean.shape))(ids)
    z = reparameterize(mean[None], logvar[None], eps)  # (chunk, B, L)
    output = model.apply({"params": params["model"]}, z.reshape(-1, z.shape[-1]),
                         method=VAE.decode)
    log_px_z = log_likelihood(output, tiled, params["likelihood"], likelihood)
    # log q from eps itself: (z - mean)^2 / var = eps^2 exactly, whatever the variance.
    log_qz = _standard_normal_log_density(eps) - 0.5 * jnp.sum(logvar, axis=-1)[None]
    log_w = log_px_z.reshape(samples_per_chunk, batch) + _standard_normal_log_density(z) - log_qz
    return jnp.logaddexp(running, jax.nn.logsumexp(log_w, axis=0)), None

  start = jnp.full((batch,), -jnp.inf, jnp.float32)
  total, _ = lax.scan(add_chunk, start, jnp.arange(num_samples // samples_per_chunk))
  return total - math.log(num_samples)
