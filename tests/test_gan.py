"""The original GAN: networks, losses against their formulas, label smoothing, the training step
against the PyTorch reference's DCGAN step, 1 vs 2 devices, and the plain-convolution baseline."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import dcgan, gan, layers, mlp_gan, parallel


def _count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def _init(module, x, **kwargs):
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, **kwargs))


# ----------------------------------------------------------------------------------- networks
def test_discriminator_is_the_reference_one():
  # make_discriminator(3, (64, 128, 256, 512)): bias-free 4x4 convolutions 3-64-128-256-512-1,
  # BatchNorm (weight and bias) on 128, 256 and 512 channels.
  convs_64 = 16 * (3 * 64 + 64 * 128 + 128 * 256 + 256 * 512 + 512 * 1)
  assert convs_64 == 3_072 + 131_072 + 524_288 + 2_097_152 + 8_192
  v64 = _init(dcgan.Discriminator(64, 64), jnp.zeros((2, 64, 64, 3)))
  assert _count(v64["params"]) == convs_64 + 2 * (128 + 256 + 512) == 2_765_568
  # make_discriminator(1, (64, 128, 256)) at 32x32: 1_024 + 131_072 + 524_288 + 4_096 + 768.
  v32 = _init(dcgan.Discriminator(32, 64), jnp.zeros((2, 32, 32, 1)))
  assert _count(v32["params"]) == 16 * (64 + 64 * 128 + 128 * 256 + 256) + 2 * (128 + 256) \
      == 661_248
  assert [v["kernel"].shape for k, v in sorted(v64["params"].items()) if k.startswith("Conv")] == [
      (4, 4, 3, 64), (4, 4, 64, 128), (4, 4, 128, 256), (4, 4, 256, 512), (4, 4, 512, 1)]
  assert not any("bias" in v for k, v in v64["params"].items() if k.startswith("Conv"))
  assert sorted(v64["batch_stats"]) == ["BatchNorm_0", "BatchNorm_1", "BatchNorm_2"]
  assert v64["batch_stats"]["BatchNorm_0"]["mean"].shape == (128,)  # after the second conv


@pytest.mark.parametrize("size, channels", [(8, 1), (16, 3), (32, 1)])
def test_discriminator_shapes(size, channels):
  d = dcgan.Discriminator(size, 4)
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, size, size, channels), minval=-1, maxval=1)
  variables = d.init(jax.random.PRNGKey(1), x)
  chex.assert_shape(d.apply(variables, x), (3,))
  logits, new = d.apply(variables, x, train=True, mutable=["batch_stats"])
  chex.assert_shape(logits, (3,))
  assert len(new.get("batch_stats", {})) == dcgan.num_upsamplings(size) - 1


@pytest.mark.parametrize("name", mlp_gan.PRESETS)
def test_mlp_presets_take_and_make_nhwc_images(name):
  image_shape = (28, 28, 1)
  p = mlp_gan.preset(name, image_shape)
  assert p.batch_size == 128 and p.generator.latent_dim == 100
  z = jax.random.normal(jax.random.PRNGKey(0), (5, 100)) * 10.0  # large: saturate the output
  g_vars = jax.jit(functools.partial(p.generator.init, train=False))(jax.random.PRNGKey(1), z)
  images, _ = jax.jit(functools.partial(p.generator.apply, train=True, mutable=["batch_stats"]))(
      g_vars, z)
  chex.assert_shape(images, (5, *image_shape))
  assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
  assert float(images.min()) < -0.5 and float(images.max()) > 0.5  # the whole [-1, 1] range
  d_vars = p.discriminator.init(jax.random.PRNGKey(2), images)
  chex.assert_shape(p.discriminator.apply(d_vars, images), (5,))
  def widths(params):
    return [params[f"Dense_{i}"]["kernel"].shape[1] for i in range(len(params))
            if f"Dense_{i}" in params]
  g_widths, d_widths = widths(g_vars["params"]), widths(d_vars["params"])
  if name == "deep_batchnorm":
    assert g_widths == [128, 256, 512, 1024, 784] and d_widths == [512, 256, 128, 1]
    assert len(g_vars["batch_stats"]) == 4 and p.learning_rate == 1e-5
  else:
    assert g_widths == [128, 784] and d_widths == [128, 1]
    assert "batch_stats" not in g_vars


def test_sigmoid_output_is_mapped_onto_the_data_range():
  g = mlp_gan.Generator((2, 2, 1), (3,), 4, batch_norm=False, output="sigmoid")
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 4))
  variables = g.init(jax.random.PRNGKey(1), z, train=False)
  params = variables["params"]  # the network by hand
  hidden = jax.nn.relu(z @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"][None])
  logits = hidden @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"][None]
  np.testing.assert_allclose(g.apply(variables, z, train=False).reshape(2, 4),
                             2.0 / (1.0 + np.exp(-np.asarray(logits, np.float64))) - 1.0,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="output must be one of sigmoid, tanh"):
    mlp_gan.Generator(output="softmax").init(jax.random.PRNGKey(0), z, train=False)
  with pytest.raises(ValueError, match="preset must be one of"):
    mlp_gan.preset("nope")


def test_mlp_discriminator_reads_brightness_so_black_sits_at_every_kink():
  d = mlp_gan.Discriminator((5, 3))
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 2, 3, 1), minval=-1.0, maxval=1.0)
  params = d.init(jax.random.PRNGKey(1), x)["params"]
  # Biases start at zero, so a black image (-1 everywhere) is a zero input to every layer.
  assert float(np.abs(d.apply({"params": params}, -jnp.ones((1, 2, 3, 1)))).max()) == 0.0
  h = (np.asarray(x, np.float64).reshape(4, -1) + 1.0) / 2.0  # the network by hand
  layers = [(np.asarray(p["kernel"]), np.asarray(p["bias"])) for p in
            (params[f"Dense_{i}"] for i in range(3))]
  for kernel, bias in layers[:2]:
    h = h @ kernel + bias[None]
    h = np.where(h > 0, h, 0.2 * h)
  logits = (h @ layers[2][0] + layers[2][1][None])[:, 0]
  np.testing.assert_allclose(d.apply({"params": params}, x), logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module, x, kwargs", [
    (dcgan.Generator(16, 3, 8, 6), jnp.ones((2, 6)), {"train": True}),
    (dcgan.Generator(16, 3, 8, 6, upsampling="resize"), jnp.ones((2, 6)), {"train": True}),
    (dcgan.Critic(16, 8), jnp.ones((2, 16, 16, 3)), {}),
    (dcgan.Discriminator(16, 8), jnp.ones((2, 16, 16, 3)), {"train": True}),
], ids=["generator", "resize_generator", "critic", "discriminator"])
def test_plain_convolutions_compute_what_jaxgen_layers_compute(module, x, kwargs):
  plain = module.clone(**({"conv_transpose": layers.PlainConvTranspose,
                           "upsample_conv": layers.PlainUpsampleConv}
                          if isinstance(module, dcgan.Generator) else {"conv": layers.PlainConv}))
  x = x * jax.random.uniform(jax.random.PRNGKey(3), x.shape, minval=-1, maxval=1)
  fast_vars = module.init(jax.random.PRNGKey(0), x, **kwargs)
  plain_vars = plain.init(jax.random.PRNGKey(0), x, **kwargs)
  chex.assert_trees_all_equal(fast_vars, plain_vars)  # same names, shapes and initial values

  def output_and_grads(net):
    def total(params):
      out = net.apply({**fast_vars, "params": params}, x, mutable=["batch_stats"], **kwargs)[0]
      return jnp.sum(out * jnp.linspace(-1.0, 1.0, out.size).reshape(out.shape)), out
    return jax.jit(jax.grad(total, has_aux=True))(fast_vars["params"])

  fast_grads, fast_out = output_and_grads(module)
  plain_grads, plain_out = output_and_grads(plain)
  assert float(jnp.std(fast_out)) > 1e-3  # outputs that vary, not a constant
  chex.assert_trees_all_close(fast_out, plain_out, rtol=1e-5, atol=1e-6)
  # Gradients of order 1 through BatchNorm: float32 rounding reaches a few 1e-6.
  chex.assert_trees_all_close(fast_grads, plain_grads, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ losses
def _log_sigmoid64(x: float) -> float:
  return math.log(1.0 / (1.0 + math.exp(-x)))


def test_discriminator_loss_is_its_formula():
  real, fake = [-2.0, 0.5, 3.0], [-1.0, 2.0, -4.0]
  labels = [0.8, 0.75, 1.0]
  expected = (-np.mean([y * _log_sigmoid64(r) + (1 - y) * math.log(1 - math.exp(_log_sigmoid64(r)))
                        for r, y in zip(real, labels)])
              - np.mean([math.log(1.0 - 1.0 / (1.0 + math.exp(-f))) for f in fake]))
  got = gan.discriminator_loss(jnp.array(real), jnp.array(fake), jnp.array(labels))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # label 1 everywhere: the negated value function of eq. (1); a scalar label broadcasts.
  value = np.mean([_log_sigmoid64(r) for r in real]) + np.mean(
      [math.log(1.0 - 1.0 / (1.0 + math.exp(-f))) for f in fake])
  np.testing.assert_allclose(gan.discriminator_loss(jnp.array(real), jnp.array(fake), 1.0),
                             -value, rtol=1e-6)
  # and PyTorch's binary_cross_entropy_with_logits sum, as the reference computes it
  np.testing.assert_allclose(
      got, jnp.mean(optax.sigmoid_binary_cross_entropy(jnp.array(real), jnp.array(labels)))
      + jnp.mean(optax.sigmoid_binary_cross_entropy(jnp.array(fake), jnp.zeros(3))), rtol=1e-6)


def test_generator_losses_are_their_formulas():
  fake = [-3.0, -0.5, 0.0, 1.5, 4.0]
  minimax = np.mean([math.log(1.0 - math.exp(_log_sigmoid64(f))) for f in fake])
  non_saturating = -np.mean([_log_sigmoid64(f) for f in fake])
  np.testing.assert_allclose(gan.generator_loss(jnp.array(fake), "minimax"), minimax, rtol=1e-6)
  np.testing.assert_allclose(gan.generator_loss(jnp.array(fake), "non_saturating"),
                             non_saturating, rtol=1e-6)
  with pytest.raises(ValueError, match="minimax, non_saturating"):
    gan.generator_loss(jnp.array(fake), "wasserstein")


def test_losses_and_gradients_are_finite_at_extreme_logits():
  big = jnp.array([-1e4, 1e4])
  for labels in (1.0, jnp.array([0.7, 0.9])):
    value, grads = jax.value_and_grad(gan.discriminator_loss, argnums=(0, 1))(big, big, labels)
    chex.assert_tree_all_finite((value, grads))
  # real logit -1e4 with label 1 and fake logit +1e4 each cost 1e4 / 2 (means over 2).
  np.testing.assert_allclose(gan.discriminator_loss(big, big, 1.0), 1e4, rtol=1e-6)
  for kind in gan.GENERATOR_LOSSES:
    value, grad = jax.value_and_grad(gan.generator_loss)(big, kind)
    chex.assert_tree_all_finite((value, grad))
  np.testing.assert_allclose(gan.generator_loss(big, "non_saturating"), 1e4 / 2, rtol=1e-6)
  np.testing.assert_allclose(gan.generator_loss(big, "minimax"), -1e4 / 2, rtol=1e-6)
  # what log_sigmoid avoids: the log of a sigmoid that rounded to 0
  assert np.isneginf(jnp.log(jax.nn.sigmoid(big[0])))


def test_minimax_gradient_vanishes_where_non_saturating_does_not():
  # D(G(z)) -> 0 as the fake logit l -> -inf: d/dl log(1 - sigmoid(l)) = -sigmoid(l) -> 0,
  # d/dl -log sigmoid(l) = -(1 - sigmoid(l)) -> -1 (Goodfellow et al. 2014, section 3).
  for logit in (-5.0, -10.0, -20.0, -40.0):
    l = jnp.array([logit])
    minimax = float(jax.grad(gan.generator_loss)(l, "minimax")[0])
    non_saturating = float(jax.grad(gan.generator_loss)(l, "non_saturating")[0])
    sigmoid = 1.0 / (1.0 + math.exp(-logit))
    np.testing.assert_allclose(minimax, -sigmoid, rtol=1e-4)
    np.testing.assert_allclose(non_saturating, -(1.0 - sigmoid), rtol=1e-6)
    assert abs(minimax) < 7e-3 and abs(non_saturating) > 0.99
  # where D is fooled (l -> +inf) it is the other way round
  l = jnp.array([20.0])
  assert abs(float(jax.grad(gan.generator_loss)(l, "minimax")[0])) > 0.99
  assert abs(float(jax.grad(gan.generator_loss)(l, "non_saturating")[0])) < 1e-8


def test_label_smoothing():
  labels = gan.real_labels(jax.random.PRNGKey(0), 20000, (0.7, 0.9))
  assert float(labels.min()) >= 0.7 and float(labels.max()) <= 0.9
  # uniform on [0.7, 0.9]: mean 0.8, standard error 0.2 / sqrt(12 * 20000) = 4e-4
  assert abs(float(labels.mean()) - 0.8) < 2e-3
  assert float(labels.std()) == pytest.approx(0.2 / math.sqrt(12), rel=0.03)
  assert float(labels.max() - labels.min()) > 0.19
  for fixed in (1.0, 0.9, (0.85, 0.85)):
    labels = gan.real_labels(jax.random.PRNGKey(0), 7, fixed)
    value = fixed if isinstance(fixed, float) else fixed[0]
    assert np.array_equal(labels, np.full(7, value, np.float32))
  for bad in ((0.9, 0.7), 1.5, (0.5,), "high"):
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
      gan.real_labels(jax.random.PRNGKey(0), 4, bad)


def test_drawn_labels_split_over_devices_are_the_global_draw():
  key = jax.random.PRNGKey(4)
  whole = gan.real_labels(key, 8, (0.7, 0.9))
  parts = jax.pmap(lambda _: gan.real_labels(key, 4, (0.7, 0.9), parallel.AXIS),
                   axis_name=parallel.AXIS)(jnp.arange(2))
  np.testing.assert_array_equal(parts.reshape(8), whole)


# ------------------------------------------------------------------------- the training step
SIZE, CHANNELS, LATENT, WIDTH, BATCH = 16, 1, 4, 4, 4


def _setup(seed=0, axis_name=None, k=2, real_label=(0.7, 0.9), loss="non_saturating",
           learning_rate=1e-3):
  generator = dcgan.Generator(SIZE, CHANNELS, WIDTH, LATENT, axis_name=axis_name)
  discriminator = dcgan.Discriminator(SIZE, WIDTH, axis_name=axis_name)
  optimizer = dcgan.optimizer(learning_rate)
  state = gan.init_state(jax.random.PRNGKey(seed), generator=generator,
                         discriminator=discriminator, g_optimizer=optimizer,
                         d_optimizer=optimizer, image_shape=(SIZE, SIZE, CHANNELS))
  step = functools.partial(gan.train_step, generator=generator, discriminator=discriminator,
                           g_optimizer=optimizer, d_optimizer=optimizer, loss=loss,
                           real_label=real_label, axis_name=axis_name)
  return state, step, (generator, discriminator, optimizer)


def _real(k=2, steps=3):
  return jax.random.uniform(jax.random.PRNGKey(100), (steps, k, BATCH, SIZE, SIZE, CHANNELS),
                            minval=-1, maxval=1)


def test_step_traces_once_and_updates_everything():
  state, step_fn, _ = _setup()
  assert jax.tree.leaves(state.d_batch_stats) and jax.tree.leaves(state.g_batch_stats)
  # chex counts traces of a plain function, keyed by its name, source and call stack: a name of
  # its own, so that another test's counter is not this one's
  def gan_step(state, real, key):
    return step_fn(state, real, key)
  step = jax.jit(chex.assert_max_traces(gan_step, n=1), donate_argnums=0)
  real = _real()
  before = jax.tree.map(np.array, state)
  for i in range(3):
    state, metrics = step(state, real[i], jax.random.PRNGKey(0))
  assert int(state.step) == 3
  for name in ("g_params", "d_params", "g_batch_stats", "d_batch_stats"):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), getattr(before, name),
                           getattr(state, name))
    assert all(jax.tree.leaves(changed)), name
  assert set(metrics) == {"d_loss", "g_loss", "combined_loss", "d_accuracy_real",
                          "d_accuracy_fake", "d_real", "d_fake"}
  chex.assert_tree_all_finite(metrics)
  np.testing.assert_allclose(metrics["combined_loss"], metrics["d_loss"] + metrics["g_loss"],
                             rtol=1e-6)
  for name in ("d_accuracy_real", "d_accuracy_fake", "d_real", "d_fake"):
    assert 0.0 <= float(metrics[name]) <= 1.0
  # accuracies are fractions of a batch of 4 averaged over k = 2 updates
  assert float(metrics["d_accuracy_real"]) * 8 == int(float(metrics["d_accuracy_real"]) * 8)


def _bce(logits, label):
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full(logits.shape, label)))


@pytest.mark.parametrize("loss", gan.GENERATOR_LOSSES)
def test_one_discriminator_update_is_the_reference_dcgan_step(loss):
  """k = 1: torch_ref.py's DCGAN.step written out in autodiff, against gan.train_step."""
  state, step, (generator, discriminator, optimizer) = _setup(
      k=1, real_label=1.0, loss=loss, learning_rate=1e-2)
  real = _real(k=1, steps=1)[0]
  key = jax.random.PRNGKey(9)
  new_state, metrics = jax.jit(step)(state, real, key)

  @jax.jit
  def reference(state, real):
    # the step's draw for update 0 of step 0: split(fold_in(fold_in(key, step), update))[0]
    z = jax.random.normal(jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 0), 0))[0],
                          (BATCH, LATENT))
    def fake_of(g_params):
      return generator.apply({"params": g_params, "batch_stats": state.g_batch_stats}, z,
                             train=True, mutable=["batch_stats"])
    def d_apply(d_params, stats, x):
      logits, new = discriminator.apply({"params": d_params, "batch_stats": stats}, x,
                                        train=True, mutable=["batch_stats"])
      return logits, new["batch_stats"]
    fake, g_vars = fake_of(state.g_params)  # fake = G(z): one forward, running stats once
    def d_loss(d_params):  # BCE(D(real), 1) + BCE(D(fake.detach()), 0)
      real_logits, stats = d_apply(d_params, state.d_batch_stats, real[0])
      fake_logits, stats = d_apply(d_params, stats, fake)
      return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0), stats
    (d_value, d_stats), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state.d_params)
    updates, _ = optimizer.update(d_grads, state.d_opt_state, state.d_params)
    d_params = optax.apply_updates(state.d_params, updates)
    def g_loss(g_params):  # the same fake through the updated D, D's running stats move again
      logits, stats = d_apply(d_params, d_stats, fake_of(g_params)[0])
      value = _bce(logits, 1.0) if loss == "non_saturating" else -_bce(logits, 0.0)
      return value, stats
    (g_value, d_stats), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state.g_params)
    updates, _ = optimizer.update(g_grads, state.g_opt_state, state.g_params)
    return (optax.apply_updates(state.g_params, updates), g_vars["batch_stats"], d_params,
            d_stats, d_value, g_value)

  g_params, g_stats, d_params, d_stats, d_value, g_value = reference(state, real)
  chex.assert_trees_all_close(
      (new_state.g_params, new_state.g_batch_stats, new_state.d_params, new_state.d_batch_stats),
      (g_params, g_stats, d_params, d_stats), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["d_loss"], d_value, rtol=1e-5)
  np.testing.assert_allclose(metrics["g_loss"], g_value, rtol=1e-5)
  assert not np.allclose(g_params["ConvTranspose_0"]["kernel"],
                         state.g_params["ConvTranspose_0"]["kernel"])


