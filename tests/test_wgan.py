"""WGAN with weight clipping: the loss against its closed form, the clipping bound, RMSprop as
PyTorch computes it, the step (traces, metrics, 1 vs 2 devices) and its errors."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import dcgan, gan, parallel, wgan

SIZE, CHANNELS, LATENT, WIDTH, N_CRITIC, BATCH, CLIP = 8, 1, 4, 4, 3, 4, 0.01


class LinearCritic(nn.Module):
  """D(x) = <a, x> + b: a critic whose loss has a closed form."""

  @nn.compact
  def __call__(self, x):
    a = self.param("a", nn.initializers.normal(1.0), x.shape[1:])
    b = self.param("b", nn.initializers.normal(1.0), ())
    return jnp.sum(x * a[None], axis=(1, 2, 3)) + b


def test_critic_loss_is_its_closed_form():
  real = jax.random.normal(jax.random.PRNGKey(0), (5, 3, 3, 2))
  fake = jax.random.normal(jax.random.PRNGKey(1), (5, 3, 3, 2)) + 0.5
  critic = LinearCritic()
  params = critic.init(jax.random.PRNGKey(2), real)["params"]
  loss, (metrics, stats) = wgan.critic_loss(params, {}, real, fake, critic=critic)
  assert stats == {}
  # mean D(fake) - mean D(real) = <a, mean fake - mean real>: the bias cancels
  a = np.asarray(params["a"], np.float64)
  mean_gap = np.asarray(fake, np.float64).mean(0) - np.asarray(real, np.float64).mean(0)
  expected = np.sum(a * mean_gap)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["wasserstein"], -expected, rtol=1e-5)
  grads = jax.grad(lambda p: wgan.critic_loss(p, {}, real, fake, critic=critic)[0])(params)
  np.testing.assert_allclose(grads["a"], np.mean(fake, 0) - np.mean(real, 0), rtol=1e-5,
                             atol=1e-6)
  assert float(grads["b"]) == 0.0


def test_clip_weights_bounds_every_parameter_and_keeps_the_rest():
  params = {"k": jnp.array([-0.5, -0.01, 0.003, 0.02]), "inner": {"b": jnp.array(0.2)}}
  clipped = wgan.clip_weights(params, CLIP)
  np.testing.assert_array_equal(clipped["k"], np.float32([-0.01, -0.01, 0.003, 0.01]))
  assert float(clipped["inner"]["b"]) == np.float32(0.01)


def test_rmsprop_is_pytorchs():
  # First step from nu = 0: nu = 0.01 g^2, update = -lr g / (sqrt(nu) + 1e-8) = -10 lr sign(g).
  grads = {"w": jnp.array([3.0, -0.02, 1e-3])}
  params = {"w": jnp.zeros(3)}
  optimizer = wgan.optimizer(5e-5)
  updates, state = optimizer.update(grads, optimizer.init(params), params)
  g = np.asarray(grads["w"], np.float64)
  np.testing.assert_allclose(updates["w"], -5e-5 * g / (np.sqrt(0.01 * g * g) + 1e-8), rtol=1e-5)
  updates, _ = optimizer.update(grads, state, params)
  nu = 0.99 * 0.01 * g * g + 0.01 * g * g
  np.testing.assert_allclose(updates["w"], -5e-5 * g / (np.sqrt(nu) + 1e-8), rtol=1e-5)


def _setup(seed=0, axis_name=None, learning_rate=5e-5):
  generator = dcgan.Generator(SIZE, CHANNELS, WIDTH, LATENT, axis_name=axis_name)
  critic = dcgan.Critic(SIZE, WIDTH)
  optimizer = wgan.optimizer(learning_rate)
  state = gan.init_state(jax.random.PRNGKey(seed), generator=generator, discriminator=critic,
                         g_optimizer=optimizer, d_optimizer=optimizer,
                         image_shape=(SIZE, SIZE, CHANNELS))
  step = functools.partial(wgan.train_step, generator=generator, critic=critic,
                           g_optimizer=optimizer, d_optimizer=optimizer, clip=CLIP,
                           axis_name=axis_name)
  return state, step


def _real(steps=3):
  return jax.random.uniform(jax.random.PRNGKey(100), (steps, N_CRITIC, BATCH, SIZE, SIZE,
                                                      CHANNELS), minval=-1, maxval=1)


def test_step_traces_once_clips_after_every_step_and_logs_its_losses():
  state, step_fn = _setup()
  # N(0, 0.02) initial kernels: many start outside [-c, c], so the first update must clip them
  assert max(float(jnp.abs(w).max()) for w in jax.tree.leaves(state.d_params)) > 2 * CLIP
  # chex counts traces of a plain function, keyed by its name, source and call stack: a name of
  # its own, so that another test's counter is not this one's
  def wgan_step(state, real, key):
    return step_fn(state, real, key)
  step = jax.jit(chex.assert_max_traces(wgan_step, n=1))
  real = _real()
  for i in range(3):
    new_state, metrics = step(state, real[i], jax.random.PRNGKey(0))
    leaves = jax.tree.leaves(new_state.d_params)
    assert all(float(jnp.abs(w).max()) <= CLIP for w in leaves), i
    assert any(float(jnp.abs(w).max()) == np.float32(CLIP) for w in leaves)  # the bound binds
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.g_params),
                                                         jax.tree.leaves(new_state.g_params)))
    state = new_state
  assert int(state.step) == 3 and state.d_batch_stats == {}
  assert set(metrics) == {"critic_loss", "generator_loss", "wasserstein", "combined_loss"}
  chex.assert_tree_all_finite(metrics)
  np.testing.assert_allclose(metrics["wasserstein"], -metrics["critic_loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics["combined_loss"],
                             metrics["critic_loss"] + metrics["generator_loss"], rtol=1e-6)


def test_clipping_runs_after_every_critic_update_not_once_per_step():
  # With a large learning rate every critic update moves weights past the bound; each of the
  # n_critic updates then starts from clipped weights. Compare against the loop by hand.
  state, step = _setup(learning_rate=1e-2)
  real = _real(steps=1)[0]
  key = jax.random.PRNGKey(5)
  new_state, metrics = jax.jit(step)(state, real, key)
  generator, critic, optimizer = dcgan.Generator(SIZE, CHANNELS, WIDTH, LATENT), \
      dcgan.Critic(SIZE, WIDTH), wgan.optimizer(1e-2)

  @jax.jit
  def by_hand(state, real):
    step_key = jax.random.fold_in(key, 0)
    d_params, d_opt, g_stats, losses = state.d_params, state.d_opt_state, state.g_batch_stats, []
    for i in range(N_CRITIC):
      z = jax.random.normal(jax.random.split(jax.random.fold_in(step_key, i))[0], (BATCH, LATENT))
      fake, g_vars = generator.apply({"params": state.g_params, "batch_stats": g_stats}, z,
                                     train=True, mutable=["batch_stats"])
      g_stats = g_vars["batch_stats"]
      def loss(p):
        return (jnp.mean(critic.apply({"params": p}, fake))
                - jnp.mean(critic.apply({"params": p}, real[i])))
      value, grads = jax.value_and_grad(loss)(d_params)
      updates, d_opt = optimizer.update(grads, d_opt, d_params)
      d_params = jax.tree.map(lambda w, u: jnp.clip(w + u, -CLIP, CLIP), d_params, updates)
      losses.append(value)
    return d_params, jnp.mean(jnp.stack(losses))

  d_params, critic_loss = by_hand(state, real)
  chex.assert_trees_all_close(new_state.d_params, d_params, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["critic_loss"], critic_loss, rtol=1e-4, atol=1e-7)


def test_two_devices_equal_one_device():
  devices = jax.local_devices()
  assert len(devices) == 2, "conftest emulates 2 CPU devices"
  real = _real()
  key = jax.random.PRNGKey(7)
  results = []
  for n in (1, 2):
    state, step = _setup(axis_name=parallel.AXIS, learning_rate=1e-3)
    step = jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None), devices=devices[:n])
    replicated = parallel.replicate(state, devices[:n])
    for i in range(2):
      batch = parallel.shard(np.asarray(real[i]), n, axis=1)
      replicated, metrics = step(replicated, batch, key)
    results.append((parallel.unreplicate(replicated), parallel.unreplicate(metrics)))
  (one, m1), (two, m2) = results
  chex.assert_trees_all_close(one, two, rtol=2e-4, atol=2e-5)
  chex.assert_trees_all_close(m1, m2, rtol=2e-4, atol=2e-5)


def test_bad_settings_are_clear_errors():
  state, step = _setup()
  with pytest.raises(ValueError, match="clip must be positive"):
    step(state, _real()[0], jax.random.PRNGKey(0), clip=0.0)
  generator = dcgan.Generator(16, 1, 4, LATENT)
  discriminator = dcgan.Discriminator(16, 4)  # has BatchNorm
  optimizer = wgan.optimizer()
  state = gan.init_state(jax.random.PRNGKey(0), generator=generator, discriminator=discriminator,
                         g_optimizer=optimizer, d_optimizer=optimizer, image_shape=(16, 16, 1))
  from jaxgen import wgan_gp
  with pytest.raises(ValueError, match="WGAN-GP takes a critic without BatchNorm"):
    wgan_gp.train_step(state, jnp.zeros((1, 2, 16, 16, 1)), jax.random.PRNGKey(0),
                       generator=generator, critic=discriminator, optimizer=optimizer)


def test_a_critic_with_batchnorm_as_in_the_paper():
  """WGAN's critic may normalise (the paper's DCGAN critic did): its running statistics move
  with the critic's calls, and clipping still bounds every parameter."""
  generator = dcgan.Generator(16, 1, 4, LATENT)
  critic = dcgan.Discriminator(16, 4)
  optimizer = wgan.optimizer()
  state = gan.init_state(jax.random.PRNGKey(0), generator=generator, discriminator=critic,
                         g_optimizer=optimizer, d_optimizer=optimizer, image_shape=(16, 16, 1))
  real = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 16, 16, 1), minval=-1.0, maxval=1.0)
  new, metrics = jax.jit(lambda s, r, k: wgan.train_step(
      s, r, k, generator=generator, critic=critic, g_optimizer=optimizer, d_optimizer=optimizer,
      clip=0.01))(state, real, jax.random.PRNGKey(2))
  chex.assert_tree_all_finite((new, metrics))
  before = jax.tree.leaves(state.d_batch_stats)
  after = jax.tree.leaves(new.d_batch_stats)
  assert before and all(not np.array_equal(a, b) for a, b in zip(before, after))
  assert max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(new.d_params)) <= 0.01
