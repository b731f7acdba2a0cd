"""The blob detector against the generator's truth, and the comparison statistics.

What is recoverable, measured on jaxgen.blobs' own images:
- blobs1 (and any lone blob, border included): count 1 in every image, centre, width and
  amplitude exact up to float32 rounding (the log-quadratic fit is exact for a Gaussian);
- blobs10: blobs merge, so counts fall short of 10 (about 23% of images show all ten). A blob
  farther than 5 sigma from every other one is always found, within 0.1 px, its width and
  amplitude within 3%; no image shows more than 10 peaks.
"""

import math

import numpy as np
import pytest

from jaxgen import blob_metrics
from jaxgen.blobs import BlobSpec, blob_images


def _match(found, truth):
  """For every detection, the index of the nearest true blob of its image and the distance."""
  centres = truth["centres"][found["image"]]  # (P, k, 2)
  fitted = np.stack([found["y"], found["x"]], -1)[:, None]
  distance = np.linalg.norm(centres - fitted, axis=-1)
  nearest = np.argmin(np.nan_to_num(distance, nan=np.inf), axis=1)
  return nearest, distance[np.arange(len(nearest)), nearest]


@pytest.mark.parametrize("spec", [BlobSpec(32, 1, 1.5, 1.0),
                                  BlobSpec(32, 1, (1.0, 2.5), (0.5, 1.0)),
                                  BlobSpec(20, 1, 0.8, 3.0)])
def test_lone_blobs_are_recovered_exactly(spec):
  images, truth = blob_images(np.random.default_rng(0), 500, spec)
  found = blob_metrics.detect(images, spec)
  assert np.all(found["counts"] == 1) and np.all(found["fitted"])
  k = found["image"]
  np.testing.assert_allclose(found["y"], truth["centres"][k, 0, 0], atol=1e-5)
  np.testing.assert_allclose(found["x"], truth["centres"][k, 0, 1], atol=1e-5)
  np.testing.assert_allclose(found["width"], truth["widths"][k, 0], rtol=1e-5)
  np.testing.assert_allclose(found["amplitude"], truth["amplitudes"][k, 0], rtol=1e-5)
  np.testing.assert_allclose(found["elongation"], 1.0, atol=1e-5)
  stats = blob_metrics.summary(found, spec)
  assert stats["count_exact_fraction"] == 1.0 and stats["streak_fraction"] == 0.0
  assert stats["background_mean"] < 0.01 * _max_amplitude(spec)


def _max_amplitude(spec):
  return spec.amplitude if np.isscalar(spec.amplitude) else max(spec.amplitude)


def test_blobs10_what_is_recoverable():
  spec = BlobSpec(32, 10, 1.5, 1.0)
  images, truth = blob_images(np.random.default_rng(1), 1000, spec)
  found = blob_metrics.detect(images, spec)
  assert found["counts"].max() <= 10
  assert 0.15 < np.mean(found["counts"] == 10) < 0.35  # merging is common at this density
  # Blobs farther than 5 sigma from every other centre: always found, and measured well.
  centres = truth["centres"]
  gaps = np.linalg.norm(centres[:, :, None] - centres[:, None], axis=-1) + 1e9 * np.eye(10)
  isolated = gaps.min(-1) > 5 * 1.5
  nearest, distance = _match(found, truth)
  hit = np.zeros_like(isolated)
  close = distance < 0.5
  hit[found["image"][close], nearest[close]] = True
  assert isolated.sum() > 2000 and hit[isolated].all()
  of_isolated = isolated[found["image"], nearest] & close
  assert distance[of_isolated].max() < 0.1
  k, j = found["image"][of_isolated], nearest[of_isolated]
  np.testing.assert_allclose(found["width"][of_isolated], truth["widths"][k, j], rtol=0.03)
  np.testing.assert_allclose(found["amplitude"][of_isolated], truth["amplitudes"][k, j],
                             rtol=0.03)
  # Every image has at least as many peaks as isolated blobs.
  assert np.all(found["counts"] >= isolated.sum(1))


