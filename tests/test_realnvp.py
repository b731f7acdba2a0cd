"""RealNVP: inverses, log-determinants against jax.jacfwd, normalisation, closed-form bits/dim,
the reference's parameter count, the training step on one and two devices."""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import data, layers, parallel, realnvp


class PlainConv(layers._ConvLayer):
  """flax's own convolution (JAX's autodiff rules, forward mode included) for jax.jacfwd; the
  library's Conv is a custom_vjp, which forward mode cannot differentiate."""

  @nn.compact
  def __call__(self, x):
    k, p = self.kernel_size, self.padding
    return nn.Conv(self.features, (k, k), self.strides, ((p, p), (p, p)), use_bias=self.use_bias,
                   kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype)(x)


def _randomize(variables, seed, scale=0.3):
  """Random parameters (the output convolutions start at zero) and running averages."""
  params, stats = variables["params"], variables.get("batch_stats", {})
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves) + 1)
  params = jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  paths, stats_tree = jax.tree_util.tree_flatten_with_path(stats)
  stat_keys = jax.random.split(keys[-1], max(len(paths), 1))
  stats = jax.tree.unflatten(stats_tree, [
      jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5) if path[-1].key == "var"
      else 0.2 * jax.random.normal(k, x.shape) for (path, x), k in zip(paths, stat_keys)])
  return {"params": params, "batch_stats": stats}


def _jacobian_log_det(fn, x):
  """log |det| of the Jacobian of fn at x (one example), by forward-mode autodiff."""
  jac = jax.jacfwd(lambda v: fn(v.reshape(x.shape)).reshape(-1))(x.reshape(-1))
  sign, log_det = jnp.linalg.slogdet(jac)
  assert sign != 0
  return float(log_det)


def _small(**fields):
  # every kind of layer, each of the first scale once, alternating masks in the last
  base = dict(image_shape=(8, 8, 1), num_scales=2, checkerboard_couplings=1,
              channel_couplings=1, final_couplings=2, width=4, num_blocks=1, flow_norm="actnorm")
  return realnvp.RealNVP(**{**base, **fields})


# ---------------------------------------------------------------- the reference architecture
def _torch_ref_resnet_parameters(cin, cout, width=64, blocks=4):
  """torch_ref.ResNetST's parameters, counted from its layer list."""
  conv = lambda i, o: 9 * i * o + o  # 3x3 kernel and bias
  bn = 2 * width  # weight and bias
  return (conv(cin, width) + blocks * 2 * (bn + conv(width, width)) + bn
          + conv(width, 2 * cout) + cout)  # last term: the tanh scale, one per channel


def test_reference_model_has_the_pytorch_parameter_count():
  # torch_ref.RealNVP: 3 checkerboard couplings on 1 channel, 3 channel-wise on 4 (nets 2 -> 2),
  # 4 checkerboard on 2 channels. torch itself counts 2,995,827 parameters for it.
  torch_count = (3 * _torch_ref_resnet_parameters(1, 1) + 3 * _torch_ref_resnet_parameters(2, 2)
                 + 4 * _torch_ref_resnet_parameters(2, 2))
  assert torch_count == 2_995_827
  model = realnvp.from_preset("mnist")
  assert model == realnvp.RealNVP()  # the defaults are the reference
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)),
                                                train=False))
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == torch_count
  nets = [variables["params"][f"couplings_{i}"]["net"] for i in range(10)]
  assert [n["input"]["kernel"].shape for n in nets] == \
      [(3, 3, 1, 64)] * 3 + [(3, 3, 2, 64)] * 7
  assert [n["output"]["kernel"].shape for n in nets] == \
      [(3, 3, 64, 2)] * 3 + [(3, 3, 64, 4)] * 7
  # torch's BatchNorm2d layers: 2 per block and 1 before the output, in each of the 10 nets
  assert sum(len([k for k in n if "norm" in k]) for n in variables["batch_stats"].values()
             for n in [n["net"]]) == 10 * 9
  assert model.latent_shapes() == [(14, 14, 2), (14, 14, 2)]


