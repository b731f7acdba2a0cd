"""Blob metrics: generated Gaussian-blob images measured against the generator's truth.

A detector finds the blobs of each image, a fit measures each one, and the distributions of
what it finds are compared between generated and real images:

1. Peaks: pixels above `threshold` that are local maxima of their 3x3 neighbourhood (ties go
   to the first pixel in raster order, so a flat top counts once).
2. Fit: the log-intensity of a Gaussian is a quadratic, so a weighted least-squares fit of
       ln I(u, v) = a + b u + c v + d u^2 + e v^2 + f u v
   over the (2 radius + 1)^2 window around a peak (pixels above 0.001 x peak, weights I^2,
   which make the log fit match an intensity fit under additive noise) gives the centre, the
   covariance S = -H^-1 (H the quadratic's Hessian) and the amplitude. For a lone blob of
   jaxgen.blobs the fit is exact (up to float rounding), at the image border too.
   width = (det S)^(1/4), the PSF sigma of an isotropic blob; elongation =
   sqrt(lambda_max / lambda_min) of S, 1 for a round blob and larger for a streak.
3. Per image: the blob count and the background (pixels farther than 3 PSF widths from every
   peak: mean level and spread).

Overlapping blobs (common with ten per image) merge: two equal blobs closer than 2 sigma make
one peak, so counts below the true count are expected for real blobs10 images too, and the
real-vs-real numbers are the reference for a generator, not the truth count itself.
"""

import math

import numpy as np

from jaxgen.blobs import BlobSpec, _bounds

# (du, dv) pairs of the 3x3 neighbourhood before the centre in raster order: a peak must be
# strictly above these and at least as high as the others, so a plateau has one peak.
_NEIGHBOURS = [(du, dv) for du in (-1, 0, 1) for dv in (-1, 0, 1) if (du, dv) != (0, 0)]
STREAK_ELONGATION = 1.5  # elongation above which a detection counts as a streak


def default_threshold(spec: BlobSpec) -> float:
  """Half the dimmest brightest pixel a lone blob can have: amplitude A exp(-1 / (4 sigma^2))
  with its centre on a pixel corner (0.89 A at sigma 1.5), for the faintest and narrowest blob
  of `spec`. Every lone blob is found; fluctuations below half a blob are not."""
  low_width = _bounds(spec.width)[0]
  return 0.5 * _bounds(spec.amplitude)[0] * math.exp(-1.0 / (4.0 * low_width ** 2))


def find_peaks(images: np.ndarray, threshold: float):
  """(image index, row, column) arrays of the local maxima above `threshold` of (N, H, W)."""
  images = np.asarray(images, np.float64)
  n, h, w = images.shape
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  peak = images > threshold
  for du, dv in _NEIGHBOURS:
    neighbour = padded[:, 1 + du:1 + du + h, 1 + dv:1 + dv + w]
    peak &= (images > neighbour) if (du, dv) < (0, 0) else (images >= neighbour)
  return np.nonzero(peak)


