"""VAE: the likelihoods and KL against their formulas, the reference networks' sizes, the step,
and the importance-sampled log-likelihood against a model whose log p(x) is known in closed form."""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxgen import parallel, vae


# ---------------------------------------------------------------- KL and likelihoods

def test_kl_is_zero_for_the_prior_and_matches_monte_carlo():
  assert float(vae.kl_standard_normal(jnp.zeros((1, 5)), jnp.zeros((1, 5)))[0]) == 0.0
  mean = jnp.array([[0.5, -1.0, 2.0]])
  logvar = jnp.array([[0.0, -1.5, 0.7]])
  kl = float(vae.kl_standard_normal(mean, logvar)[0])
  # KL = E_q[log q(z) - log p(z)], estimated from n samples of q; tolerance 4 standard errors.
  n = 200_000
  std = np.exp(0.5 * np.asarray(logvar[0], np.float64))
  z = np.asarray(mean[0], np.float64) + std * np.random.default_rng(0).standard_normal((n, 3))
  log_ratio = (stats.norm.logpdf(z, np.asarray(mean[0]), std) - stats.norm.logpdf(z)).sum(1)
  standard_error = log_ratio.std() / math.sqrt(n)
  assert abs(kl - log_ratio.mean()) < 4 * standard_error, (kl, log_ratio.mean(), standard_error)
  # and the closed form itself, term by term
  expected = 0.5 * np.sum(np.exp(logvar) + mean ** 2 - 1 - logvar)
  np.testing.assert_allclose(kl, expected, rtol=1e-6)


def test_bernoulli_log_likelihood_is_its_formula_and_finite_at_extreme_logits():
  logits = jnp.array([[0.0, 2.0, -3.0, 100.0], [-100.0, 0.5, 1.0, -0.25]])
  x01 = jnp.array([[1.0, 0.0, 0.3, 0.0], [1.0, 1.0, 0.0, 0.5]])
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  with np.errstate(divide="ignore"):
    terms = np.where(x01 > 0, x01 * np.log(p), 0) + np.where(x01 < 1, (1 - x01) * np.log1p(-p), 0)
  # Where float64 itself rounds p to exactly 1 (logit 100) use log(1 - p) = -l - log(1 + e^-l).
  terms[0, 3] = -100.0 - np.log1p(np.exp(-100.0))
  np.testing.assert_allclose(vae.bernoulli_log_likelihood(logits, x01), terms.sum(1), rtol=1e-6)


def test_gaussian_log_likelihood_is_its_formula_for_scalar_and_per_channel_scales():
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (2, 3, 3, 2))
  mean = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3, 2))
  for log_scale in (jnp.float32(-0.7), jnp.array([0.3, -1.2])):
    scale = np.broadcast_to(np.exp(np.asarray(log_scale)), x.shape)
    expected = stats.norm.logpdf(np.asarray(x), np.asarray(mean), scale).reshape(2, -1).sum(1)
    np.testing.assert_allclose(vae.gaussian_log_likelihood(mean, x, log_scale), expected,
                               rtol=1e-5)
  # unit scale: the reference's -0.5 * squared error, less the constant
  sq = 0.5 * np.sum((np.asarray(x) - np.asarray(mean)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(vae.gaussian_log_likelihood(mean, x, 0.0),
                             -sq - 18 * 0.5 * np.log(2 * np.pi), rtol=1e-5)


def test_bits_per_dim_of_the_uniform_density_is_eight():
  # U on the dequantised range [-1, 1 + 1/127.5) of 256 levels: density 127.5/256 per dimension.
  d = 12
  np.testing.assert_allclose(vae.bits_per_dim(d * math.log(256 / 127.5), d), 8.0, rtol=1e-12)
  # on the bare [-1, 1]: 255 pixel units wide
  np.testing.assert_allclose(vae.bits_per_dim(d * math.log(2.0), d), math.log2(255), rtol=1e-12)


# ---------------------------------------------------------------- networks

def _param_shapes(model, image_shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, *image_shape)),
                                                jax.random.PRNGKey(1)))
  return jax.tree.map(lambda a: a.shape, variables["params"])


