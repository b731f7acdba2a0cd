"""What every GAN in jaxgen shares: its training state, its initialisation and its sampling."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class GANState:
  """The whole training state of a GAN: a plain pytree, checkpointed as it is."""
  step: jax.Array  # generator updates done
  g_params: Any
  g_batch_stats: Any  # BatchNorm running averages of the generator ({} when it has none)
  g_opt_state: Any
  d_params: Any  # discriminator or critic
  d_opt_state: Any


def init_state(key: jax.Array, *, generator: nn.Module, discriminator: nn.Module,
               optimizer: optax.GradientTransformation, image_shape) -> GANState:
  """Fresh parameters (from `key`) and optimizer states for both networks."""
  k_g, k_d = jax.random.split(key)
  g_vars = generator.init(k_g, jnp.zeros((1, generator.latent_dim)), train=False)
  d_vars = discriminator.init(k_d, jnp.zeros((1, *image_shape)))
  return GANState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_vars["params"], g_batch_stats=g_vars.get("batch_stats", {}),
      g_opt_state=optimizer.init(g_vars["params"]),
      d_params=d_vars["params"], d_opt_state=optimizer.init(d_vars["params"]))


def generate(generator: nn.Module, state: GANState, z: jax.Array) -> jax.Array:
  """Generator outputs for latents `z`, BatchNorm on its running averages (inference mode)."""
  return generator.apply({"params": state.g_params, "batch_stats": state.g_batch_stats}, z,
                         train=False)


def generate_from_tree(generator: nn.Module, tree: dict, z: jax.Array) -> jax.Array:
  """`generate` from a checkpoint restored as plain dicts (`Checkpoints.restore_tree`): sampling
  needs neither the optimizer nor the state class."""
  return generator.apply({"params": tree["g_params"], "batch_stats": tree["g_batch_stats"]}, z,
                         train=False)
