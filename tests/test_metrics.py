"""Frechet distance, KID and precision/recall against closed forms and second computations."""

import itertools
import warnings

import numpy as np
import pytest

from jaxgen import metrics


def _random_covariance(rng, d, scale=1.0):
  a = rng.normal(size=(d, 2 * d))
  return scale * a @ a.T / (2 * d)


def _trace_sqrt_by_eigvals(s1, s2):
  """Second computation: eigenvalues of the (non-symmetric) product itself."""
  return float(np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0))))


def _trace_sqrt_by_denman_beavers(s1, s2, iterations=40):
  """Third computation: the Denman-Beavers Newton iteration Y -> sqrt(A) for the product."""
  y, z = s1 @ s2, np.eye(len(s1))
  for _ in range(iterations):
    y, z = 0.5 * (y + np.linalg.inv(z)), 0.5 * (z + np.linalg.inv(y))
  return float(np.trace(y))


def _fd_reference(mu1, s1, mu2, s2, trace_sqrt):
  return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def test_frechet_distance_of_diagonal_covariances_is_its_closed_form():
  rng = np.random.default_rng(0)
  a, b = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
  mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_commuting_covariances_is_its_closed_form():
  # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: the root of the product is Q diag(sqrt(ab)) Q^T.
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
  a, b = rng.uniform(0.05, 4.0, 24), rng.uniform(0.05, 4.0, 24)
  mu = rng.normal(size=24)
  expected = mu @ mu + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = metrics.frechet_distance(mu, (q * a) @ q.T, np.zeros(24), (q * b) @ q.T)
  assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("d", [2, 32, 96])
def test_frechet_distance_of_random_covariances_matches_two_other_computations(d):
  rng = np.random.default_rng(d)
  s1, s2 = _random_covariance(rng, d), _random_covariance(rng, d, scale=2.5)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  got = metrics.frechet_distance(mu1, s1, mu2, s2)
  by_eigvals = _fd_reference(mu1, s1, mu2, s2, _trace_sqrt_by_eigvals(s1, s2))
  by_newton = _fd_reference(mu1, s1, mu2, s2, _trace_sqrt_by_denman_beavers(s1, s2))
  assert got == pytest.approx(by_eigvals, rel=1e-6)
  assert got == pytest.approx(by_newton, rel=1e-6)


def test_frechet_distance_is_zero_for_identical_statistics_and_symmetric():
  rng = np.random.default_rng(3)
  s1, s2 = _random_covariance(rng, 40), _random_covariance(rng, 40, scale=0.3)
  mu1, mu2 = rng.normal(size=40), rng.normal(size=40)
  assert abs(metrics.frechet_distance(mu1, s1, mu1, s1)) < 1e-10 * np.trace(s1)
  forward = metrics.frechet_distance(mu1, s1, mu2, s2)
  assert forward > 1.0
  assert metrics.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(forward, rel=1e-10)


def test_univariate_frechet_distance_is_the_gaussian_wasserstein_distance():
  # W2^2(N(m1, v1), N(m2, v2)) = (m1 - m2)^2 + (sqrt(v1) - sqrt(v2))^2
  assert metrics.frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_singular_product_gets_the_reference_offset_with_a_warning():
  rng = np.random.default_rng(4)
  d = 64
  with pytest.warns(UserWarning, match="only 20 samples for 64 feature dimensions"):
    mu1, s1 = metrics.feature_statistics(rng.normal(size=(20, d)))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    mu2, s2 = metrics.feature_statistics(rng.normal(size=(30, d)) * 1.5 + 0.2)
  with pytest.warns(UserWarning, match="singular; adding 1e-06"):
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
  offset = 1e-6 * np.eye(d)
  # The reference: traces of the inputs, square root of the offset product.
  expected = _fd_reference(mu1, s1, mu2, s2, _trace_sqrt_by_eigvals(s1 + offset, s2 + offset))
  assert got == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_bad_inputs_are_one_line_errors():
  eye = np.eye(3)
  not_psd = np.diag([1.0, -0.5, 1.0])
  cases = [((np.zeros(3), not_psd, np.zeros(3), eye), "not positive semi-definite"),
           ((np.zeros(3), eye, np.zeros(4), np.eye(4)), "means must be vectors of one length"),
           ((np.zeros(3), np.eye(2), np.zeros(3), eye), r"covariances must be \(3, 3\)"),
           ((np.full(3, np.nan), eye, np.zeros(3), eye), "mu1 contains NaN")]
  for args, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      metrics.frechet_distance(*args)
    assert "\n" not in str(error.value)


def test_feature_statistics_are_the_float64_mean_and_unbiased_covariance():
  x = np.random.default_rng(5).normal(size=(50, 3)).astype(np.float32)
  mu, sigma = metrics.feature_statistics(x)
  assert mu.dtype == sigma.dtype == np.float64
  centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
  np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)
  with pytest.raises(ValueError, match="at least 2 samples"):
    metrics.feature_statistics(x[:1])


# ---------------------------------------------------------------------------------------------
# KID


def test_mmd2_equals_its_definition_summed_pair_by_pair():
  rng = np.random.default_rng(6)
  x, y, m = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)) + 0.5, 6
  k = lambda a, b: (a @ b / 4 + 1) ** 3
  within = sum(k(x[i], x[j]) + k(y[i], y[j])
               for i, j in itertools.product(range(m), repeat=2) if i != j) / (m * (m - 1))
  cross = sum(k(x[i], y[j]) for i, j in itertools.product(range(m), repeat=2)) / m ** 2
  assert metrics.mmd2_unbiased(x, y) == pytest.approx(within - 2 * cross, rel=1e-12)


