"""WGAN-GP: network shapes, the penalty against closed forms, and the training step."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import dcgan, gan, parallel, wgan_gp


def _kernel_shapes(params):
  return [v["kernel"].shape for _, v in sorted(params.items(), key=lambda kv: int(kv[0].split("_")[-1]))
          if "kernel" in v]


def test_dcgan64_layers_are_the_paper_ones():
  g = dcgan.Generator(64, 3, 64, 100)
  d = dcgan.Critic(64, 64)
  g_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), jnp.zeros((2, 100)), train=False))
  d_vars = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), jnp.zeros((2, 64, 64, 3))))
  # ConvTranspose kernels are stored (k, k, out, in); Conv kernels (k, k, in, out).
  assert _kernel_shapes(g_vars["params"]) == [
      (4, 4, 512, 100), (4, 4, 256, 512), (4, 4, 128, 256), (4, 4, 64, 128), (4, 4, 3, 64)]
  assert _kernel_shapes(d_vars["params"]) == [
      (4, 4, 3, 64), (4, 4, 64, 128), (4, 4, 128, 256), (4, 4, 256, 512), (4, 4, 512, 1)]
  assert "bias" not in g_vars["params"]["ConvTranspose_0"]
  assert len(g_vars["batch_stats"]) == 4


@pytest.mark.parametrize("size, channels", [(8, 1), (16, 3), (32, 1)])
def test_module_shapes(size, channels):
  g = dcgan.Generator(size, channels, 4, 6)
  d = dcgan.Critic(size, 4)
  z = jnp.ones((3, 6))
  g_vars = g.init(jax.random.PRNGKey(0), z, train=False)
  images = g.apply(g_vars, z, train=False)
  chex.assert_shape(images, (3, size, size, channels))
  assert float(jnp.abs(images).max()) <= 1.0
  d_vars = d.init(jax.random.PRNGKey(1), images)
  chex.assert_shape(d.apply(d_vars, images), (3,))


def test_blob_variants_of_the_networks_have_the_expected_layers():
  g = dcgan.Generator(32, 1, 8, 6, upsampling="resize", coordinates=True)
  d = dcgan.Critic(32, 8, hidden=16)
  g_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), jnp.zeros((2, 6)), train=False))
  d_vars = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 1))))
  # Resize layers are 3x3 Convs (k, k, in, out), each reading two coordinate channels more.
  assert _kernel_shapes(g_vars["params"]) == [
      (4, 4, 32, 6), (3, 3, 34, 16), (3, 3, 18, 8), (3, 3, 10, 1)]
  assert _kernel_shapes({k: v for k, v in d_vars["params"].items() if k != "Dense_0"}) == [
      (4, 4, 1, 8), (4, 4, 8, 16), (4, 4, 16, 32), (4, 4, 32, 16)]
  assert d_vars["params"]["Dense_0"]["kernel"].shape == (16, 1)


def test_the_mapping_mlp_feeds_dcgans_generator():
  """A generator with a mapping MLP is DCGAN's generator (of latent size W) applied to
  leaky_relu(W2 leaky_relu(W1 z + b1) + b2): two computations that must agree."""
  g = dcgan.Generator(16, 1, 4, 6, mapping_layers=2, mapping_width=10)
  z = jax.random.normal(jax.random.PRNGKey(2), (5, 6))
  variables = g.init(jax.random.PRNGKey(0), z, train=False)
  params = variables["params"]
  assert params["Mapping_0"]["kernel"].shape == (6, 10)
  assert params["Mapping_1"]["kernel"].shape == (10, 10)
  assert params["ConvTranspose_0"]["kernel"].shape[-1] == 10  # (k, k, out, in)
  h = z
  for j in range(2):
    layer = params[f"Mapping_{j}"]
    h = h @ layer["kernel"] + layer["bias"][None]
    h = jnp.where(h > 0, h, 0.2 * h)
  plain = dcgan.Generator(16, 1, 4, 10)
  rest = {k: v for k, v in params.items() if not k.startswith("Mapping")}
  expected = plain.apply({"params": rest, "batch_stats": variables["batch_stats"]}, h,
                         train=False)
  np.testing.assert_allclose(g.apply(variables, z, train=False), expected, atol=1e-6)
  plain_params = dcgan.Generator(16, 1, 4, 6).init(jax.random.PRNGKey(0), z, train=False)["params"]
  assert not any(k.startswith("Mapping") for k in plain_params)


def test_an_instance_normalised_generator_ignores_the_latent_scale_and_the_batch():
  """With instance normalisation and no mapping (a bias-free first layer), G(c z) = G(z) for any
  c > 0: an image cannot be drawn fainter by scaling its activations down. BatchNorm's running
  averages (the control) do not cancel the scale. Nor does an image depend on its batch."""
  z = jax.random.normal(jax.random.PRNGKey(3), (4, 6))
  g = dcgan.Generator(16, 1, 4, 6, norm="instance")
  variables = g.init(jax.random.PRNGKey(0), z, train=False)
  assert "batch_stats" not in variables  # nothing to average over training
  # Kernels of order 1, not DCGAN's 0.02, so that epsilon is negligible beside the variances.
  variables = jax.tree.map(lambda p: p * 40.0 if p.ndim == 4 else p, variables)
  images = g.apply(variables, z, train=False)
  np.testing.assert_allclose(g.apply(variables, 3.0 * z, train=False), images, atol=1e-5)
  np.testing.assert_allclose(g.apply(variables, z[:1], train=True), images[:1], atol=1e-6)
  control = dcgan.Generator(16, 1, 4, 6)
  c_vars = jax.tree.map(lambda p: p * 40.0 if p.ndim == 4 else p,
                        control.init(jax.random.PRNGKey(0), z, train=False))
  c_images = control.apply(c_vars, z, train=False)
  assert float(jnp.abs(control.apply(c_vars, 3.0 * z, train=False) - c_images).max()) > 1e-2
  with pytest.raises(ValueError, match="norm must be one of batch, instance, got 'layer'"):
    dcgan.Generator(16, 1, 4, 6, norm="layer").init(jax.random.PRNGKey(0), z, train=False)


def test_a_uniform_latent_is_the_normal_generator_on_the_normal_cdf():
  """latent="uniform" feeds the network 2 Phi(z) - 1: the same network applied to that input
  (Phi from jax.scipy.stats, not the module's erf), and U(-1, 1) coordinates by their quantiles
  and variance (1/3)."""
  z = jax.random.normal(jax.random.PRNGKey(4), (5, 6))
  g = dcgan.Generator(16, 1, 4, 6, latent="uniform", mapping_layers=1, mapping_width=8)
  variables = g.init(jax.random.PRNGKey(0), z, train=False)
  normal = dcgan.Generator(16, 1, 4, 6, mapping_layers=1, mapping_width=8)
  u = 2.0 * jax.scipy.stats.norm.cdf(z) - 1.0
  np.testing.assert_allclose(g.apply(variables, z, train=False),
                             normal.apply(variables, u, train=False), atol=1e-6)
  assert float(jnp.abs(g.apply(variables, z, train=False) -
                       normal.apply(variables, z, train=False)).max()) > 1e-4  # it does change
  draws = np.asarray(2.0 * jax.scipy.stats.norm.cdf(
      jax.random.normal(jax.random.PRNGKey(5), (200_000,))) - 1.0)
  np.testing.assert_allclose(np.quantile(draws, [0.1, 0.25, 0.5, 0.75, 0.9]),
                             [-0.8, -0.5, 0.0, 0.5, 0.8], atol=0.01)
  assert abs(draws.var() - 1.0 / 3.0) < 0.005 and np.abs(draws).max() < 1.0
  with pytest.raises(ValueError, match="latent must be one of normal, uniform, got 'cauchy'"):
    dcgan.Generator(16, 1, 4, 6, latent="cauchy").init(jax.random.PRNGKey(0), z, train=False)


def test_coordinates_are_the_pixel_centres():
  x = dcgan.with_coordinates(jnp.zeros((2, 4, 2, 3)))
  chex.assert_shape(x, (2, 4, 2, 5))
  np.testing.assert_allclose(x[1, :, 0, 3], [-0.75, -0.25, 0.25, 0.75])  # rows
  np.testing.assert_allclose(x[0, 2, :, 4], [-0.5, 0.5])  # columns


def _far_apart_blobs(size=32):
  """Images (empty, blob at A, blob at B, blobs at A and B) in [-1, 1], A and B in opposite
  corners, farther apart than the 22-pixel receptive field of a cell of the critic's 4x4 map."""
  x = -np.ones((4, size, size, 1), np.float32)
  spot = np.array([[0.5, 1.0, 0.5], [1.0, 2.0, 1.0], [0.5, 1.0, 0.5]], np.float32)
  for i, (r, c) in [(1, (1, 1)), (2, (size - 4, size - 4)), (3, (1, 1)), (3, (size - 4, size - 4))]:
    x[i, r:r + 3, c:c + 3, 0] += spot
  return jnp.asarray(x)


def test_a_linear_head_adds_up_the_cells_and_a_hidden_head_does_not():
  """Two far-apart blobs plus an empty image score exactly what two one-blob images score under
  DCGAN's linear head, whatever its weights: it cannot count. The hidden head can."""
  x = _far_apart_blobs()
  for hidden in (0, 32):
    critic = dcgan.Critic(32, 8, hidden=hidden)
    params = critic.init(jax.random.PRNGKey(hidden), x)
    params = jax.tree.map(lambda p: p * 40.0, params)  # weights of order 1, not DCGAN's 0.02
    empty, a, b, both = np.asarray(critic.apply(params, x), np.float64)
    gap = abs((both + empty) - (a + b))
    if hidden:
      assert gap > 1e-2 * max(abs(a - empty), abs(b - empty))
    else:
      assert abs(a - empty) > 1e-2 and gap < 1e-4 * max(abs(a - empty), abs(b - empty))  # float32


def test_a_global_view_critic_sees_far_apart_blobs_together():
  """With one more stride-2 layer each of the 2x2 cells sees the whole 32x32 image, so even the
  linear head does not add up far-apart blobs: two of them plus an empty image score differently
  from two one-blob images."""
  x = _far_apart_blobs()
  critic = dcgan.Critic(32, 8, global_view=True)
  params = critic.init(jax.random.PRNGKey(0), x)
  shapes = {k: v["kernel"].shape for k, v in params["params"].items()}
  assert shapes["Conv_3"] == (4, 4, 32, 64) and shapes["Conv_4"] == (2, 2, 64, 1)
  params = jax.tree.map(lambda p: p * 40.0, params)
  empty, a, b, both = np.asarray(critic.apply(params, x), np.float64)
  assert abs((both + empty) - (a + b)) > 1e-2 * max(abs(a - empty), abs(b - empty))


def test_bad_image_size_is_a_clear_error():
  with pytest.raises(ValueError, match="power of two"):
    dcgan.num_upsamplings(48)


def test_penalty_of_a_linear_critic_is_its_closed_form():
  # D(x) = <a, x> + b has gradient a everywhere: penalty (||a|| - 1)^2 for every x_hat.
  a = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 2))
  x_hat = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 4, 2))
  critic_fn = lambda x: jnp.sum(x * a[None], axis=(1, 2, 3)) + 3.0
  penalty, norms = wgan_gp.gradient_penalty(critic_fn, x_hat)
  norm_a = float(jnp.sqrt(jnp.sum(a ** 2)))
  np.testing.assert_allclose(norms, norm_a, rtol=1e-6)
  np.testing.assert_allclose(penalty, (norm_a - 1.0) ** 2, rtol=1e-5)


