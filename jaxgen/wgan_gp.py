"""WGAN-GP: Wasserstein GAN with gradient penalty (Gulrajani et al. 2017, Algorithm 1).

Critic loss (eq. 3):   L_D = D(G(z)) - D(x) + lambda * (||grad_x_hat D(x_hat)||_2 - 1)^2,
                       x_hat = e * x + (1 - e) * G(z),  e ~ U[0, 1] per example.
Generator loss:        L_G = -D(G(z)).
Defaults of the paper: lambda = 10, n_critic = 5, Adam(1e-4, b1 = 0, b2 = 0.9).
The networks are the DCGAN-style ones of `jaxgen.dcgan`; the critic-then-generator loop is
WGAN's (`jaxgen.wgan.wasserstein_step`), with this loss in place of weight clipping.
"""

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

from jaxgen.gan import GANState
from jaxgen.parallel import draw
from jaxgen.wgan import wasserstein_step


def optimizer(learning_rate: float = 1e-4, b1: float = 0.0, b2: float = 0.9):
  return optax.adam(learning_rate, b1=b1, b2=b2)


def safe_norm(x: jax.Array, axis) -> jax.Array:
  """Euclidean norm whose gradient is finite (zero) where x is zero."""
  sq = jnp.sum(x * x, axis=axis)
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def gradient_penalty(critic_fn, x_hat: jax.Array):
  """Mean over the batch of (||grad_x D(x_hat)||_2 - 1)^2, and the per-example norms.

  The gradient comes from `jax.grad` of the summed scores (examples are independent, so each
  example's gradient is its own); the norm runs over all non-batch axes.
  """
  grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(x_hat)
  norms = safe_norm(grads.reshape(grads.shape[0], -1), axis=1)
  return jnp.mean((norms - 1.0) ** 2), norms


def critic_loss(d_params, real, fake, eps, *, critic: nn.Module, gp_weight: float):
  """L_D of eq. (3) on one batch, with the metrics it logs."""
  critic_fn = lambda x: critic.apply({"params": d_params}, x)
  # Three critic calls of one batch shape (real, fake, x_hat): XLA compiles one set of kernels
  # for them, about 1 s less compile at 64x64 than real and fake concatenated, at the same speed.
  d_real, d_fake = critic_fn(real), critic_fn(fake)
  x_hat = eps * real + (1.0 - eps) * fake
  penalty, norms = gradient_penalty(critic_fn, x_hat)
  wasserstein = jnp.mean(d_real) - jnp.mean(d_fake)
  loss = -wasserstein + gp_weight * penalty
  return loss, {"critic_loss": loss, "gradient_penalty": penalty, "wasserstein": wasserstein,
                "grad_norm": jnp.mean(norms)}


def train_step(state: GANState, real: jax.Array, key: jax.Array, *, generator: nn.Module,
               critic: nn.Module, optimizer: optax.GradientTransformation,
               gp_weight: float = 10.0, axis_name=None):
  """One generator update: `real.shape[0]` (= n_critic) critic updates, then one generator update.

  WGAN's loop (`jaxgen.wgan.wasserstein_step`) with the penalised critic loss and no clipping;
  `optimizer` (Adam) updates both networks.
  real: (n_critic, batch, H, W, C) images in [-1, 1], one batch per critic update (this device's
    part of the global batch when run under pmap).
  key: the run's base key; this step draws from fold_in(key, state.step), so a resumed run
    draws what an uninterrupted one would.
  Returns the new state and metrics (critic metrics averaged over the critic updates).
  """
  if jax.tree.leaves(state.d_batch_stats):
    raise ValueError("WGAN-GP takes a critic without BatchNorm (its penalty is per example): "
                     "use jaxgen.dcgan.Critic, not the Discriminator")

  def penalised_loss(d_params, d_stats, real, fake, key):
    eps = draw(jax.random.uniform, key, (real.shape[0], 1, 1, 1), axis_name)
    loss, metrics = critic_loss(d_params, real, fake, eps, critic=critic, gp_weight=gp_weight)
    return loss, (metrics, d_stats)

  return wasserstein_step(state, real, key, generator=generator, critic=critic,
                          g_optimizer=optimizer, d_optimizer=optimizer,
                          critic_loss=penalised_loss, axis_name=axis_name)