def _count(shapes):
  return sum(math.prod(s) for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))


def test_mlp_784_400_20_is_the_reference_vae():
  shapes = _param_shapes(vae.mlp_vae(), (28, 28, 1))
  assert shapes == {
      "encoder": {"hidden_0": {"kernel": (784, 400), "bias": (400,)},
                  "mean": {"kernel": (400, 20), "bias": (20,)},
                  "logvar": {"kernel": (400, 20), "bias": (20,)}},
      "decoder": {"hidden_0": {"kernel": (20, 400), "bias": (400,)},
                  "output": {"kernel": (400, 784), "bias": (784,)}}}
  # PyTorch's fc1, fc21, fc22, fc3, fc4: (in + 1) * out each
  layers = [(784, 400), (400, 20), (400, 20), (20, 400), (400, 784)]
  assert _count(shapes) == sum((i + 1) * o for i, o in layers) == 652_824


def test_conv64_is_the_reference_vae_conv64():
  model = vae.conv_vae(64, 3, 32)
  shapes = _param_shapes(model, (64, 64, 3))
  enc, dec = shapes["encoder"], shapes["decoder"]
  # Conv kernels are (k, k, in, out); ConvTranspose kernels (k, k, out, in), as layers.py says.
  assert [enc[f"conv_{i}"]["kernel"] for i in range(4)] == [
      (4, 4, 3, 32), (4, 4, 32, 64), (4, 4, 64, 128), (4, 4, 128, 256)]
  assert enc["stats"]["kernel"] == (256 * 4 * 4, 64)
  assert dec["from_latent"]["kernel"] == (32, 256 * 4 * 4)
  assert [dec[f"conv_transpose_{i}"]["kernel"] for i in range(4)] == [
      (4, 4, 128, 256), (4, 4, 64, 128), (4, 4, 32, 64), (4, 4, 3, 32)]
  # The PyTorch ConvVAE's layer list, (k * k * in + 1) * out each (Linear: k = 1).
  layers = [(4, 3, 32), (4, 32, 64), (4, 64, 128), (4, 128, 256), (1, 4096, 64),
            (1, 32, 4096), (4, 256, 128), (4, 128, 64), (4, 64, 32), (4, 32, 3)]
  assert _count(shapes) == sum((k * k * i + 1) * o for k, i, o in layers) == 1_777_411
  out, mean, logvar = jax.eval_shape(
      lambda: model.apply({"params": jax.tree.map(jnp.zeros, shapes,
                                                  is_leaf=lambda s: isinstance(s, tuple))},
                          jnp.zeros((2, 64, 64, 3)), jax.random.PRNGKey(0)))
  assert (out.shape, mean.shape, logvar.shape) == ((2, 64, 64, 3), (2, 32), (2, 32))


@pytest.mark.parametrize("size, channels, widths", [(32, 1, None), (32, 3, (8, 16)), (8, 1, (4,))])
def test_conv_network_shapes(size, channels, widths):
  encoder = vae.ConvEncoder(size, widths, latent_dim=5)
  decoder = vae.ConvDecoder(size, widths, channels)
  x = jnp.zeros((3, size, size, channels))
  enc_vars = jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0), x))
  mean, logvar = jax.eval_shape(encoder.apply, enc_vars, x)
  assert mean.shape == logvar.shape == (3, 5)
  z = jnp.zeros((3, 5))
  dec_vars = jax.eval_shape(lambda: decoder.init(jax.random.PRNGKey(0), z))
  assert jax.eval_shape(decoder.apply, dec_vars, z).shape == (3, size, size, channels)
  expected = widths or {32: (32, 64, 128)}[size]
  assert [enc_vars["params"][f"conv_{i}"]["kernel"].shape[-1] for i in range(len(expected))] == \
      list(expected)
  assert dec_vars["params"]["from_latent"]["kernel"].shape == (
      5, expected[-1] * (size >> len(expected)) ** 2)