def test_penalty_is_per_example():
  # D(x) = ||x||^2 / 2 has gradient x: each example's own norm enters the mean.
  x_hat = jax.random.normal(jax.random.PRNGKey(2), (6, 3, 3, 1))
  penalty, norms = wgan_gp.gradient_penalty(lambda x: 0.5 * jnp.sum(x ** 2, axis=(1, 2, 3)),
                                            x_hat)
  expected = np.linalg.norm(np.asarray(x_hat).reshape(6, -1), axis=1)
  np.testing.assert_allclose(norms, expected, rtol=1e-6)
  np.testing.assert_allclose(penalty, np.mean((expected - 1) ** 2), rtol=1e-5)


def test_penalty_gradient_is_finite_where_the_input_gradient_is_zero():
  x_hat = jnp.ones((2, 4, 4, 1))
  def penalty_of(scale, norm):
    critic_fn = lambda x: scale * jnp.sum(x, axis=(1, 2, 3))
    grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(x_hat)
    return jnp.mean((norm(grads.reshape(2, -1)) - 1.0) ** 2)
  safe = jax.grad(penalty_of)(0.0, lambda g: wgan_gp.safe_norm(g, axis=1))
  naive = jax.grad(penalty_of)(0.0, lambda g: jnp.linalg.norm(g, axis=1))
  assert np.isfinite(safe) and safe == 0.0
  assert np.isnan(naive)  # what the safe norm exists to avoid
  # Away from zero the safe norm is the norm, and so is its gradient.
  g = jnp.array([[3.0, 4.0]])
  np.testing.assert_allclose(wgan_gp.safe_norm(g, axis=1), [5.0])
  np.testing.assert_allclose(jax.grad(lambda g: wgan_gp.safe_norm(g, axis=1)[0])(g),
                             [[0.6, 0.8]], rtol=1e-6)