def test_presets_have_the_papers_shapes():
  shapes = {name: realnvp.from_preset(name).latent_shapes() for name in realnvp.PRESETS}
  assert shapes["cifar10"] == [(16, 16, 6), (16, 16, 6)]  # downscaled once
  assert shapes["celeba64"][-1] == (4, 4, 48)  # scales repeat until the last one sees 4x4
  for name, parts in shapes.items():
    assert sum(math.prod(s) for s in parts) == math.prod(realnvp.PRESETS[name]["image_shape"])
  celeba = realnvp.from_preset("celeba64")
  widths = [s[3] for s in celeba.plan() if s[0] == "coupling"]
  assert widths[:3] == [32] * 3 and widths[3:6] == [64] * 3 and widths[-4:] == [512] * 4
  with pytest.raises(ValueError, match="unknown RealNVP preset 'mnist32'; known: celeba64"):
    realnvp.from_preset("mnist32")


def test_bad_shapes_are_clear_errors():
  with pytest.raises(ValueError, match="divisible by 4, got image_shape=.30, 30, 1."):
    _small(image_shape=(30, 30, 1), num_scales=3).plan()
  model = _small()
  with pytest.raises(ValueError, match=r"image_shape=\(8, 8, 1\)\) got images of shape \(8, 8, 3\)"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
  with pytest.raises(ValueError, match="flow_norm must be 'none' or 'actnorm', got 'batchnorm'"):
    _small(flow_norm="batchnorm").plan()


# ---------------------------------------------------------------- preprocessing
def test_pixels_are_recovered_exactly_from_the_model_range():
  levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  model_range = data.to_model_range(levels, (0, 255))
  np.testing.assert_array_equal(realnvp.to_pixels(jnp.asarray(model_range)), levels)
  np.testing.assert_array_equal(realnvp.to_pixels(jnp.asarray(levels)), levels)
  np.testing.assert_allclose(realnvp.to_model_range(jnp.asarray(levels, jnp.float32)),
                             model_range, atol=1e-6)


def test_squeeze_order_and_inverse():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 3))
  y = realnvp.squeeze(x)
  chex.assert_shape(y, (2, 2, 3, 12))
  for c, dy, dx in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (2, 1, 1)]:  # torch_ref's channel order
    np.testing.assert_array_equal(y[:, :, :, 4 * c + 2 * dy + dx], x[:, dy::2, dx::2, c])
  np.testing.assert_array_equal(realnvp.unsqueeze(y), x)
  # a permutation: |det| = 1
  assert abs(_jacobian_log_det(realnvp.squeeze, x[:1])) < 1e-6


def test_logit_transform_log_det_and_inverse():
  x = jax.random.uniform(jax.random.PRNGKey(0), (1, 4, 4, 1))
  y, log_det = realnvp.logit_transform(x)
  assert abs(float(log_det[0]) - _jacobian_log_det(lambda v: realnvp.logit_transform(v)[0], x)) \
      < 1e-4
  np.testing.assert_allclose(realnvp.logit_inverse(y), x, atol=1e-6)
  # the margin: x = 0 and x = 1 land on logit(0.05) and logit(0.95)
  ends, _ = realnvp.logit_transform(jnp.array([[0.0, 1.0]]))
  np.testing.assert_allclose(ends, [[math.log(0.05 / 0.95), math.log(0.95 / 0.05)]], rtol=1e-5)


# ---------------------------------------------------------------- layers: log-dets and inverses
LAYERS = {
    "checkerboard0": (lambda: realnvp.AffineCoupling("checkerboard", 0, 4, 1, conv=PlainConv),
                      (1, 4, 4, 2)),
    "checkerboard1": (lambda: realnvp.AffineCoupling("checkerboard", 1, 4, 1, conv=PlainConv),
                      (1, 4, 4, 2)),
    "channel0": (lambda: realnvp.AffineCoupling("channel", 0, 4, 1, conv=PlainConv), (1, 2, 2, 4)),
    "channel1": (lambda: realnvp.AffineCoupling("channel", 1, 4, 1, conv=PlainConv), (1, 2, 2, 4)),
    "actnorm": (realnvp.ActNorm, (1, 4, 4, 2)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_log_det_is_the_jacobians_and_inverse_undoes_it(name):
  make, shape = LAYERS[name]
  layer = make()
  kwargs = {} if name == "actnorm" else {"train": False}
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(1), shape)
  init_data = 3.0 * jax.random.normal(jax.random.PRNGKey(2), (8, *shape[1:])) + 1.0
  variables = _randomize(layer.init(jax.random.PRNGKey(0), init_data, **kwargs), seed=3)
  forward = lambda v: layer.apply(variables, v, **kwargs)[0]
  y, log_det = layer.apply(variables, x, **kwargs)
  assert abs(float(log_det[0])) > 0.1  # the random parameters do rescale
  assert abs(float(log_det[0]) - _jacobian_log_det(forward, x)) < 1e-3 * max(1, abs(log_det[0]))
  back, inverse_log_det = layer.apply(variables, y, inverse=True, **kwargs)
  np.testing.assert_allclose(back, x, atol=1e-5)
  np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-6)
  if name.startswith("checkerboard"):  # the kept pixels pass through exactly
    keep = np.asarray(realnvp.checkerboard(*shape[1:3], int(name[-1]))).astype(bool)
    keep = np.broadcast_to(keep, shape)
    np.testing.assert_array_equal(np.asarray(y)[keep], np.asarray(x)[keep])
  if name.startswith("channel"):
    kept = slice(0, 2) if name.endswith("0") else slice(2, 4)
    np.testing.assert_array_equal(y[..., kept], x[..., kept])