def test_mlp_network_shapes():
  model = vae.mlp_vae((6, 5, 2), hidden_dims=(7, 3), latent_dim=4)
  shapes = _param_shapes(model, (6, 5, 2))
  assert [shapes["encoder"][f"hidden_{i}"]["kernel"] for i in range(2)] == [(60, 7), (7, 3)]
  assert [shapes["decoder"][f"hidden_{i}"]["kernel"] for i in range(2)] == [(4, 3), (3, 7)]
  params = jax.tree.map(jnp.zeros, shapes, is_leaf=lambda s: isinstance(s, tuple))
  out, mean, _ = model.apply({"params": params}, jnp.zeros((2, 6, 5, 2)), jax.random.PRNGKey(0))
  assert out.shape == (2, 6, 5, 2) and mean.shape == (2, 4)


def test_bad_settings_are_clear_errors():
  with pytest.raises(ValueError, match="use 'adam' or 'rmsprop'"):
    vae.optimizer("sgd", 1e-3)
  with pytest.raises(ValueError, match="likelihood='laplace'; use one of bernoulli"):
    vae.check_likelihood("laplace")
  with pytest.raises(ValueError, match="power of two"):
    vae.conv_channels(48, None)
  model, state, _ = _setup("bernoulli")  # a state without the learned scale
  with pytest.raises(ValueError, match=r"init_state\(\.\.\., likelihood='gaussian_channel'\)"):
    vae.eval_batch(state.params, _batches()[0], jax.random.PRNGKey(0), model=model,
                   likelihood="gaussian_channel")
  with pytest.raises(ValueError, match="cannot be halved 3 times"):
    vae.conv_channels(12, (4, 8, 16))


# ---------------------------------------------------------------- the posterior sample

class _FixedPosterior(nn.Module):
  """An encoder whose mean and log-variance are parameters, whatever the input."""
  mean: tuple
  logvar: tuple

  @nn.compact
  def __call__(self, x):
    mean = self.param("m", lambda _: jnp.array(self.mean))
    logvar = self.param("lv", lambda _: jnp.array(self.logvar))
    shape = (x.shape[0], len(self.mean))
    return jnp.broadcast_to(mean, shape), jnp.broadcast_to(logvar, shape)


class _Identity(nn.Module):
  """A decoder that returns its latent: the VAE's output is then the posterior sample."""

  @nn.compact
  def __call__(self, z):
    return z


def test_reparameterised_samples_have_the_posterior_mean_and_variance():
  mean, logvar = (1.5, -2.0, 0.0), (0.5, -3.0, 2.0)
  model = vae.VAE(_FixedPosterior(mean, logvar), _Identity())
  n = 100_000
  x = jnp.zeros((n, 1))
  variables = model.init(jax.random.PRNGKey(0), x[:1], jax.random.PRNGKey(0))
  z, _, _ = model.apply(variables, x, jax.random.PRNGKey(1))
  var = np.exp(logvar)
  # 4 standard errors: sqrt(var / n) for the mean, sqrt(2 var^2 / (n - 1)) for the variance
  np.testing.assert_array_less(np.abs(z.mean(0) - np.array(mean)), 4 * np.sqrt(var / n))
  np.testing.assert_array_less(np.abs(z.var(0, ddof=1) - var), 4 * np.sqrt(2 * var ** 2 / (n - 1)))
  # and every sample is mean + exp(logvar / 2) * eps for the eps that key draws
  eps = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (n, 3)))
  np.testing.assert_allclose(z, np.array(mean) + np.exp(0.5 * np.array(logvar)) * eps, rtol=1e-5,
                             atol=1e-6)


# ---------------------------------------------------------------- the step

IMAGE = (4, 4, 1)