SIZE, CHANNELS, LATENT, WIDTH, N_CRITIC, BATCH = 8, 1, 4, 4, 2, 4


def _setup(seed=0, axis_name=None):
  generator = dcgan.Generator(SIZE, CHANNELS, WIDTH, LATENT, axis_name=axis_name)
  critic = dcgan.Critic(SIZE, WIDTH)
  optimizer = wgan_gp.optimizer(1e-3)
  state = gan.init_state(jax.random.PRNGKey(seed), generator=generator, discriminator=critic,
                         g_optimizer=optimizer, d_optimizer=optimizer,
                         image_shape=(SIZE, SIZE, CHANNELS))
  step = functools.partial(wgan_gp.train_step, generator=generator, critic=critic,
                           optimizer=optimizer, gp_weight=10.0, axis_name=axis_name)
  return state, step


def _real(seed=0):
  return jax.random.uniform(jax.random.PRNGKey(100 + seed), (3, N_CRITIC, BATCH, SIZE, SIZE,
                                                             CHANNELS), minval=-1, maxval=1)


def _train(seed, steps=3):
  state, step = _setup(seed)
  step = jax.jit(step)
  real = _real()
  for i in range(steps):
    state, metrics = step(state, real[i], jax.random.PRNGKey(seed))
  return state, metrics


