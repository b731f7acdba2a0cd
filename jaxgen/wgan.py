"""WGAN: Wasserstein GAN with weight clipping (Arjovsky, Chintala & Bottou 2017, Algorithm 1).

Critic loss:      L_D = D(G(z)) - D(x)   (the negated estimate of the Wasserstein-1 distance
                  max_{||D||_L <= K} E[D(x)] - E[D(G(z))], eq. 3, over K-Lipschitz critics);
                  after every critic update every critic parameter is clipped to [-c, c], which
                  keeps D in some K-Lipschitz family.
Generator loss:   L_G = -D(G(z)).
Defaults of the paper: c = 0.01, n_critic = 5, RMSprop(5e-5), batch 64.
The networks are the DCGAN-style ones of `jaxgen.dcgan` (the critic without BatchNorm).

`wasserstein_step` is the loop both Wasserstein GANs share (n_critic critic updates on fresh
fake batches, then one generator update on another); WGAN-GP (`jaxgen.wgan_gp`) runs it with
its penalised loss in place of clipping.
"""

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxgen.gan import GANState, apply_train
from jaxgen.parallel import draw, pmean


def optimizer(learning_rate: float = 5e-5):
  """RMSprop, the paper's choice (momentum-based optimizers made the clipped critic unstable),
  as PyTorch's RMSprop computes it: decay 0.99, g / (sqrt(nu) + 1e-8)."""
  return optax.rmsprop(learning_rate, decay=0.99, eps=1e-8, eps_in_sqrt=False)


def clip_weights(params, clip: float):
  """Every parameter clipped to [-clip, clip] (Algorithm 1, line 7)."""
  return jax.tree.map(lambda w: jnp.clip(w, -clip, clip), params)


def apply_critic(critic: nn.Module, d_params, d_stats, x):
  """(scores, new BatchNorm statistics): a critic with BatchNorm (the paper's DCGAN critic) in
  training mode, one without as it is."""
  if jax.tree.leaves(d_stats):
    return apply_train(critic, d_params, d_stats, x)
  return critic.apply({"params": d_params}, x), d_stats


def critic_loss(d_params, d_stats, real, fake, *, critic: nn.Module):
  """L_D = mean D(G(z)) - mean D(x) on one batch; (loss, (metrics, new BatchNorm statistics))."""
  d_real, d_stats = apply_critic(critic, d_params, d_stats, real)
  d_fake, d_stats = apply_critic(critic, d_params, d_stats, fake)
  wasserstein = jnp.mean(d_real) - jnp.mean(d_fake)
  return -wasserstein, ({"critic_loss": -wasserstein, "wasserstein": wasserstein}, d_stats)


def wasserstein_step(state: GANState, real: jax.Array, key: jax.Array, *, generator: nn.Module,
                     critic: nn.Module, g_optimizer: optax.GradientTransformation,
                     d_optimizer: optax.GradientTransformation, critic_loss: Callable,
                     constrain: Optional[Callable] = None, axis_name=None):
  """One generator update after `real.shape[0]` (= n_critic) critic updates.

  critic_loss(d_params, d_stats, real, fake, key) -> (loss, (metrics, d_stats)): one batch's
    critic loss and the critic's new BatchNorm statistics ({} for a critic without BatchNorm);
    `key` is this update's own for any draws of its own (WGAN-GP's interpolation weights).
  constrain(d_params) -> d_params: applied after every critic update (WGAN's clipping).
  real: (n_critic, batch, H, W, C) images in [-1, 1], one batch per critic update (this device's
    part of the global batch under pmap). key: the run's base key; this step draws from
    fold_in(key, state.step), so a resumed run draws what an uninterrupted one would.
  Every critic update draws a fresh z; the generator update draws another and minimises
  -mean D(G(z)). The generator's BatchNorm running averages move with every generator call.
  Returns the new state and metrics (critic metrics averaged over the critic updates, and
  generator_loss).
  """
  n_critic, batch = real.shape[:2]
  key = jax.random.fold_in(key, state.step)
  latent = (batch, generator.latent_dim)

  @jax.jit  # traced once and called n_critic times: half the tracing time of inlined code
  def critic_update(d_params, d_opt_state, d_stats, g_stats, real, key):
    k_z, k_loss = jax.random.split(key)
    z = draw(jax.random.normal, k_z, latent, axis_name)
    fake, g_stats = apply_train(generator, state.g_params, g_stats, z)
    grads, (metrics, d_stats) = jax.grad(critic_loss, has_aux=True)(
        d_params, d_stats, real, fake, k_loss)
    updates, d_opt_state = d_optimizer.update(pmean(grads, axis_name), d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)
    d_params = d_params if constrain is None else constrain(d_params)
    return d_params, d_opt_state, d_stats, g_stats, metrics

  d_params, d_opt_state, g_stats = state.d_params, state.d_opt_state, state.g_batch_stats
  d_stats = state.d_batch_stats
  history = []
  for i in range(n_critic):  # unrolled: XLA:CPU ran a rolled lax.scan of these ~40x slower
    d_params, d_opt_state, d_stats, g_stats, metrics = critic_update(
        d_params, d_opt_state, d_stats, g_stats, real[i], jax.random.fold_in(key, i))
    history.append(metrics)

  z = draw(jax.random.normal, jax.random.fold_in(key, n_critic), latent, axis_name)

  def generator_loss(g_params):
    fake, stats = apply_train(generator, g_params, g_stats, z)
    scores, new_d_stats = apply_critic(critic, d_params, d_stats, fake)
    return -jnp.mean(scores), (stats, new_d_stats)

  (g_loss, (g_stats, d_stats)), g_grads = jax.value_and_grad(generator_loss, has_aux=True)(
      state.g_params)
  updates, g_opt_state = g_optimizer.update(pmean(g_grads, axis_name), state.g_opt_state,
                                            state.g_params)
  metrics = jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *history)
  metrics["generator_loss"] = g_loss
  new_state = state.replace(
      step=state.step + 1, g_params=optax.apply_updates(state.g_params, updates),
      g_batch_stats=g_stats, g_opt_state=g_opt_state, d_params=d_params, d_opt_state=d_opt_state,
      d_batch_stats=d_stats)
  return new_state, pmean(metrics, axis_name)


def train_step(state: GANState, real: jax.Array, key: jax.Array, *, generator: nn.Module,
               critic: nn.Module, g_optimizer: optax.GradientTransformation,
               d_optimizer: optax.GradientTransformation, clip: float = 0.01, axis_name=None):
  """One WGAN generator update after `real.shape[0]` (= n_critic, the paper's 5) clipped critic
  updates (`wasserstein_step`). Metrics: critic_loss, wasserstein (mean D(x) - mean D(G(z)),
  both averaged over the critic updates), generator_loss, and combined_loss (their sum)."""
  if not clip > 0:
    raise ValueError(f"clip must be positive, got {clip}")
  new_state, metrics = wasserstein_step(
      state, real, key, generator=generator, critic=critic, g_optimizer=g_optimizer,
      d_optimizer=d_optimizer,
      critic_loss=lambda d_params, d_stats, real, fake, _: critic_loss(
          d_params, d_stats, real, fake, critic=critic),
      constrain=lambda d_params: clip_weights(d_params, clip), axis_name=axis_name)
  metrics["combined_loss"] = metrics["critic_loss"] + metrics["generator_loss"]
  return new_state, metrics