def _gaussian_image(size, centre, covariance, amplitude=1.0):
  grid = np.arange(size) + 0.5
  d = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1) - np.asarray(centre)
  quad = np.einsum("...i,ij,...j->...", d, np.linalg.inv(covariance), d)
  return amplitude * np.exp(-0.5 * quad)


def test_elongation_measures_a_streak():
  # sigma 2 along a direction at 30 degrees, 1 across it: elongation 2, width sqrt(2).
  angle = math.radians(30)
  rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
  covariance = rotation @ np.diag([4.0, 1.0]) @ rotation.T
  image = _gaussian_image(24, (11.3, 12.6), covariance)
  found = blob_metrics.detect(image[None], BlobSpec(24, 1, 1.5, 1.0))
  assert found["counts"].tolist() == [1]
  assert found["elongation"][0] == pytest.approx(2.0, rel=1e-6)
  assert found["width"][0] == pytest.approx(math.sqrt(2.0), rel=1e-6)
  assert (found["y"][0], found["x"][0]) == pytest.approx((11.3, 12.6), abs=1e-6)
  stats = blob_metrics.summary(found, BlobSpec(24, 1, 1.5, 1.0))
  assert stats["streak_fraction"] == 1.0


def test_a_flat_top_counts_once_and_does_not_fit():
  image = np.zeros((1, 12, 12))
  image[0, 4:7, 3:6] = 1.0  # a clipped 3x3 plateau
  found = blob_metrics.detect(image, BlobSpec(12, 1, 1.5, 1.0))
  assert found["counts"].tolist() == [1] and not found["fitted"][0]


def test_uniformity_statistics_tell_uniform_from_clustered_centres():
  rng = np.random.default_rng(2)
  uniform = blob_metrics.uniformity(rng.uniform(0, 32, (4000, 2)), 32)
  clustered = blob_metrics.uniformity(rng.uniform(0, 16, (4000, 2)), 32)
  assert uniform["centre_ks"] < 1.63 / math.sqrt(4000)  # the 1% critical value
  assert uniform["centre_ks_pvalue"] > 0.01 and 0.5 < uniform["centre_chi2_per_dof"] < 1.6
  assert clustered["centre_ks"] == pytest.approx(0.5, abs=0.03)
  assert clustered["centre_ks_pvalue"] < 1e-10 and clustered["centre_chi2_per_dof"] > 100


def test_kolmogorov_pvalue_matches_known_critical_values():
  # Asymptotic critical values of sqrt(n) D: 1.358 at 5%, 1.628 at 1%.
  n = 10 ** 6
  assert blob_metrics.kolmogorov_pvalue(1.358 / math.sqrt(n), n) == pytest.approx(0.05, abs=2e-3)
  assert blob_metrics.kolmogorov_pvalue(1.628 / math.sqrt(n), n) == pytest.approx(0.01, abs=1e-3)


def test_compare_real_with_real_and_with_wider_blobs():
  spec = BlobSpec(32, 1, 1.5, 1.0)
  real, _ = blob_images(np.random.default_rng(3), 800, spec)
  other, _ = blob_images(np.random.default_rng(4), 800, spec)
  wide, _ = blob_images(np.random.default_rng(5), 800, BlobSpec(32, 1, 2.0, 0.8))
  same = blob_metrics.compare(other, real, spec)
  assert same["difference"]["count_tv"] == 0.0
  assert same["difference"]["width_w1"] < 1e-5 and same["difference"]["amplitude_w1"] < 1e-5
  shifted = blob_metrics.compare(wide, real, spec)
  assert shifted["difference"]["width_w1"] == pytest.approx(0.5, rel=1e-4)
  assert shifted["difference"]["amplitude_w1"] == pytest.approx(0.2, rel=1e-4)
  assert shifted["generated"]["width_mean"] == pytest.approx(2.0, rel=1e-5)
  assert all(isinstance(v, float) for part in shifted.values() for v in part.values())


def test_count_distance_and_wasserstein_closed_forms():
  assert blob_metrics.count_distance(np.array([1, 1, 2, 2]), np.array([1, 1, 1, 3])) == 0.5
  a = np.random.default_rng(6).normal(size=50000)
  assert blob_metrics.wasserstein_1d(a, a + 0.3) == pytest.approx(0.3, rel=1e-6)
