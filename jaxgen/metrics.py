"""Sample-quality metrics of generative models: pure functions over feature arrays.

Features are (N, D) arrays (numpy or jax) of one feature network's outputs on N images; every
function here computes in float64 with numpy.

- Frechet distance (Heusel et al. 2017, eq. 6; "FID" on Inception pool features):
      d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))
  between the Gaussians fitted to two feature sets.
- Kernel Inception Distance (Binkowski et al. 2018, sec. 3 and app. D): the unbiased estimate
  of MMD^2 (Gretton et al. 2012, eq. 3) with the kernel k(x, y) = (x.y / D + 1)^3, averaged
  over random subsets.
- Improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-2): the fraction of
  generated samples inside the real k-NN manifold, and of real samples inside the generated one.
"""

import warnings

import numpy as np

# pytorch-fid's regulariser of a singular covariance product (Heusel et al.'s TTUR code too).
FID_OFFSET = 1e-6
# Largest imaginary part tolerated in Tr sqrt(S_1 S_2) before the inputs count as no covariances.
MAX_IMAGINARY = 1e-3


def feature_statistics(features) -> tuple:
  """(mean (D,), covariance (D, D)) in float64, the covariance unbiased (divided by N - 1).

  Warns when N < D: the covariance is then singular, and the Frechet distance falls back to a
  regularised product (FID_OFFSET), which is biased; use at least D samples.
  """
  x = np.asarray(features, np.float64)
  if x.ndim != 2:
    raise ValueError(f"features must be (N, D), got shape {x.shape}")
  n, d = x.shape
  if n < 2:
    raise ValueError(f"feature statistics need at least 2 samples, got {n}")
  if not np.all(np.isfinite(x)):
    raise ValueError("features contain NaN or infinity")
  if n < d:
    warnings.warn(f"only {n} samples for {d} feature dimensions: the covariance is singular and "
                  f"the Frechet distance is biased; use at least {d} samples", stacklevel=2)
  return x.mean(axis=0), np.cov(x, rowvar=False).reshape(d, d)


def _psd_root(sigma: np.ndarray, name: str) -> np.ndarray:
  """Symmetric square root of a covariance by eigen-decomposition; tiny negative eigenvalues
  (rounding) count as zero, large ones mean `sigma` is no covariance."""
  eigenvalues, vectors = np.linalg.eigh(sigma)
  if not np.all(np.isfinite(eigenvalues)):
    return np.full_like(sigma, np.nan)
  imaginary = np.sqrt(max(-eigenvalues.min(), 0.0))
  if imaginary > MAX_IMAGINARY:
    raise ValueError(f"{name} is not positive semi-definite (eigenvalue {eigenvalues.min():.3g}): "
                     f"not a covariance matrix")
  return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray):
  """(Tr (S_1 S_2)^(1/2), singular) from the symmetric form sqrt(S_1) S_2 sqrt(S_1).

  That matrix is similar to S_1 S_2 (same eigenvalues) and symmetric positive semi-definite, so
  the trace is the sum of the square roots of its eigenvalues, from one `eigvalsh`.
  """
  root1 = _psd_root(sigma1, "sigma1")
  product = root1 @ sigma2 @ root1
  product = 0.5 * (product + product.T)
  if not np.all(np.isfinite(product)):
    return np.nan, True
  eigenvalues = np.linalg.eigvalsh(product)
  imaginary = np.sqrt(max(-eigenvalues.min(), 0.0))
  if imaginary > MAX_IMAGINARY:
    raise ValueError(f"Tr sqrt(sigma1 sigma2) has an imaginary component {imaginary:.3g}: the "
                     f"covariances are not positive semi-definite")
  top = max(eigenvalues.max(), 0.0)
  # Rank deficient to working precision: where pytorch-fid's matrix square root fails.
  singular = eigenvalues.min() <= len(eigenvalues) * np.finfo(np.float64).eps * top
  return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()), bool(singular)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = FID_OFFSET) -> float:
  """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  Heusel et al. 2017, eq. 6. The reference (TTUR, pytorch-fid) safeguards are kept: when the
  product sigma1 sigma2 is singular or its root non-finite, `eps` is added to both diagonals for
  the square-root term (with a warning; the traces stay those of the inputs, as there, so
  identical singular statistics give -2 D eps rather than 0); an imaginary part above 1e-3 in
  the trace of the root is an error (the inputs are no covariances).
  """
  mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
  sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,):
    raise ValueError(f"means must be vectors of one length, got shapes {mu1.shape} and "
                     f"{mu2.shape}")
  if sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f"covariances must be ({d}, {d}) for means of length {d}, got "
                     f"{sigma1.shape} and {sigma2.shape}")
  for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{name} contains NaN or infinity")
  sigma1, sigma2 = 0.5 * (sigma1 + sigma1.T), 0.5 * (sigma2 + sigma2.T)
  trace_root, singular = _trace_sqrt_product(sigma1, sigma2)
  if singular or not np.isfinite(trace_root):
    warnings.warn(f"Frechet distance: the covariance product is singular; adding {eps} to the "
                  f"diagonals of both covariances for its square root", stacklevel=2)
    offset = eps * np.eye(d)
    trace_root, _ = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    if not np.isfinite(trace_root):
      raise ValueError("Frechet distance: the square root of the covariance product is not "
                       "finite even after regularisation")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


