"""What every GAN in jaxgen shares (training state, initialisation, sampling), and the original
GAN of Goodfellow et al. 2014: its losses and its training step (Algorithm 1).

Value function (eq. 1):  min_G max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))],  D = sigmoid(logit).
Discriminator loss:      binary cross-entropy, real labels y (1, or smoothed), fake labels 0:
                         L_D = -E_x[y log D(x) + (1 - y) log(1 - D(x))] - E_z[log(1 - D(G(z)))].
Generator loss:          'minimax':        E_z[log(1 - D(G(z)))], minimised (eq. 1 itself);
                         'non_saturating': -E_z[log D(G(z))] (section 3: strong gradients early,
                         when D rejects every sample and log(1 - D(G(z))) saturates).
Every log D is `jax.nn.log_sigmoid` of the logit and every log(1 - D) is log_sigmoid(-logit):
finite values and gradients at any logit, where the log of a sigmoid is -inf once it rounds to 0.
"""

import functools
from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxgen.parallel import draw, pmean


@struct.dataclass
class GANState:
  """The whole training state of a GAN: a plain pytree, checkpointed as it is."""
  step: jax.Array  # generator updates done
  g_params: Any
  g_batch_stats: Any  # BatchNorm running averages of the generator ({} when it has none)
  g_opt_state: Any
  d_params: Any  # discriminator or critic
  d_opt_state: Any
  d_batch_stats: Any = struct.field(default_factory=dict)  # the discriminator's ({}: none)


def init_state(key: jax.Array, *, generator: nn.Module, discriminator: nn.Module,
               g_optimizer: optax.GradientTransformation,
               d_optimizer: optax.GradientTransformation, image_shape: Sequence[int]) -> GANState:
  """Fresh parameters (from `key`) and optimizer states for both networks.

  image_shape: one image's (H, W, C); every jaxgen network takes and makes NHWC images (the MLP
  ones flatten inside). The discriminator is initialised through its default (inference) call.
  Each initialisation is one compiled program, not hundreds of operations dispatched one by one.
  """
  k_g, k_d = jax.random.split(key)
  g_vars = jax.jit(functools.partial(generator.init, train=False))(
      k_g, jnp.zeros((1, generator.latent_dim)))
  d_vars = jax.jit(discriminator.init)(k_d, jnp.zeros((1, *image_shape)))
  return GANState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_vars["params"], g_batch_stats=g_vars.get("batch_stats", {}),
      g_opt_state=g_optimizer.init(g_vars["params"]),
      d_params=d_vars["params"], d_opt_state=d_optimizer.init(d_vars["params"]),
      d_batch_stats=d_vars.get("batch_stats", {}))


def generate(generator: nn.Module, state: GANState, z: jax.Array) -> jax.Array:
  """Generator outputs for latents `z`, BatchNorm on its running averages (inference mode)."""
  return generator.apply({"params": state.g_params, "batch_stats": state.g_batch_stats}, z,
                         train=False)


def generate_from_tree(generator: nn.Module, tree: dict, z: jax.Array) -> jax.Array:
  """`generate` from a checkpoint restored as plain dicts (`Checkpoints.restore_tree`): sampling
  needs neither the optimizer nor the state class."""
  return generator.apply({"params": tree["g_params"], "batch_stats": tree["g_batch_stats"]}, z,
                         train=False)


def apply_train(module: nn.Module, params, batch_stats, x):
  """`module` in training mode (BatchNorm on the batch's statistics): (output, new batch_stats)."""
  out, variables = module.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
  return out, variables.get("batch_stats", {})


# ------------------------------------------------------------------ the losses (from logits)
GENERATOR_LOSSES = ("minimax", "non_saturating")


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, real_labels) -> jax.Array:
  """L_D: binary cross-entropy of real (label `real_labels`, a scalar or one per example) and
  fake (label 0) logits, each averaged over its batch; the negated value of eq. (1) at y = 1."""
  real_term = (real_labels * jax.nn.log_sigmoid(real_logits)
               + (1.0 - real_labels) * jax.nn.log_sigmoid(-real_logits))
  return -jnp.mean(real_term) - jnp.mean(jax.nn.log_sigmoid(-fake_logits))


def generator_loss(fake_logits: jax.Array, kind: str = "non_saturating") -> jax.Array:
  """L_G of `kind`: 'minimax' E[log(1 - D(G(z)))] (eq. 1) or 'non_saturating' -E[log D(G(z))]."""
  if kind == "minimax":
    return jnp.mean(jax.nn.log_sigmoid(-fake_logits))
  if kind == "non_saturating":
    return -jnp.mean(jax.nn.log_sigmoid(fake_logits))
  raise ValueError(f"generator loss must be one of {', '.join(GENERATOR_LOSSES)}, got {kind!r}")


RealLabel = Union[float, tuple]


def label_range(real_label: RealLabel) -> tuple:
  """(low, high) of a real-label setting: a fixed value, or a (low, high) range to draw from."""
  try:
    low, high = (real_label, real_label) if isinstance(real_label, (int, float)) else real_label
    valid = 0.0 <= low <= high <= 1.0
  except (TypeError, ValueError):
    valid = False
  if not valid:
    raise ValueError(f"real labels must be a value or a (low, high) range within [0, 1], "
                     f"got {real_label!r}")
  return float(low), float(high)