def test_actnorm_data_dependent_init_standardises_the_first_batch():
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (16, 4, 4, 3)) + jnp.array([[[[1., -2., 5.]]]])
  layer = realnvp.ActNorm()
  y, log_det = layer.apply(layer.init(jax.random.PRNGKey(1), x), x)
  np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, rtol=1e-4)
  np.testing.assert_allclose(log_det, -16 * jnp.sum(jnp.log(jnp.std(x, axis=(0, 1, 2)))),
                             rtol=1e-5)


# ---------------------------------------------------------------- the whole flow
FLOWS = {
    "two_scales": dict(image_shape=(4, 4, 2), flow_norm="none"),
    "three_scales_actnorm": dict(image_shape=(8, 8, 1), num_scales=3, flow_norm="actnorm"),
    "st_norm_none": dict(image_shape=(8, 8, 1), flow_norm="actnorm", st_norm="none"),
}


def _random_flow(seed=0, **fields):
  model = _small(conv=PlainConv, **fields)
  init_data = jax.random.normal(jax.random.PRNGKey(seed + 10), (8, *model.image_shape))
  variables = model.init(jax.random.PRNGKey(seed), init_data, train=False)
  return model, _randomize(variables, seed + 1, scale=0.1)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flow_log_det_is_the_jacobians(name):
  model, variables = _random_flow(**FLOWS[name])
  x = jax.random.uniform(jax.random.PRNGKey(5), (1, *model.image_shape))
  y, _ = realnvp.logit_transform(x)
  z, log_det = model.apply(variables, y, train=False, method=realnvp.RealNVP.forward)
  flow = lambda v: model.apply(variables, v, train=False, method=realnvp.RealNVP.forward)[0]
  assert abs(float(log_det[0])) > 0.5
  np.testing.assert_allclose(log_det[0], _jacobian_log_det(flow, y), rtol=1e-3, atol=1e-3)
  # log_density = log N(z) + log |det| of the whole map x -> z, logit transform included
  whole = _jacobian_log_det(lambda v: flow(realnvp.logit_transform(v)[0]), x)
  log_px = realnvp.log_density(variables["params"], variables["batch_stats"], x, model=model)
  np.testing.assert_allclose(log_px[0] - realnvp.standard_normal_log_density(z)[0], whole,
                             rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_inverse_of_forward_is_the_identity(name):
  model, variables = _random_flow(seed=3, **FLOWS[name])
  y = 2.0 * jax.random.normal(jax.random.PRNGKey(6), (3, *model.image_shape))
  z, _ = model.apply(variables, y, train=False, method=realnvp.RealNVP.forward)
  chex.assert_shape(z, (3, math.prod(model.image_shape)))
  back = model.apply(variables, z, method=realnvp.RealNVP.inverse)
  np.testing.assert_allclose(back, y, atol=1e-4)
  assert float(jnp.max(jnp.abs(z - y.reshape(3, -1)))) > 0.1  # and the flow did change y


def test_reference_flow_inverts_on_mnist_shapes():
  model = realnvp.RealNVP(width=8, num_blocks=1)  # the reference's layout, narrower nets
  y = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
  variables = _randomize(model.init(jax.random.PRNGKey(1), y, train=False), seed=2, scale=0.05)
  z, _ = model.apply(variables, y, train=False, method=realnvp.RealNVP.forward)
  np.testing.assert_allclose(model.apply(variables, z, method=realnvp.RealNVP.inverse), y,
                             atol=1e-4)


# ---------------------------------------------------------------- densities
def test_density_integrates_to_one():
  # A 1x2 image: a flow on R^2 of four alternating checkerboard couplings with actnorm.
  model = realnvp.RealNVP(image_shape=(1, 2, 1), num_scales=1, final_couplings=4, width=4,
                          num_blocks=1, flow_norm="actnorm")
  init_data = 1.5 * jax.random.normal(jax.random.PRNGKey(0), (64, 1, 2, 1))
  variables = _randomize(model.init(jax.random.PRNGKey(1), init_data, train=False), seed=2)
  def density(points):  # p(y) = N(f(y)) |det df/dy|
    z, log_det = model.apply(variables, points.reshape(-1, 1, 2, 1), train=False,
                             method=realnvp.RealNVP.forward)
    return jnp.exp(realnvp.standard_normal_log_density(z) + log_det)
  lim, n = 12.0, 241
  grid = jnp.linspace(-lim, lim, n)
  points = jnp.stack(jnp.meshgrid(grid, grid, indexing="ij"), axis=-1)
  p = density(points).reshape(n, n)
  h = float(grid[1] - grid[0])
  assert float(jnp.max(p[jnp.array([0, -1])])) < 1e-9
  assert float(jnp.max(p[:, jnp.array([0, -1])])) < 1e-9
  assert abs(float(jnp.sum(p)) * h * h - 1.0) < 2e-3
  # With the logit transform: the density of x on [0, 1]^2 carries the mass that the flow's
  # density puts on the box y in [logit 0.05, logit 0.95]^2 (change of variables).
  m = 200
  mid = (jnp.arange(m) + 0.5) / m
  x = jnp.stack(jnp.meshgrid(mid, mid, indexing="ij"), axis=-1).reshape(-1, 1, 2, 1)
  mass_x = float(jnp.sum(jnp.exp(realnvp.log_density(
      variables["params"], variables["batch_stats"], x, model=model)))) / m ** 2
  edge = math.log(0.95 / 0.05)
  box = np.linspace(-edge, edge, 401)
  p_box = density(jnp.stack(jnp.meshgrid(box, box, indexing="ij"), axis=-1)).reshape(401, 401)
  mass_y = np.trapezoid(np.trapezoid(np.asarray(p_box, np.float64), box, axis=1), box)
  assert 0.5 < mass_y < 0.999
  np.testing.assert_allclose(mass_x, mass_y, rtol=1e-3)
  # The fresh flow is the identity (zero output convolutions, actnorm on N(0, 1)-like data
  # aside): with flow_norm="none" the mass is P(|y_i| < logit 0.95)^2 = erf(edge / sqrt 2)^2.
  identity = model.clone(flow_norm="none")
  fresh = identity.init(jax.random.PRNGKey(1), init_data, train=False)
  mass = float(jnp.sum(jnp.exp(realnvp.log_density(fresh["params"], fresh["batch_stats"], x,
                                                   model=identity)))) / m ** 2
  np.testing.assert_allclose(mass, math.erf(edge / math.sqrt(2)) ** 2, rtol=1e-4)


def test_bits_per_dim_of_an_identity_flow_is_its_closed_form():
  # Fresh couplings are the identity (zero output convolutions) and flow_norm="none" adds
  # nothing: z is a permutation of y, so the bits/dim follow by hand.
  model = _small(flow_norm="none")
  pixels = jax.random.randint(jax.random.PRNGKey(0), (3, 8, 8, 1), 0, 256).astype(jnp.float32)
  noise = jax.random.uniform(jax.random.PRNGKey(1), pixels.shape)
  state = realnvp.init_state(jax.random.PRNGKey(2), pixels.astype(jnp.uint8), model=model,
                             optimizer=realnvp.optimizer())
  got = realnvp.bits_per_dim(state.params, state.batch_stats, pixels, noise, model=model)
  k, u = np.asarray(pixels, np.float64).reshape(3, -1), np.asarray(noise, np.float64).reshape(3, -1)
  p = 0.05 + 0.9 * (k + u) / 256
  y = np.log(p / (1 - p))
  log_px = np.sum(-0.5 * y ** 2 - 0.5 * np.log(2 * np.pi) + np.log(0.9 / (p * (1 - p))), axis=1)
  expected = -(log_px - 64 * np.log(256)) / (64 * np.log(2))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bits_per_dim_with_actnorm_is_its_closed_form():
  # One identity coupling and one actnorm: z = (y + loc) * exp(log_scale) per channel.
  model = realnvp.RealNVP(image_shape=(4, 4, 3), num_scales=1, final_couplings=1, width=4,
                          num_blocks=1, flow_norm="actnorm")
  pixels = jax.random.randint(jax.random.PRNGKey(0), (2, 4, 4, 3), 0, 256).astype(jnp.float32)
  noise = jax.random.uniform(jax.random.PRNGKey(1), pixels.shape)
  variables = model.init(jax.random.PRNGKey(2), jnp.zeros((1, 4, 4, 3)), train=False)
  loc, log_scale = np.array([0.5, -1.0, 2.0]), np.array([0.3, -0.7, 0.1])
  variables["params"]["norms_0"] = {"loc": jnp.asarray(loc, jnp.float32),
                                    "log_scale": jnp.asarray(log_scale, jnp.float32)}
  got = realnvp.bits_per_dim(variables["params"], variables["batch_stats"], pixels, noise,
                             model=model)
  p = 0.05 + 0.9 * (np.asarray(pixels, np.float64) + np.asarray(noise, np.float64)) / 256
  y = np.log(p / (1 - p))
  z = (y + loc) * np.exp(log_scale)
  log_px = (np.sum(-0.5 * z ** 2 - 0.5 * np.log(2 * np.pi) + np.log(0.9 / (p * (1 - p))),
                   axis=(1, 2, 3)) + 16 * np.sum(log_scale))
  expected = -(log_px - 48 * np.log(256)) / (48 * np.log(2))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


# ---------------------------------------------------------------- training and inference
BATCH = 4


def _setup(seed=0, axis_name=None, **fields):
  model = _small(axis_name=axis_name, **fields)
  optimizer = realnvp.optimizer(1e-3)
  images = jax.random.uniform(jax.random.PRNGKey(100 + seed), (3, BATCH, 8, 8, 1),
                              minval=-1, maxval=1)
  images = realnvp.to_model_range(realnvp.to_pixels(images))  # on the pixel grid, as data are
  state = realnvp.init_state(jax.random.PRNGKey(seed), images[0], model=model,
                             optimizer=optimizer)
  step = functools.partial(realnvp.train_step, model=model, optimizer=optimizer,
                           axis_name=axis_name)
  return model, state, step, images


def test_step_traces_once_updates_everything_and_reports_the_loss():
  model, state, step_fn, images = _setup()
  def traced(state, batch, key):  # chex counts traces of a plain function
    return step_fn(state, batch, key)
  step = jax.jit(chex.assert_max_traces(traced, n=1), donate_argnums=0)
  before = jax.tree.map(np.array, state)
  history = []
  for i in range(3):
    state, metrics = step(state, images[i], jax.random.PRNGKey(0))
    history.append(metrics)
  assert int(state.step) == 3
  for name in ("params", "batch_stats"):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), getattr(before, name),
                           getattr(state, name))
    assert all(jax.tree.leaves(changed)), name
  assert set(metrics) == {"bits_per_dim", "nll", "grad_norm"}
  chex.assert_tree_all_finite(history)
  np.testing.assert_allclose(metrics["nll"], metrics["bits_per_dim"] * 64 * math.log(2),
                             rtol=1e-5)