def fid_from_features(features1, features2) -> float:
  """Frechet distance between the Gaussians fitted to two (N, D) feature sets."""
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """KID's kernel k(x, y) = (x.y / D + 1)^3 between the rows of x and y."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of two equal-size samples (Gretton et al. 2012, eq. 3), cubic kernel.

  The within-set sums leave out the diagonal k(x_i, x_i); the cross term keeps every pair.
  """
  m = x.shape[0]
  k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.mean())


def kid(features1, features2, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple:
  """(mean, std) of the unbiased MMD^2 over `num_subsets` random subsets (Binkowski et al.).

  Each subset draws min(subset_size, N1, N2) rows without replacement from each set, as the
  reference implementation does; the mean is an unbiased estimate of the population MMD^2
  (zero in expectation when both sets come from one distribution, so it can be negative).
  """
  x = np.asarray(features1, np.float64)
  y = np.asarray(features2, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"KID needs two (N, D) feature sets of one D, got {x.shape} and {y.shape}")
  m = min(subset_size, len(x), len(y))
  if m < 2 or num_subsets < 1:
    raise ValueError(f"KID needs subsets of at least 2 samples and at least one subset, got "
                     f"{m} and {num_subsets}")
  rng = np.random.default_rng(seed)
  values = np.array([mmd2_unbiased(x[rng.choice(len(x), m, replace=False)],
                                   y[rng.choice(len(y), m, replace=False)])
                     for _ in range(num_subsets)])
  return float(values.mean()), float(values.std())


def _squared_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
  d = np.einsum("ij,ij->i", a, a)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
  return np.maximum(d, 0.0)


def knn_radii(features, k: int = 3, batch_size: int = 1000) -> np.ndarray:
  """Distance of every row to its k-th nearest other row (its k-NN hypersphere radius)."""
  x = np.asarray(features, np.float64)
  if not 0 < k < len(x):
    raise ValueError(f"k-NN radii need 0 < k < N, got k={k} with N={len(x)}")
  x_sq = np.einsum("ij,ij->i", x, x)
  radii = np.empty(len(x))
  for start in range(0, len(x), batch_size):
    d = _squared_distances(x[start:start + batch_size], x, x_sq)
    # position 0 of each sorted row is the point itself (distance 0)
    radii[start:start + batch_size] = np.sqrt(np.partition(d, k, axis=1)[:, k])
  return radii


def manifold_coverage(manifold, radii: np.ndarray, queries, batch_size: int = 1000) -> float:
  """Fraction of `queries` inside at least one hypersphere (centre a manifold row, its radius)."""
  m = np.asarray(manifold, np.float64)
  q = np.asarray(queries, np.float64)
  m_sq, radii_sq = np.einsum("ij,ij->i", m, m), np.asarray(radii, np.float64) ** 2
  inside = 0
  for start in range(0, len(q), batch_size):
    d = _squared_distances(q[start:start + batch_size], m, m_sq)
    inside += int(np.any(d <= radii_sq[None, :], axis=1).sum())
  return inside / len(q)


def precision_recall(real, fake, k: int = 3, batch_size: int = 1000) -> dict:
  """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

  precision: fraction of fake samples within the k-th-neighbour radius of some real sample
  (how many samples look real); recall: fraction of real samples within the fake manifold (how
  much of the real distribution is covered). Distances go in batches of `batch_size` rows, so
  memory stays at batch_size x N floats (10k x 10k runs in 80 MB per batch of 1000).
  """
  real = np.asarray(real, np.float64)
  fake = np.asarray(fake, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"precision/recall need two (N, D) feature sets of one D, got "
                     f"{real.shape} and {fake.shape}")
  precision = manifold_coverage(real, knn_radii(real, k, batch_size), fake, batch_size)
  recall = manifold_coverage(fake, knn_radii(fake, k, batch_size), real, batch_size)
  return {"precision": precision, "recall": recall}
