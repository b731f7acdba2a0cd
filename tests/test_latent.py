"""Latent grids: exact layouts, interpolation endpoints, the manifold's normal quantiles, PNGs."""

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from jaxgen import latent


def test_linear_interpolation_runs_from_z0_to_z1_in_equal_steps():
  z0, z1 = np.array([1.0, -2.0, 0.5]), np.array([3.0, 2.0, -1.5])
  path = np.asarray(latent.interpolation_latents(z0, z1, 5))
  assert path.shape == (5, 3)
  np.testing.assert_array_equal(path[0], z0)
  np.testing.assert_array_equal(path[-1], z1)
  np.testing.assert_allclose(path[2], (z0 + z1) / 2, rtol=1e-6)
  np.testing.assert_allclose(np.diff(path, axis=0), np.broadcast_to((z1 - z0) / 4, (4, 3)),
                             rtol=1e-5)


def test_spherical_interpolation_follows_the_great_circle():
  z0, z1 = np.array([2.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])  # orthogonal, norm 2
  path = np.asarray(latent.interpolation_latents(z0, z1, 7, spherical=True))
  np.testing.assert_allclose(path[0], z0, atol=1e-6)
  np.testing.assert_allclose(path[-1], z1, atol=1e-6)
  angle = np.linspace(0, np.pi / 2, 7)
  np.testing.assert_allclose(path, 2 * np.stack([np.cos(angle), np.sin(angle), 0 * angle], 1),
                             atol=1e-6)
  # parallel vectors: no angle to follow, the linear path
  np.testing.assert_allclose(latent.interpolation_latents(z0, 3 * z0, 3, spherical=True),
                             latent.interpolation_latents(z0, 3 * z0, 3), atol=1e-6)
  with pytest.raises(ValueError, match="steps >= 2"):
    latent.interpolation_latents(z0, z1, 1)


def test_sweep_layout_row_is_dimension_column_is_value():
  base = np.array([0.5, -1.0, 2.0, 0.25])
  values = np.array([-2.0, 0.0, 1.0])
  dims = [2, 0]
  sweep = np.asarray(latent.sweep_latents(base, values, dims))
  assert sweep.shape == (len(dims) * len(values), 4)
  for r, d in enumerate(dims):
    for c, v in enumerate(values):
      expected = base.copy()
      expected[d] = v
      np.testing.assert_array_equal(sweep[r * len(values) + c], expected)
  default = np.asarray(latent.sweep_latents(np.zeros(3)))
  assert default.shape == (3 * 9, 3)
  np.testing.assert_allclose(default[9 * 1:9 * 2, 1], np.linspace(-3, 3, 9), rtol=1e-6)
  with pytest.raises(ValueError, match="latent dimensions 0..3"):
    latent.sweep_latents(base, values, [4])


def test_manifold_grid_is_the_normal_quantiles_laid_out_like_a_plot():
  n = 5
  grid = np.asarray(latent.manifold_latents(n, dims=(2, 0), base=np.array([9.0, 8.0, 7.0])))
  assert grid.shape == (n * n, 3)
  v = stats.norm.ppf(np.linspace(0.05, 0.95, n))
  np.testing.assert_allclose(v[[0, -1]], [-1.6448536, 1.6448536], rtol=1e-6)  # the tables' 5%
  for r in range(n):
    for c in range(n):
      np.testing.assert_allclose(grid[r * n + c], [v[n - 1 - r], 8.0, v[c]], rtol=1e-5, atol=1e-6)
  two = np.asarray(latent.manifold_latents(15))
  assert two.shape == (225, 2)
  np.testing.assert_allclose(two[7 * 15 + 7], [0.0, 0.0], atol=1e-6)  # the middle is the median


def test_scatter_by_class_writes_a_png(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 20)
  points = rng.standard_normal((60, 2)) + labels[:, None]
  path = tmp_path / "scatter.png"
  latent.scatter_by_class(points, labels, str(path), class_names=["a", "b", "c"], title="means")
  with Image.open(path) as image:
    assert image.format == "PNG" and image.size == (600, 600)
    # not blank: the three classes' colours are there
    assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 10
  with pytest.raises(ValueError, match=r"need \(N, 2\) points"):
    latent.scatter_by_class(points[:, :1], labels, str(path))
