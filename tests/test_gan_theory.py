"""GAN theory checked numerically on 1-D densities with known forms (Goodfellow et al. 2014,
section 4: the optimal discriminator, Proposition 1; the value at it, Theorem 1), and the
mean-seeking versus mode-seeking fits of forward and reverse KL.

Densities live on fine grids and integrals are sums times the spacing; trained discriminators
use the library's GAN loss from logits (jaxgen.toy2d.gan_discriminator_loss) on samples, or its
expectation on the densities.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import toy2d

LOG4 = np.log(4.0)
GRID = np.linspace(-8.0, 8.0, 3201)  # spacing 0.005
DX = GRID[1] - GRID[0]


def normal_pdf(x, mean, std):
  return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))


# p_data: a bimodal mixture; p_g: one wide Gaussian that overlaps both modes.
P_DATA = 0.5 * normal_pdf(GRID, -1.5, 0.5) + 0.5 * normal_pdf(GRID, 1.0, 0.7)
P_G = normal_pdf(GRID, 0.0, 1.2)


def value(d, p_data, p_g, dx):
  """V(D, G) = E_data log D + E_g log(1 - D) by quadrature (eq. 1), 0 log 0 = 0."""
  d = np.asarray(d, np.float64)
  real = np.where(p_data > 0, p_data * np.log(np.where(p_data > 0, d, 1.0)), 0.0)
  fake = np.where(p_g > 0, p_g * np.log(np.where(p_g > 0, 1.0 - d, 1.0)), 0.0)
  return float(np.sum(real + fake) * dx)


def value_of_logits(logits, p_data, p_g, dx):
  """V(D, G) of D = sigmoid(logits), with log D and log(1 - D) from the logits (no underflow)."""
  logits = np.asarray(logits, np.float64)
  return float(np.sum(-p_data * np.logaddexp(0, -logits) - p_g * np.logaddexp(0, logits)) * dx)


def optimal_discriminator(p_data, p_g):
  """D*(x) = p_data / (p_data + p_g) (Proposition 1); 1/2 where both vanish."""
  total = p_data + p_g
  return np.where(total > 0, p_data / np.where(total > 0, total, 1.0), 0.5)


def optimal_value(p_data, p_g, dx):
  """V(D*, G) from the densities alone: E_data log(p_data / (p_data + p_g)) + E_g log(p_g / ...),
  exact where D* rounds to 0 or 1."""
  total = np.where(p_data + p_g > 0, p_data + p_g, 1.0)
  term = lambda a: np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / total), 0.0)
  return float(np.sum(term(p_data) + term(p_g)) * dx)


def jsd(p, q, dx):
  """Jensen-Shannon divergence, from its definition through the mixture m = (p + q) / 2."""
  m = 0.5 * (p + q)
  ratio = lambda a: np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)  # m > 0 wherever a > 0
  kl = lambda a: np.sum(np.where(a > 0, a * np.log(ratio(a)), 0.0)) * dx
  return 0.5 * kl(p) + 0.5 * kl(q)


@functools.partial(jax.jit, static_argnames="steps")
def train_logit_table(p_data, p_g, dx, init, steps=3000):
  """A discriminator free in every grid bin (one logit each), trained by Adam to minimise the
  GAN discriminator loss in expectation: -V = -sum dx (p_data log D + p_g log(1 - D))."""
  def loss(logits):
    return -jnp.sum(p_data * jax.nn.log_sigmoid(logits) + p_g * jax.nn.log_sigmoid(-logits)) * dx
  # eps near 0 and a short memory b2: Adam's steps then ignore the tiny and shrinking scale of
  # the gradients in the tails
  optimizer = optax.adam(optax.exponential_decay(0.1, steps, 1e-3), b2=0.9, eps=1e-16)
  def step(carry, _):
    logits, opt_state = carry
    updates, opt_state = optimizer.update(jax.grad(loss)(logits), opt_state)
    return (optax.apply_updates(logits, updates), opt_state), None
  (logits, _), _ = jax.lax.scan(step, (init, optimizer.init(init)), None, length=steps)
  return logits


def test_value_at_the_optimal_discriminator_is_minus_log4_plus_2_jsd():
  d_star = optimal_discriminator(P_DATA, P_G)
  v_star = value(d_star, P_DATA, P_G, DX)
  divergence = jsd(P_DATA, P_G, DX)
  assert 0.05 < divergence < np.log(2)  # a real overlap, neither identical nor disjoint
  np.testing.assert_allclose(v_star, -LOG4 + 2 * divergence, rtol=0, atol=1e-10)
  np.testing.assert_allclose(optimal_value(P_DATA, P_G, DX), v_star, rtol=0, atol=1e-12)
  # D* is the maximiser: any other discriminator scores lower
  rng = np.random.default_rng(0)
  for scale in (0.3, 0.03):
    logit = np.log(d_star / (1 - d_star)) + scale * rng.standard_normal(GRID.shape)
    assert value(1 / (1 + np.exp(-logit)), P_DATA, P_G, DX) < v_star
  assert value(np.full_like(GRID, 0.5), P_DATA, P_G, DX) == pytest.approx(-LOG4, abs=1e-6)


def test_closed_forms_of_uniform_densities():
  # Midpoints of 0.001-wide bins over [-1, 4]: sums of piecewise-constant densities are exact.
  x = -1.0 + (np.arange(5000) + 0.5) * 1e-3
  uniform = lambda lo, hi: np.where((x > lo) & (x < hi), 1.0 / (hi - lo), 0.0)
  p, half_overlap, disjoint = uniform(0, 2), uniform(1, 3), uniform(2.5, 3.5)
  # p = U[0, 2], q = U[1, 3]: JSD = log(2) / 2, so V(D*) = -log 4 + log 2 = -log 2, and D* is
  # 1 where only p lives, 1/2 on the overlap, 0 where only q lives.
  d_star = optimal_discriminator(p, half_overlap)
  np.testing.assert_allclose(jsd(p, half_overlap, 1e-3), np.log(2) / 2, rtol=1e-9)
  np.testing.assert_allclose(value(d_star, p, half_overlap, 1e-3), -np.log(2), rtol=1e-9)
  np.testing.assert_array_equal(d_star[(x > 0) & (x < 1)], 1.0)
  np.testing.assert_array_equal(d_star[(x > 1) & (x < 2)], 0.5)
  np.testing.assert_array_equal(d_star[(x > 2) & (x < 3)], 0.0)
  # Disjoint supports: JSD reaches its maximum log 2 and V(D*) = 0.
  np.testing.assert_allclose(jsd(p, disjoint, 1e-3), np.log(2), rtol=1e-9)
  np.testing.assert_allclose(value(optimal_discriminator(p, disjoint), p, disjoint, 1e-3), 0.0,
                             atol=1e-12)


def test_logit_table_trained_on_the_densities_is_the_optimal_discriminator():
  # The table covers the bins where a density is resolved in float32; elsewhere the gradients
  # underflow and D does not matter to V.
  mask = P_DATA + P_G > 1e-6
  p_data, p_g = P_DATA[mask], P_G[mask]
  init = jnp.asarray(np.random.default_rng(1).normal(0, 2, p_data.shape), jnp.float32)
  logits = np.asarray(train_logit_table(jnp.asarray(p_data, jnp.float32),
                                        jnp.asarray(p_g, jnp.float32), DX, init), np.float64)
  d = 1 / (1 + np.exp(-logits))
  d_star = optimal_discriminator(p_data, p_g)
  np.testing.assert_allclose(d, d_star, atol=1e-4)
  # and in logits, log(p_data / p_g), where both densities are resolved
  both = (p_data > 1e-4) & (p_g > 1e-4)
  np.testing.assert_allclose(logits[both], np.log(p_data / p_g)[both], atol=1e-3)
  v, v_star = value_of_logits(logits, p_data, p_g, DX), value(d_star, p_data, p_g, DX)
  assert v <= v_star + 1e-9 and v_star - v < 1e-6
  np.testing.assert_allclose(v, -LOG4 + 2 * jsd(P_DATA, P_G, DX), atol=1e-5)
  # The library's loss on samples is -V in expectation: Monte Carlo against the quadrature.
  rng = np.random.default_rng(2)
  n = 200_000
  modes = rng.integers(2, size=n)
  real = np.where(modes == 0, rng.normal(-1.5, 0.5, n), rng.normal(1.0, 0.7, n))
  fake = rng.normal(0.0, 1.2, n)
  table = np.zeros(GRID.shape)
  table[mask] = logits
  lookup = lambda x: table[np.clip(np.rint((x - GRID[0]) / DX).astype(int), 0, len(GRID) - 1)]
  sample_loss = float(toy2d.gan_discriminator_loss(lookup(real), lookup(fake)))
  terms = np.stack([-np.asarray(jax.nn.log_sigmoid(lookup(real))),
                    -np.asarray(jax.nn.log_sigmoid(-lookup(fake)))])
  stderr = np.sqrt(terms[0].var() / n + terms[1].var() / n)
  assert abs(sample_loss + v) < 4 * stderr


def test_mlp_trained_on_samples_approaches_the_optimal_discriminator():
  critic = toy2d.Critic(width=64, depth=2)
  steps, batch = 2000, 512
  optimizer = optax.adam(optax.exponential_decay(3e-3, steps, 0.1))

  def sample(key):
    k_mode, k_real, k_fake = jax.random.split(key, 3)
    mode = jax.random.bernoulli(k_mode, 0.5, (batch, 1))
    noise = jax.random.normal(k_real, (batch, 1))
    real = jnp.where(mode, 1.0 + 0.7 * noise, -1.5 + 0.5 * noise)
    return real, 1.2 * jax.random.normal(k_fake, (batch, 1))

  def loss(params, real, fake):
    apply = lambda x: critic.apply({"params": params}, x)
    return toy2d.gan_discriminator_loss(apply(real), apply(fake))

  @jax.jit
  def train(params, key):
    def step(carry, key):
      params, opt_state = carry
      grads = jax.grad(loss)(params, *sample(key))
      updates, opt_state = optimizer.update(grads, opt_state)
      return (optax.apply_updates(params, updates), opt_state), None
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)),
                                  jax.random.split(key, steps))
    return params

  params = critic.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))["params"]
  params = train(params, jax.random.PRNGKey(1))
  logits = critic.apply({"params": params}, jnp.asarray(GRID[:, None], jnp.float32))
  d = np.asarray(jax.nn.sigmoid(logits), np.float64)
  d_star = optimal_discriminator(P_DATA, P_G)
  bulk = 0.5 * (P_DATA + P_G) > 0.05  # where the samples are: about x in [-2.7, 2.7]
  # measured: max 0.016, mean 0.006 (sampling noise of 2000 batches of 512)
  assert np.max(np.abs(d - d_star)[bulk]) < 0.04
  assert np.mean(np.abs(d - d_star)[bulk]) < 0.015
  v, v_star = value_of_logits(logits, P_DATA, P_G, DX), value(d_star, P_DATA, P_G, DX)
  assert v <= v_star + 1e-9  # nothing beats D*
  assert v_star - v < 3e-3  # and the trained D's value approaches it (measured: 9e-4)


def test_at_p_g_equal_p_data_the_value_is_minus_log4_and_d_star_one_half():
  d_star = optimal_discriminator(P_DATA, P_DATA)
  np.testing.assert_array_equal(d_star, 0.5)
  np.testing.assert_allclose(value(d_star, P_DATA, P_DATA, DX), -LOG4, atol=1e-6)
  assert jsd(P_DATA, P_DATA, DX) == pytest.approx(0.0, abs=1e-12)
  mask = P_DATA > 1e-6
  init = jnp.asarray(np.random.default_rng(3).normal(0, 2, np.sum(mask)), jnp.float32)
  p = jnp.asarray(P_DATA[mask], jnp.float32)
  logits = np.asarray(train_logit_table(p, p, DX, init), np.float64)
  np.testing.assert_allclose(1 / (1 + np.exp(-logits)), 0.5, atol=1e-4)
  np.testing.assert_allclose(value_of_logits(logits, P_DATA[mask], P_DATA[mask], DX), -LOG4,
                             atol=1e-5)
  # C(G) = max_D V(D, G) is -log 4 at p_g = p_data and higher for every other generator
  # (Theorem 1).
  for mean, std in [(0.0, 1.2), (-1.5, 0.5), (0.0, 3.0), (-0.25, 1.3)]:
    p_g = normal_pdf(GRID, mean, std)
    assert optimal_value(P_DATA, p_g, DX) > -LOG4 + 1e-3


# Forward and reverse KL fits of one Gaussian q = N(mu, sigma^2) to a bimodal target.
WEIGHTS, MEANS, STDS = np.array([0.6, 0.4]), np.array([-2.0, 2.0]), np.array([0.5, 0.7])


def _log_target(x):
  log_parts = (jnp.log(WEIGHTS)[:, None] - 0.5 * ((x[None] - MEANS[:, None]) / STDS[:, None]) ** 2
               - jnp.log(STDS * np.sqrt(2 * np.pi))[:, None])
  return jax.nn.logsumexp(log_parts, axis=0)


def _log_q(x, params):
  mu, log_sigma = params
  return -0.5 * ((x - mu) / jnp.exp(log_sigma)) ** 2 - log_sigma - 0.5 * np.log(2 * np.pi)


X = jnp.asarray(GRID, jnp.float32)


def forward_kl(params):  # KL(p || q) = E_p [log p - log q]: mass-covering
  log_p = _log_target(X)
  return jnp.sum(jnp.exp(log_p) * (log_p - _log_q(X, params))) * DX


def reverse_kl(params):  # KL(q || p) = E_q [log q - log p]: mode-seeking
  log_q = _log_q(X, params)
  return jnp.sum(jnp.exp(log_q) * (log_q - _log_target(X))) * DX


@functools.partial(jax.jit, static_argnames="divergence")
def fit(divergence, start):
  optimizer = optax.adam(optax.exponential_decay(0.05, 1500, 0.01))
  def step(carry, _):
    params, opt_state = carry
    updates, opt_state = optimizer.update(jax.grad(divergence)(params), opt_state)
    return (optax.apply_updates(params, updates), opt_state), None
  (params, _), _ = jax.lax.scan(step, (start, optimizer.init(start)), None, length=1500)
  return params


def test_forward_kl_is_mean_seeking_and_reverse_kl_is_mode_seeking():
  # forward KL's minimiser over Gaussians matches the target's mean and variance
  mean = float(np.sum(WEIGHTS * MEANS))
  variance = float(np.sum(WEIGHTS * (STDS ** 2 + MEANS ** 2)) - mean ** 2)
  assert (mean, variance) == pytest.approx((-0.4, 4.186))
  mu, log_sigma = np.asarray(fit(forward_kl, jnp.array([1.0, 0.0])))
  np.testing.assert_allclose([mu, np.exp(log_sigma)], [mean, np.sqrt(variance)], atol=2e-3)
  assert MEANS[0] < mu < MEANS[1]  # between the modes, where the target has little mass
  moment_matched = jnp.array([mean, 0.5 * np.log(variance)])
  for start, mode in [(1.0, 1), (-1.0, 0)]:
    # reverse KL from a narrow start on either side settles on that side's mode, with its width
    # (a wide start can also stop in a worse local minimum that straddles both)
    params = fit(reverse_kl, jnp.array([start, np.log(0.5)]))
    r_mu, r_sigma = float(params[0]), float(np.exp(params[1]))
    assert abs(r_mu - MEANS[mode]) < 0.02 and abs(r_sigma / STDS[mode] - 1) < 0.03
    # q fits one component and ignores the other: KL(q || p) = -log w of that component
    np.testing.assert_allclose(float(reverse_kl(params)), -np.log(WEIGHTS[mode]), atol=5e-3)
    assert np.exp(log_sigma) > 2.5 * r_sigma
    # each fit is the better one under its own divergence
    assert float(reverse_kl(params)) < float(reverse_kl(moment_matched))
    assert float(forward_kl(moment_matched)) < float(forward_kl(params))