def test_training_lowers_bits_per_dim_on_a_fixed_batch():
  model, state, step, images = _setup(flow_norm="none")
  step = jax.jit(step)
  key = jax.random.PRNGKey(1)
  first = float(realnvp.eval_bits_per_dim(state.params, state.batch_stats, images[0], key,
                                          model=model))
  for _ in range(15):
    state, metrics = step(state, images[0], jax.random.PRNGKey(2))
  # inference mode on the running averages after training: lower than at the start
  last = float(realnvp.eval_bits_per_dim(state.params, state.batch_stats, images[0], key,
                                         model=model))
  assert last < first - 0.1, (first, last)


def test_loss_is_finite_at_the_pixel_extremes():
  model, state, step, _ = _setup()
  state = state.replace(params=_randomize({"params": state.params}, seed=1)["params"])
  step = jax.jit(step)
  for value in (0, 255):
    pixels = jnp.full((BATCH, 8, 8, 1), value, jnp.uint8)
    for noise in (0.0, float(np.nextafter(np.float32(1), np.float32(0)))):
      bpd = realnvp.bits_per_dim(state.params, state.batch_stats, pixels.astype(jnp.float32),
                                 jnp.full(pixels.shape, noise), model=model)
      chex.assert_tree_all_finite(bpd)
    new_state, metrics = step(state, realnvp.to_model_range(pixels.astype(jnp.float32)),
                              jax.random.PRNGKey(0))
    chex.assert_tree_all_finite((new_state, metrics))