def fit_peaks(images: np.ndarray, index, rows, cols, radius: int = 2,
              floor: float = 1e-3) -> dict:
  """Weighted least-squares Gaussian fits around the given peaks (module docstring, step 2).

  Returns arrays over the peaks: y, x (centre in pixels, pixel (r, c) covering [r, r+1) x
  [c, c+1) as in jaxgen.blobs), width, elongation, amplitude, and `fitted` (False where the
  window does not constrain a Gaussian: too few pixels, a flat or saddle-shaped top, or a centre
  outside the window; the other values are NaN there).
  """
  images = np.asarray(images, np.float64)
  _, h, w = images.shape
  offsets = np.arange(-radius, radius + 1)
  du, dv = (g.ravel() for g in np.meshgrid(offsets, offsets, indexing="ij"))
  basis = np.stack([np.ones_like(du), du, dv, du * du, dv * dv, du * dv], axis=1).astype(float)
  r, c = rows[:, None] + du[None], cols[:, None] + dv[None]
  inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
  values = images[index[:, None], r.clip(0, h - 1), c.clip(0, w - 1)]
  peak = images[index, rows, cols]
  used = inside & (values > floor * peak[:, None]) & (values > 0)
  weights = np.where(used, values, 0.0) ** 2
  logs = np.log(np.where(used, values, 1.0))
  normal = np.einsum("pk,ki,kj->pij", weights, basis, basis)
  rhs = np.einsum("pk,ki,pk->pi", weights, basis, logs)
  # Well posed: the used pixels span three rows and three columns (else the quadratic's
  # curvature along one axis is unknown), judged by the condition number.
  scale = np.trace(normal, axis1=1, axis2=2)[:, None, None] + 1e-300
  determined = (used.sum(1) >= 6) & (np.linalg.cond(normal / scale) < 1e10)
  # A tiny ridge keeps singular systems solvable; their fits are marked failed.
  coef = np.linalg.solve(normal + 1e-12 * scale * np.eye(6), rhs[..., None])[..., 0]
  a, g = coef[:, 0], coef[:, 1:3]
  hessian = np.stack([np.stack([2 * coef[:, 3], coef[:, 5]], -1),
                      np.stack([coef[:, 5], 2 * coef[:, 4]], -1)], -2)
  det = hessian[:, 0, 0] * hessian[:, 1, 1] - hessian[:, 0, 1] ** 2
  negative_definite = (hessian[:, 0, 0] < 0) & (det > 0)
  safe = np.where(negative_definite[:, None, None], hessian, -np.eye(2))
  covariance = -np.linalg.inv(safe)
  centre = np.einsum("pij,pj->pi", covariance, g)  # -H^-1 g
  log_amplitude = a + 0.5 * np.einsum("pi,pi->p", g, centre)
  eig = np.linalg.eigvalsh(covariance)  # ascending
  fitted = (determined & negative_definite & np.all(np.abs(centre) <= radius, axis=1)
            & np.isfinite(log_amplitude))
  nan = lambda x: np.where(fitted, x, np.nan)
  with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
    return {"y": nan(rows + 0.5 + centre[:, 0]), "x": nan(cols + 0.5 + centre[:, 1]),
            "width": nan(np.sqrt(np.sqrt(eig[:, 0] * eig[:, 1]))),
            "elongation": nan(np.sqrt(eig[:, 1] / eig[:, 0])),
            "amplitude": nan(np.exp(log_amplitude)), "fitted": fitted}


def detect(images: np.ndarray, spec: BlobSpec, threshold=None, radius: int = 2) -> dict:
  """Blobs of images (N, H, W) or (N, H, W, 1) in their own pixel values (blob brightness).

  Returns per-peak arrays (`image`, `row`, `col`, and the `fit_peaks` values), per-image
  `counts` (N,) and the background pixels' `background_mean` and `background_std` (floats).
  """
  images = np.asarray(images, np.float64)
  if images.ndim == 4:
    images = images[..., 0]
  threshold = default_threshold(spec) if threshold is None else threshold
  index, rows, cols = find_peaks(images, threshold)
  found = {"image": index, "row": rows, "col": cols,
           **fit_peaks(images, index, rows, cols, radius)}
  found["counts"] = np.bincount(index, minlength=len(images))
  # Background: pixels farther than 3 PSF widths from every peak.
  reach = 3.0 * _bounds(spec.width)[1]
  near = np.zeros(images.shape, bool)
  span = np.arange(-math.floor(reach), math.floor(reach) + 1)
  _, h, w = images.shape
  for du in span:
    for dv in span:
      if du * du + dv * dv <= reach * reach:
        r, c = rows + du, cols + dv
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        near[index[ok], r[ok], c[ok]] = True
  far = images[~near]
  found["background_mean"] = float(far.mean()) if far.size else float("nan")
  found["background_std"] = float(far.std()) if far.size else float("nan")
  return found