def _gaussian_moments(mu, sigma):
  """E x, E x x^T and E x (x) x (x) x of N(mu, sigma) (Isserlis)."""
  second = sigma + np.outer(mu, mu)
  third = (np.einsum("a,b,c->abc", mu, mu, mu) + np.einsum("a,bc->abc", mu, sigma)
           + np.einsum("b,ac->abc", mu, sigma) + np.einsum("c,ab->abc", mu, sigma))
  return mu, second, third


def _population_mmd2(moments_x, moments_y, d):
  """(x.y/d + 1)^3 = 1 + 3 (x.y)/d + 3 (x.y)^2/d^2 + (x.y)^3/d^3, and E (x.y)^j is the inner
  product of the j-th moment tensors: MMD^2 is a weighted sum of squared moment differences."""
  weights = (3 / d, 3 / d ** 2, 1 / d ** 3)
  return sum(w * np.sum((a - b) ** 2) for w, a, b in zip(weights, moments_x, moments_y))


def _kid_draws(rng, sample_x, sample_y, m, draws):
  return np.array([metrics.kid(sample_x(rng, m), sample_y(rng, m), num_subsets=1,
                               subset_size=m)[0] for _ in range(draws)])


def test_kid_is_unbiased_for_the_population_mmd2_of_two_gaussians():
  d, m, draws = 3, 8, 3000
  mu_x, mu_y = np.zeros(d), np.array([0.3, -0.2, 0.1])
  sigma_x, sigma_y = np.eye(d), np.diag([1.5, 0.8, 1.0])
  sample = lambda mu, s: lambda rng, n: rng.multivariate_normal(mu, s, size=n)
  rng = np.random.default_rng(7)
  values = _kid_draws(rng, sample(mu_x, sigma_x), sample(mu_y, sigma_y), m, draws)
  population = _population_mmd2(_gaussian_moments(mu_x, sigma_x),
                                _gaussian_moments(mu_y, sigma_y), d)
  standard_error = values.std() / np.sqrt(draws)
  assert abs(values.mean() - population) < 4 * standard_error
  # The test can tell: the biased estimate (diagonal kept) is off by
  # (E k(x, x) + E k(y, y) - E k(x, x') - E k(y, y')) / m, far beyond 4 standard errors here.
  xs = rng.multivariate_normal(mu_x, sigma_x, size=20000)
  ys = rng.multivariate_normal(mu_y, sigma_y, size=20000)
  k_self = lambda v: np.mean((np.sum(v * v, 1) / d + 1) ** 3)
  k_pair = lambda v: np.mean((np.sum(v[::2] * v[1::2], 1) / d + 1) ** 3)
  bias = (k_self(xs) + k_self(ys) - k_pair(xs) - k_pair(ys)) / m
  assert bias > 20 * standard_error


def test_kid_of_one_distribution_is_zero_on_average():
  rng = np.random.default_rng(8)
  sample = lambda rng, n: rng.exponential(size=(n, 5))
  values = _kid_draws(rng, sample, sample, 10, 2000)
  assert abs(values.mean()) < 4 * values.std() / np.sqrt(len(values))


def test_kid_subsets_mean_and_std():
  rng = np.random.default_rng(9)
  x, y = rng.normal(size=(300, 4)), rng.normal(size=(200, 4)) + 1.0
  mean, std = metrics.kid(x, y, num_subsets=20, subset_size=100, seed=1)
  again = metrics.kid(x, y, num_subsets=20, subset_size=100, seed=1)
  assert (mean, std) == again and mean > 4 * std > 0
  with pytest.raises(ValueError, match="one D"):
    metrics.kid(x, y[:, :3])


# ---------------------------------------------------------------------------------------------
# Precision and recall


def test_knn_radii_in_batches_equal_a_full_sort():
  x = np.random.default_rng(10).normal(size=(57, 6))
  full = np.sort(np.linalg.norm(x[:, None] - x[None], axis=-1), axis=1)[:, 3]
  np.testing.assert_allclose(metrics.knn_radii(x, k=3, batch_size=8), full, rtol=1e-10)


def test_precision_recall_of_identical_and_disjoint_sets():
  x = np.random.default_rng(11).normal(size=(300, 8))
  assert metrics.precision_recall(x, x.copy(), batch_size=64) == {"precision": 1.0,
                                                                  "recall": 1.0}
  far = x + 20.0
  assert metrics.precision_recall(x, far) == {"precision": 0.0, "recall": 0.0}


def test_dropping_a_mode_keeps_precision_and_halves_recall():
  rng = np.random.default_rng(12)
  modes = np.array([[-10.0, 0.0], [10.0, 0.0]])
  real = modes[rng.integers(0, 2, 2000)] + rng.normal(size=(2000, 2))
  fake = modes[0] + rng.normal(size=(2000, 2))
  scores = metrics.precision_recall(real, fake, k=3, batch_size=500)
  assert scores["precision"] > 0.97
  assert scores["recall"] == pytest.approx(np.mean(real[:, 0] < 0), abs=0.03)
  # Batching does not change the answer.
  assert metrics.precision_recall(real, fake, k=3, batch_size=77) == scores