def test_inference_is_per_example_training_mode_is_not():
  model, state, step, images = _setup(flow_norm="none")
  state, _ = jax.jit(step)(state, images[0], jax.random.PRNGKey(0))  # running stats move off 0/1
  pixels = realnvp.to_pixels(images[1])
  noise = jax.random.uniform(jax.random.PRNGKey(3), pixels.shape)
  together = realnvp.bits_per_dim(state.params, state.batch_stats, pixels, noise, model=model)
  alone = [realnvp.bits_per_dim(state.params, state.batch_stats, pixels[i:i + 1], noise[i:i + 1],
                                model=model)[0] for i in range(BATCH)]
  np.testing.assert_allclose(together, alone, rtol=1e-5)
  # Training mode normalises with the batch's statistics: the same image, another batch, another
  # value (which is why evaluation and sampling never use it).
  variables = {"params": _randomize({"params": state.params}, 4)["params"],
               "batch_stats": state.batch_stats}
  def train_mode(x):
    return realnvp._log_density(model, variables, x, True)[0]
  x = realnvp.dequantize(pixels, noise)
  assert abs(float(train_mode(x)[0] - train_mode(x[:2])[0])) > 1e-3


def test_without_batchnorm_in_the_st_networks_training_mode_is_inference_mode():
  """st_norm="none": nothing in the flow depends on the batch, so the density the loss trains is
  the one evaluation reports, image by image (with BatchNorm, the test above shows it is not)."""
  model, state, step, images = _setup(flow_norm="actnorm", st_norm="none")
  assert state.batch_stats == {}
  state, _ = jax.jit(step)(state, images[0], jax.random.PRNGKey(0))
  variables = {"params": _randomize({"params": state.params}, 4)["params"], "batch_stats": {}}
  pixels = realnvp.to_pixels(images[1])
  x = realnvp.dequantize(pixels, jax.random.uniform(jax.random.PRNGKey(3), pixels.shape))
  train = realnvp._log_density(model, variables, x, True)[0]
  infer = realnvp._log_density(model, variables, x, False)[0]
  assert float(jnp.std(train)) > 1.0  # the random parameters give the images different densities
  np.testing.assert_allclose(train, infer, rtol=1e-6)
  np.testing.assert_allclose(realnvp._log_density(model, variables, x[:2], True)[0], train[:2],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="st_norm must be one of batch, none, got 'layer'"):
    _small(st_norm="layer").init(jax.random.PRNGKey(0), x, train=True)