def _setup(likelihood="bernoulli", beta=1.0, axis_name=None, model=None, image=IMAGE):
  model = model or vae.mlp_vae(image, hidden_dims=(8,), latent_dim=3)
  optimizer = vae.optimizer("adam", 1e-2)
  state = vae.init_state(jax.random.PRNGKey(0), model, optimizer, image, likelihood=likelihood)
  step = functools.partial(vae.train_step, model=model, optimizer=optimizer, beta=beta,
                           likelihood=likelihood, axis_name=axis_name)
  return model, state, step


def _batches(n=3, batch=4, image=IMAGE):
  return jax.random.uniform(jax.random.PRNGKey(10), (n, batch, *image), minval=-1, maxval=1)


@pytest.mark.parametrize("likelihood", ["gaussian_channel", "bernoulli_stochastic"])
def test_step_traces_once_and_trains_every_parameter(likelihood):
  model, state, step_fn = _setup(likelihood, beta=2.0)
  chex.clear_trace_counter()  # the other parametrisation traced a function of the same name

  def traced(state, batch, key):  # chex counts traces of a plain function
    return step_fn(state, batch, key)

  step = jax.jit(chex.assert_max_traces(traced, n=1), donate_argnums=0)
  batches = _batches()
  before = jax.tree.map(np.array, state)
  key = jax.random.PRNGKey(5)
  # the first step's metrics are the evaluation of the initial parameters at the step's key
  first = vae.eval_batch(before.params, batches[0], jax.random.fold_in(key, 0), model=model,
                         beta=2.0, likelihood=likelihood)
  for i in range(3):
    state, metrics = step(state, batches[i], key)
    if i == 0:
      chex.assert_trees_all_close(metrics, jax.tree.map(jnp.mean, first), rtol=1e-5)
  assert int(state.step) == 3
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before.params, state.params)
  assert all(jax.tree.leaves(changed))
  if likelihood == "gaussian_channel":
    assert state.params["likelihood"]["log_scale"].shape == (1,)
    assert set(metrics) == {"recon", "kl", "neg_elbo", "loss", "bits_per_dim"}
    np.testing.assert_allclose(metrics["bits_per_dim"], vae.bits_per_dim(metrics["neg_elbo"], 16),
                               rtol=1e-5)
  else:
    assert set(metrics) == {"recon", "kl", "neg_elbo", "loss"}
  np.testing.assert_allclose(metrics["neg_elbo"], metrics["recon"] + metrics["kl"], rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], metrics["recon"] + 2.0 * metrics["kl"], rtol=1e-5)


def test_beta_scales_only_the_kl_term():
  model, state, _ = _setup("gaussian")
  x, key = _batches()[0], jax.random.PRNGKey(3)

  def terms(params, beta):
    return vae.per_example_terms(params, x, key, model=model, beta=beta, likelihood="gaussian")

  one, four = terms(state.params, 1.0), terms(state.params, 4.0)
  for name in ("recon", "kl", "neg_elbo"):
    np.testing.assert_array_equal(one[name], four[name])
  np.testing.assert_allclose(four["loss"], one["recon"] + 4.0 * one["kl"], rtol=1e-6)
  grad = lambda name, beta: jax.grad(lambda p: jnp.mean(terms(p, beta)[name]))(state.params)
  expected = jax.tree.map(lambda g, k: g + 3.0 * k, grad("loss", 1.0), grad("kl", 1.0))
  chex.assert_trees_all_close(grad("loss", 4.0), expected, rtol=1e-5, atol=1e-6)
  # the decoder's gradient does not depend on beta (the KL does not see the decoder)
  chex.assert_trees_all_close(grad("loss", 4.0)["model"]["decoder"],
                              grad("loss", 1.0)["model"]["decoder"], rtol=1e-6)