def test_step_traces_once_and_updates_everything():
  state, step_fn = _setup()
  def traced(state, real, key):  # chex counts traces of a plain function
    return step_fn(state, real, key)
  step = jax.jit(chex.assert_max_traces(traced, n=1), donate_argnums=0)
  real = _real()
  before = jax.tree.map(np.array, state)
  for i in range(3):
    state, metrics = step(state, real[i], jax.random.PRNGKey(0))
  assert int(state.step) == 3
  for name in ("g_params", "d_params", "g_batch_stats"):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), getattr(before, name),
                           getattr(state, name))
    if name == "d_params":
      # D(fake) - D(real) and the penalty are blind to a constant added to the critic, so the
      # output bias gets an exactly zero gradient and never moves; everything else trains.
      assert not changed["Conv_1"].pop("bias")
    assert all(jax.tree.leaves(changed)), name
  assert set(metrics) == {"critic_loss", "generator_loss", "gradient_penalty", "wasserstein",
                          "grad_norm"}
  chex.assert_tree_all_finite(metrics)
  # The logged critic loss is the loss's own definition.
  np.testing.assert_allclose(metrics["critic_loss"],
                             -metrics["wasserstein"] + 10.0 * metrics["gradient_penalty"],
                             rtol=1e-5, atol=1e-6)


def test_same_seed_same_parameters_other_seed_not():
  a, _ = _train(0)
  b, _ = _train(0)
  c, _ = _train(1)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a.g_params["ConvTranspose_0"]["kernel"],
                            c.g_params["ConvTranspose_0"]["kernel"])


def test_two_devices_equal_one_device():
  devices = jax.local_devices()
  assert len(devices) == 2, "conftest emulates 2 CPU devices"
  real = _real()
  key = jax.random.PRNGKey(7)
  results = []
  for n in (1, 2):
    state, step = _setup(axis_name=parallel.AXIS)
    step = jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None), devices=devices[:n])
    replicated = parallel.replicate(state, devices[:n])
    for i in range(2):
      batch = parallel.shard(np.asarray(real[i]), n, axis=1)
      replicated, metrics = step(replicated, batch, key)
    results.append((parallel.unreplicate(replicated), parallel.unreplicate(metrics)))
  (one, m1), (two, m2) = results
  chex.assert_trees_all_close(one, two, rtol=2e-4, atol=2e-5)
  chex.assert_trees_all_close(m1, m2, rtol=2e-4, atol=2e-5)
  # Both devices of the 2-device run hold the same state (gradients were averaged).
  assert np.array_equal(replicated.d_params["Conv_0"]["kernel"][0],
                        replicated.d_params["Conv_0"]["kernel"][1])