def test_precise_batchnorm_statistics_are_the_batches_own():
  """One batch's precise statistics make inference on that batch compute exactly what training
  mode computes on it (two independent paths through BatchNorm); several batches' are the mean
  of each one's; without BatchNorm there is nothing to recompute."""
  model, state, step, images = _setup()
  state, _ = jax.jit(step)(state, images[0], jax.random.PRNGKey(0))
  params = _randomize({"params": state.params}, 4)["params"]
  key = jax.random.PRNGKey(5)
  stats = realnvp.precise_batch_stats(params, state.batch_stats, [images[1]], key, model=model)
  pixels = realnvp.to_pixels(images[1])
  x = realnvp.dequantize(pixels, jax.random.uniform(jax.random.fold_in(key, 0), pixels.shape))
  train = realnvp._log_density(model, {"params": params, "batch_stats": state.batch_stats}, x,
                               True)[0]
  infer = realnvp._log_density(model, {"params": params, "batch_stats": stats}, x, False)[0]
  running = realnvp._log_density(model, {"params": params, "batch_stats": state.batch_stats}, x,
                                 False)[0]
  np.testing.assert_allclose(infer, train, rtol=1e-5)
  assert float(jnp.max(jnp.abs(running - train))) > 1.0  # the running averages are not the batch's
  two = realnvp.precise_batch_stats(params, state.batch_stats, list(images[1:]), key, model=model)
  each = [realnvp.batch_statistics(params, state.batch_stats, images[1 + i],
                                   jax.random.fold_in(key, i), model=model) for i in range(2)]
  chex.assert_trees_all_close(two, jax.tree.map(lambda a, b: (a + b) / 2, *each), rtol=1e-5,
                             atol=1e-6)
  plain, plain_state, _, _ = _setup(st_norm="none")
  assert realnvp.precise_batch_stats(plain_state.params, {}, [images[1]], key, model=plain) == {}