def real_labels(key: jax.Array, batch: int, real_label: RealLabel, axis_name=None) -> jax.Array:
  """One label per real example: one-sided label smoothing (Salimans et al. 2016, section 3.4).

  A fixed value (1.0 is no smoothing) is that value exactly; a (low, high) range draws each
  label uniformly from [low, high] for the global batch (`jaxgen.parallel.draw`).
  """
  low, high = label_range(real_label)
  if low == high:
    return jnp.full((batch,), low)
  return draw(jax.random.uniform, key, (batch,), axis_name, minval=low, maxval=high)


def _discriminator_metrics(loss, real_logits, fake_logits):
  return {"d_loss": loss,
          "d_accuracy_real": jnp.mean(real_logits > 0),
          "d_accuracy_fake": jnp.mean(fake_logits < 0),
          "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),
          "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits))}


# ------------------------------------------------------------------------ the training step
def train_step(state: GANState, real: jax.Array, key: jax.Array, *, generator: nn.Module,
               discriminator: nn.Module, g_optimizer: optax.GradientTransformation,
               d_optimizer: optax.GradientTransformation, loss: str = "non_saturating",
               real_label: RealLabel = (1.0, 1.0), axis_name=None):
  """One generator update after `real.shape[0]` (= k) discriminator updates (Algorithm 1).

  real: (k, batch, H, W, C) images in [-1, 1], one batch per discriminator update (this
    device's part of the global batch under pmap).
  key: the run's base key; this step draws from fold_in(key, state.step).
  Each discriminator update draws z, makes G(z) (generator in training mode) and takes one
  d_optimizer step on L_D, scoring the real and the fake batch in two calls (two BatchNorm
  batches, as the DCGAN reference does). The generator update then reuses the last
  discriminator update's z and G(z), forward pass included (its gradient is the pullback of
  that pass), scored by the updated discriminator: at k = 1 this is exactly the PyTorch DCGAN
  reference's work (one G forward and backward, D on real, fake and fake again); at k > 1 it is
  one of the k fake batches where Algorithm 1 draws a fresh one (the same distribution).
  BatchNorm running averages move with every call of either network, as PyTorch's do.
  Metrics: discriminator ones averaged over the k updates; g_loss of the generator update;
  combined_loss = d_loss + g_loss.
  """
  k, batch = real.shape[:2]
  if loss not in GENERATOR_LOSSES:
    raise ValueError(f"loss must be one of {', '.join(GENERATOR_LOSSES)}, got {loss!r}")
  key = jax.random.fold_in(key, state.step)

  @jax.jit  # traced once, called k times
  def discriminator_update(d_params, d_opt_state, d_stats, real, fake, labels):
    def loss_fn(d_params):
      real_logits, stats = apply_train(discriminator, d_params, d_stats, real)
      fake_logits, stats = apply_train(discriminator, d_params, stats, fake)
      d_loss = discriminator_loss(real_logits, fake_logits, labels)
      return d_loss, (stats, _discriminator_metrics(d_loss, real_logits, fake_logits))
    grads, (d_stats, metrics) = jax.grad(loss_fn, has_aux=True)(d_params)
    updates, d_opt_state = d_optimizer.update(pmean(grads, axis_name), d_opt_state, d_params)
    return optax.apply_updates(d_params, updates), d_opt_state, d_stats, metrics

  d_params, d_opt_state, d_stats = state.d_params, state.d_opt_state, state.d_batch_stats
  g_stats = state.g_batch_stats
  history = []
  for i in range(k):  # unrolled, as wgan_gp's critic updates
    k_z, k_label = jax.random.split(jax.random.fold_in(key, i))
    z = draw(jax.random.normal, k_z, (batch, generator.latent_dim), axis_name)
    labels = real_labels(k_label, batch, real_label, axis_name)
    # the forward pass with its pullback; only the last one is used (XLA drops the others)
    fake, pullback, g_stats = jax.vjp(lambda p: apply_train(generator, p, g_stats, z),
                                      state.g_params, has_aux=True)
    d_params, d_opt_state, d_stats, metrics = discriminator_update(
        d_params, d_opt_state, d_stats, real[i], fake, labels)
    history.append(metrics)

  def loss_of_fake(fake):
    logits, stats = apply_train(discriminator, d_params, d_stats, fake)
    return generator_loss(logits, loss), stats

  (g_loss, d_stats), fake_grads = jax.value_and_grad(loss_of_fake, has_aux=True)(fake)
  g_grads, = pullback(fake_grads)
  updates, g_opt_state = g_optimizer.update(pmean(g_grads, axis_name), state.g_opt_state,
                                            state.g_params)
  metrics = jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *history)
  metrics["g_loss"] = g_loss
  metrics["combined_loss"] = metrics["d_loss"] + g_loss
  new_state = state.replace(
      step=state.step + 1, g_params=optax.apply_updates(state.g_params, updates),
      g_batch_stats=g_stats, g_opt_state=g_opt_state,
      d_params=d_params, d_opt_state=d_opt_state, d_batch_stats=d_stats)
  return new_state, pmean(metrics, axis_name)