def kolmogorov_pvalue(statistic: float, n: int) -> float:
  """P(D_n >= statistic) for the one-sample KS statistic, by Kolmogorov's asymptotic series
  with Stephens' small-sample correction."""
  if n == 0:
    return float("nan")
  lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * statistic
  if lam < 0.2:
    return 1.0
  total = sum(2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
  return float(min(max(total, 0.0), 1.0))


def uniformity(positions: np.ndarray, size: float, cells: int = 4) -> dict:
  """How uniform fitted centres (n, 2) are over [0, size)^2: the larger of the KS statistics of
  the rows and the columns against U[0, size) (with the smaller p-value), and the chi-square
  per degree of freedom of the counts in a cells x cells grid (about 1 when uniform)."""
  positions = np.asarray(positions, np.float64).reshape(-1, 2)
  n = len(positions)
  if n == 0:
    return {"centre_ks": float("nan"), "centre_ks_pvalue": float("nan"),
            "centre_chi2_per_dof": float("nan")}
  u = np.sort(np.clip(positions / size, 0.0, 1.0), axis=0)
  ranks = np.arange(1, n + 1)[:, None]
  ks = np.maximum(ranks / n - u, u - (ranks - 1) / n).max(axis=0)
  grid = np.clip((positions / size * cells).astype(int), 0, cells - 1)
  counts = np.bincount(grid[:, 0] * cells + grid[:, 1], minlength=cells * cells)
  expected = n / cells ** 2
  chi2 = float(np.sum((counts - expected) ** 2 / expected))
  return {"centre_ks": float(ks.max()),
          "centre_ks_pvalue": min(kolmogorov_pvalue(float(d), n) for d in ks),
          "centre_chi2_per_dof": chi2 / (cells * cells - 1)}


def summary(found: dict, spec: BlobSpec) -> dict:
  """Plain floats of one image set's detections (`detect`'s output)."""
  counts, ok = found["counts"], found["fitted"]
  num_peaks = len(ok)
  stats = {"num_images": float(len(counts)), "count_mean": float(counts.mean()),
           "count_std": float(counts.std()),
           "count_exact_fraction": float(np.mean(counts == spec.num_blobs)),
           "empty_fraction": float(np.mean(counts == 0)),
           "fit_failure_fraction": float(1.0 - ok.mean()) if num_peaks else float("nan")}
  for name in ("width", "amplitude", "elongation"):
    values = found[name][ok]
    stats[f"{name}_mean"] = float(values.mean()) if values.size else float("nan")
    stats[f"{name}_std"] = float(values.std()) if values.size else float("nan")
  stats["width_median"] = float(np.median(found["width"][ok])) if ok.any() else float("nan")
  stats["streak_fraction"] = float(np.mean(found["elongation"][ok] > STREAK_ELONGATION)) \
      if ok.any() else float("nan")
  stats.update(uniformity(np.stack([found["y"][ok], found["x"][ok]], -1), spec.image_size))
  stats["background_mean"] = found["background_mean"]
  stats["background_std"] = found["background_std"]
  return stats


def wasserstein_1d(a: np.ndarray, b: np.ndarray, levels: int = 2000) -> float:
  """Wasserstein-1 distance between two samples: the mean gap between their quantile functions
  (on `levels` evenly spaced quantiles)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size == 0 or b.size == 0:
    return float("nan")
  q = (np.arange(levels) + 0.5) / levels
  return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


def count_distance(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
  """Total variation distance between two distributions of blob counts (0: the same, 1:
  disjoint)."""
  top = int(max(counts_a.max(initial=0), counts_b.max(initial=0))) + 1
  pa = np.bincount(counts_a, minlength=top) / max(len(counts_a), 1)
  pb = np.bincount(counts_b, minlength=top) / max(len(counts_b), 1)
  return float(0.5 * np.abs(pa - pb).sum())


def difference(found: dict, reference: dict) -> dict:
  """How far one set's detections are from a reference set's, as plain floats."""
  ok, ref_ok = found["fitted"], reference["fitted"]
  out = {"count_tv": count_distance(found["counts"], reference["counts"])}
  for name in ("width", "amplitude", "elongation"):
    out[f"{name}_w1"] = wasserstein_1d(found[name][ok], reference[name][ref_ok])
  out["background_mean_difference"] = found["background_mean"] - reference["background_mean"]
  return out


def compare(images: np.ndarray, reference_images: np.ndarray, spec: BlobSpec,
            threshold=None) -> dict:
  """{"generated": summary, "reference": summary, "difference": difference} for images measured
  against reference (real) images, both in the blobs' own pixel values."""
  found = detect(images, spec, threshold)
  reference = detect(reference_images, spec, threshold)
  return {"generated": summary(found, spec), "reference": summary(reference, spec),
          "difference": difference(found, reference)}