def test_two_devices_equal_one_device():
  devices = jax.local_devices()
  assert len(devices) == 2, "conftest emulates 2 CPU devices"
  key = jax.random.PRNGKey(7)
  results = []
  for n in (1, 2):
    model, state, step, images = _setup(axis_name=parallel.AXIS)
    step = jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None), devices=devices[:n])
    replicated = parallel.replicate(state, devices[:n])
    for i in range(2):
      replicated, metrics = step(replicated, parallel.shard(np.asarray(images[i]), n), key)
    results.append((parallel.unreplicate(replicated), parallel.unreplicate(metrics)))
  (one, m1), (two, m2) = results
  chex.assert_trees_all_close(one, two, rtol=2e-4, atol=2e-5)
  chex.assert_trees_all_close(m1, m2, rtol=2e-4, atol=2e-5)
  # the BatchNorm running averages are the whole batch's on both devices
  stats = replicated.batch_stats["couplings_0"]["net"]["output_norm"]["var"]
  np.testing.assert_array_equal(stats[0], stats[1])


def test_step_and_model_axis_names_must_agree():
  _, state, step, images = _setup(axis_name=None)
  with pytest.raises(ValueError, match="axis_name=None but the step runs with axis_name='devices'"):
    functools.partial(step, axis_name=parallel.AXIS)(state, images[0], jax.random.PRNGKey(0))


def test_samples_are_images_on_the_pixel_grid_and_temperature_scales_z():
  model, state, _, _ = _setup()
  params = _randomize({"params": state.params}, seed=5, scale=0.1)["params"]
  draw = functools.partial(realnvp.sample, params, state.batch_stats, model=model)
  images = draw(jax.random.PRNGKey(0), 6, temperature=1.0)
  chex.assert_shape(images, (6, 8, 8, 1))
  pixels = (np.asarray(images) + 1) * 127.5
  np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-4)
  assert pixels.min() >= 0 and pixels.max() <= 255
  assert len({np.asarray(im).tobytes() for im in images}) == 6
  # temperature 0 puts every z at the mode: six copies of one image, the inverse of z = 0
  cold = draw(jax.random.PRNGKey(1), 6, temperature=0.0)
  np.testing.assert_array_equal(cold, jnp.broadcast_to(cold[:1], cold.shape))
  y0 = model.apply({"params": params, "batch_stats": state.batch_stats}, jnp.zeros((1, 64)),
                   method=realnvp.RealNVP.inverse)
  expected = np.clip(np.floor(np.asarray(realnvp.logit_inverse(y0)) * 256), 0, 255)
  np.testing.assert_allclose((np.asarray(cold[0]) + 1) * 127.5, expected[0], atol=1e-4)


def test_bfloat16_networks_track_float32():
  model, state, _, images = _setup()
  params = _randomize({"params": state.params}, seed=6, scale=0.1)["params"]
  key = jax.random.PRNGKey(0)
  f32 = realnvp.eval_bits_per_dim(params, state.batch_stats, images[0], key, model=model)
  bf16 = realnvp.eval_bits_per_dim(params, state.batch_stats, images[0], key,
                                   model=model.clone(dtype=jnp.bfloat16))
  assert bf16.dtype == jnp.float32
  assert f32 != bf16
  np.testing.assert_allclose(bf16, f32, rtol=0.01)