@pytest.mark.parametrize("raw_logvar", [50.0, -50.0, 1e4])
def test_loss_and_gradients_are_finite_at_extreme_log_variance(raw_logvar):
  for likelihood in ("bernoulli", "gaussian_channel"):
    model, state, step = _setup(likelihood)
    head = state.params["model"]["encoder"]["logvar"]
    params = jax.tree.map(lambda a: a, state.params)
    params["model"]["encoder"]["logvar"] = {"kernel": jnp.zeros_like(head["kernel"]),
                                            "bias": jnp.full_like(head["bias"], raw_logvar)}
    state = state.replace(params=params)
    _, logvar = vae.posterior(params, _batches()[0], model=model)
    np.testing.assert_array_equal(logvar, np.clip(raw_logvar, *vae.LOGVAR_RANGE))
    for _ in range(2):
      state, metrics = jax.jit(step)(state, _batches()[0], jax.random.PRNGKey(0))
      chex.assert_tree_all_finite((metrics, state))
  # what the clip prevents: the closed-form KL overflows float32 at the raw value
  if raw_logvar > 88:
    assert np.isinf(vae.kl_standard_normal(jnp.zeros((1, 1)), jnp.full((1, 1), raw_logvar)))


def test_two_devices_equal_one_device():
  devices = jax.local_devices()
  assert len(devices) == 2, "conftest emulates 2 CPU devices"
  image = (8, 8, 1)
  batches, key = _batches(2, 4, image), jax.random.PRNGKey(7)
  results = []
  for n in (1, 2):
    model = vae.conv_vae(8, 1, latent_dim=3, channels_list=(4, 8))
    _, state, step = _setup("bernoulli_stochastic", axis_name=parallel.AXIS, model=model,
                            image=image)
    step = jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None), devices=devices[:n])
    replicated = parallel.replicate(state, devices[:n])
    for i in range(2):
      replicated, metrics = step(replicated, parallel.shard(np.asarray(batches[i]), n), key)
    results.append((parallel.unreplicate(replicated), parallel.unreplicate(metrics)))
  (one, m1), (two, m2) = results
  chex.assert_trees_all_close(one, two, rtol=2e-4, atol=2e-5)
  chex.assert_trees_all_close(m1, m2, rtol=2e-4, atol=2e-5)
  # and the pmapped step on one device is the plain step
  _, state, plain_step = _setup("bernoulli_stochastic", model=model, image=image)
  for i in range(2):
    state, _ = jax.jit(plain_step)(state, batches[i], key)
  chex.assert_trees_all_close(state, one, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("n", [1, 2])
def test_steps_fused_into_one_call_are_the_single_steps(n):
  """parallel.pmap_steps: `count` of K stacked batches in one device loop give the state and the
  last metrics of `count` single pmapped steps; the batches after the count are never read (NaN
  there changes nothing); one compilation serves every count."""
  devices = jax.local_devices()[:n]
  _, state, step = _setup("bernoulli_stochastic", axis_name=parallel.AXIS)
  batches, key = np.asarray(_batches(5)), jax.random.PRNGKey(7)
  traces = []

  def counted(state, batch, key):
    traces.append(1)
    return step(state, batch, key)

  fused = parallel.pmap_steps(counted, devices, donate=False)
  single = parallel.pmap_step(step, devices, donate=False)
  replicated = parallel.replicate(state, devices)
  expected = replicated
  for i in range(5):
    expected, expected_metrics = single(expected, parallel.shard(batches[i], n), key)
    if i == 2:
      after_three = (expected, expected_metrics)
  stacked = np.full((4, *batches.shape[1:]), np.nan, np.float32)  # K = 4
  stacked[:3] = batches[:3]
  got = fused(replicated, parallel.shard(stacked, n, axis=1), key, 3)
  traced = len(traces)
  chex.assert_trees_all_close(got, after_three, rtol=1e-6, atol=1e-7)
  assert int(parallel.unreplicate(got[0]).step) == 3
  stacked[:2] = batches[3:]
  got = fused(got[0], parallel.shard(stacked, n, axis=1), key, 2)
  assert len(traces) == traced  # the second count reused the compilation
  chex.assert_trees_all_close(got, (expected, expected_metrics), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- importance sampling

def _linear_gaussian(encoder_scale=1.0, logvar_shift=0.0):
  """p(z) = N(0, I), p(x | z) = N(W z + b, s^2 I) with orthogonal columns of W, so the exact
  posterior N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1, is diagonal and is what the
  (linear) encoder outputs; `encoder_scale` and `logvar_shift` move the encoder off it."""
  d, latent, s = 4, 2, 0.5
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.standard_normal((d, latent)))
  w = q * np.array([1.5, 0.8])
  b = rng.standard_normal(d) * 0.3
  post_var = 1.0 / (1.0 + np.sum(w * w, 0) / s ** 2)  # W^T W is diagonal
  enc_kernel = w * post_var / s ** 2  # x @ enc_kernel = S W^T x / s^2
  model = vae.VAE(vae.MLPEncoder((), latent), vae.MLPDecoder((), (2, 2, 1)))
  params = {
      "model": {"encoder": {"mean": {"kernel": encoder_scale * enc_kernel,
                                     "bias": -encoder_scale * b @ enc_kernel},
                            "logvar": {"kernel": np.zeros((d, latent)),
                                       "bias": np.log(post_var) + logvar_shift}},
                "decoder": {"output": {"kernel": w.T, "bias": b}}},
      "likelihood": {"log_scale": np.float32(np.log(s))}}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  x = jnp.asarray(rng.standard_normal((5, 2, 2, 1)), jnp.float32)
  cov = w @ w.T + s ** 2 * np.eye(d)
  log_px = stats.multivariate_normal(b, cov).logpdf(np.asarray(x).reshape(5, d))
  return model, params, x, log_px


def test_importance_estimate_is_exact_when_the_proposal_is_the_posterior():
  model, params, x, log_px = _linear_gaussian()
  estimate = functools.partial(vae.importance_log_likelihood, params, x, jax.random.PRNGKey(0),
                               model=model, likelihood="gaussian_scalar")
  # every importance weight p(x, z) / q(z | x) is p(x): exact for any number of samples
  for num_samples, chunk in ((1, 1), (100, 10), (120, 40)):
    np.testing.assert_allclose(estimate(num_samples=num_samples, samples_per_chunk=chunk), log_px,
                               rtol=1e-5)
  with pytest.raises(ValueError, match="multiple of samples_per_chunk=7"):
    estimate(num_samples=100, samples_per_chunk=7)


def test_importance_estimate_lies_above_the_elbo_and_does_not_depend_on_chunking():
  model, params, x, log_px = _linear_gaussian(encoder_scale=0.6, logvar_shift=1.0)
  key = jax.random.PRNGKey(1)
  estimate = functools.partial(vae.importance_log_likelihood, params, x, key, model=model,
                               likelihood="gaussian_scalar")
  iw_100 = estimate(num_samples=100, samples_per_chunk=10)
  np.testing.assert_allclose(estimate(num_samples=100, samples_per_chunk=100), iw_100, rtol=1e-5)
  evaluate = jax.jit(lambda key: vae.eval_batch(params, x, key, model=model,
                                                likelihood="gaussian_scalar")["neg_elbo"])
  elbo = -np.mean([evaluate(jax.random.PRNGKey(i)) for i in range(200)], axis=0)
  gap_elbo, gap_iw = log_px - elbo, log_px - np.asarray(iw_100)
  assert np.all(gap_elbo > 0.2), gap_elbo  # the encoder is well off the posterior
  # averaged over the examples the bound tightens: ELBO < IWAE(100) <= log p(x) (up to noise)
  assert gap_iw.mean() < 0.2 * gap_elbo.mean(), (gap_iw, gap_elbo)
  assert gap_iw.mean() > -0.05, gap_iw