def test_one_device_pmap_equals_plain_jit():
  state, step = _setup(axis_name=parallel.AXIS)
  plain_state, plain_step = _setup()
  real = _real()
  key = jax.random.PRNGKey(3)
  device = jax.local_devices()[:1]
  replicated = parallel.replicate(state, device)
  replicated, _ = jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None),
                           devices=device)(replicated, real[0][None], key)
  plain_state, _ = jax.jit(plain_step)(plain_state, real[0], key)
  chex.assert_trees_all_close(parallel.unreplicate(replicated), plain_state, rtol=1e-5,
                              atol=1e-6)


def test_batch_that_does_not_split_is_a_clear_error():
  with pytest.raises(ValueError, match="multiple of 2"):
    parallel.check_split(63, 2)
  with pytest.raises(ValueError, match="num_devices=5"):
    parallel.select_devices(5)


def test_bfloat16_networks_track_float32_and_keep_float32_state():
  """Mixed precision: bf16 computation, float32 parameters, optimizer state, losses, penalty."""
  size, latent, width, batch = 16, 8, 8, 8
  nets = {dt: (dcgan.Generator(size, 1, width, latent, dtype=dt), dcgan.Critic(size, width, dtype=dt))
          for dt in (None, jnp.bfloat16)}
  optimizer = wgan_gp.optimizer(1e-3)
  state = gan.init_state(jax.random.PRNGKey(0), generator=nets[None][0],
                         discriminator=nets[None][1], g_optimizer=optimizer,
                         d_optimizer=optimizer, image_shape=(size, size, 1))
  real = jax.random.uniform(jax.random.PRNGKey(1), (2, batch, size, size, 1), minval=-1, maxval=1)
  z = jax.random.normal(jax.random.PRNGKey(2), (batch, latent))
  eps = jax.random.uniform(jax.random.PRNGKey(3), (batch, 1, 1, 1))
  g_vars = {"params": state.g_params, "batch_stats": state.g_batch_stats}
  out = {}
  for dt, (generator, critic) in nets.items():
    fake = generator.apply(g_vars, z, train=False)
    scores = critic.apply({"params": state.d_params}, jnp.concatenate([real[0], fake]))
    grads, metrics = jax.grad(wgan_gp.critic_loss, has_aux=True)(
        state.d_params, real[0], fake, eps, critic=critic, gp_weight=10.0)
    out[dt] = fake, scores, grads, metrics
  (f32_fake, f32_scores, f32_grads, f32_m), (bf_fake, bf_scores, bf_grads, bf_m) = out.values()
  assert f32_fake.dtype == bf_fake.dtype == bf_scores.dtype == jnp.float32
  assert not np.array_equal(bf_scores, f32_scores)  # the bf16 networks did compute in bf16
  # bf16 keeps 8 significant bits: agreement to about 1% of the values' scale.
  np.testing.assert_allclose(bf_fake, f32_fake, atol=0.02 * float(jnp.abs(f32_fake).max()))
  np.testing.assert_allclose(bf_scores, f32_scores, atol=0.02 * float(jnp.abs(f32_scores).max()))
  np.testing.assert_allclose(bf_m["gradient_penalty"], f32_m["gradient_penalty"], rtol=0.03)
  for name, leaf in jax.tree_util.tree_leaves_with_path(f32_grads):
    other = jax.tree_util.tree_leaves_with_path(bf_grads)
    b = dict((jax.tree_util.keystr(p), v) for p, v in other)[jax.tree_util.keystr(name)]
    assert b.dtype == jnp.float32
    if float(jnp.linalg.norm(leaf)) > 1e-6:  # the critic's output bias gets exactly zero
      cosine = float(jnp.vdot(leaf, b) / (jnp.linalg.norm(leaf) * jnp.linalg.norm(b)))
      assert cosine > 0.99, (jax.tree_util.keystr(name), cosine)
  generator, critic = nets[jnp.bfloat16]
  step = jax.jit(functools.partial(wgan_gp.train_step, generator=generator, critic=critic,
                                   optimizer=optimizer))
  new_state, metrics = step(state, real, jax.random.PRNGKey(4))
  chex.assert_tree_all_finite(metrics)
  assert {x.dtype for x in jax.tree.leaves(new_state) if jnp.issubdtype(x.dtype, jnp.floating)} \
      == {jnp.dtype(jnp.float32)}