def test_two_devices_equal_one_device():
  devices = jax.local_devices()
  assert len(devices) == 2, "conftest emulates 2 CPU devices"
  real = _real()
  key = jax.random.PRNGKey(7)
  results = []
  for n in (1, 2):
    state, step, _ = _setup(axis_name=parallel.AXIS)
    step = jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None), devices=devices[:n])
    replicated = parallel.replicate(state, devices[:n])
    for i in range(2):
      batch = parallel.shard(np.asarray(real[i]), n, axis=1)
      replicated, metrics = step(replicated, batch, key)
    results.append((parallel.unreplicate(replicated), parallel.unreplicate(metrics)))
  (one, m1), (two, m2) = results
  chex.assert_trees_all_close(one, two, rtol=2e-4, atol=2e-5)
  chex.assert_trees_all_close(m1, m2, rtol=2e-4, atol=2e-5)
  for tree in (replicated.d_params, replicated.d_batch_stats, replicated.g_batch_stats):
    for leaf in jax.tree.leaves(tree):  # both devices hold the same state
      np.testing.assert_array_equal(leaf[0], leaf[1])


def test_bad_settings_are_clear_errors():
  state, _, (generator, discriminator, optimizer) = _setup()
  step = functools.partial(gan.train_step, generator=generator, discriminator=discriminator,
                           g_optimizer=optimizer, d_optimizer=optimizer)
  with pytest.raises(ValueError, match="loss must be one of minimax, non_saturating"):
    step(state, _real()[0], jax.random.PRNGKey(0), loss="wasserstein")
  with pytest.raises(ValueError, match="real labels"):
    step(state, _real()[0], jax.random.PRNGKey(0), real_label=(0.9, 0.7))


@pytest.mark.parametrize("name", mlp_gan.PRESETS)
def test_mlp_presets_train_through_the_gan_step(name):
  p = mlp_gan.preset(name, (4, 4, 1))
  optimizer = p.optimizer()
  state = gan.init_state(jax.random.PRNGKey(0), generator=p.generator,
                         discriminator=p.discriminator, g_optimizer=optimizer,
                         d_optimizer=optimizer, image_shape=(4, 4, 1))
  step = jax.jit(functools.partial(gan.train_step, generator=p.generator,
                                   discriminator=p.discriminator, g_optimizer=optimizer,
                                   d_optimizer=optimizer, real_label=(0.7, 0.9)))
  real = jax.random.uniform(jax.random.PRNGKey(1), (1, 8, 4, 4, 1), minval=-1, maxval=1)
  new_state, metrics = step(state, real, jax.random.PRNGKey(2))
  chex.assert_tree_all_finite(metrics)
  assert new_state.d_batch_stats == {}
  assert bool(jax.tree.leaves(new_state.g_batch_stats)) == (name == "deep_batchnorm")
  for before, after in zip(jax.tree.leaves((state.g_params, state.d_params, state.g_batch_stats)),
                           jax.tree.leaves((new_state.g_params, new_state.d_params,
                                            new_state.g_batch_stats))):
    assert not np.array_equal(before, after)
