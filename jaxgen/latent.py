"""Latent-space pictures for any model with a vector latent (VAEs, GANs): the latent arrays to
decode (interpolations, one-dimension sweeps, the 2-D manifold grid of Kingma & Welling 2013,
figure 4) and a scatter plot of encoded means by class. Model-agnostic: nothing here calls a model.
"""

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri


def interpolation_latents(z0, z1, steps: int, spherical: bool = False) -> jnp.ndarray:
  """`steps` latents from z0 to z1 (both included), shape (steps, latent_dim).

  Linear: (1 - t) z0 + t z1 at t = 0, 1/(steps - 1), ..., 1. Spherical (slerp, White 2016):
  sin((1 - t) w) / sin(w) z0 + sin(t w) / sin(w) z1 with w the angle between them, which keeps
  the norm typical of a Gaussian sample along the path; linear where the two are (anti)parallel.
  """
  z0, z1 = jnp.asarray(z0, jnp.float32), jnp.asarray(z1, jnp.float32)
  if z0.ndim != 1 or z0.shape != z1.shape or steps < 2:
    raise ValueError(f"need two latent vectors of one shape (latent_dim,) and steps >= 2, got "
                     f"{z0.shape}, {z1.shape} and steps={steps}")
  t = jnp.linspace(0.0, 1.0, steps)[:, None]
  if spherical:
    cosine = jnp.dot(z0, z1) / (jnp.linalg.norm(z0) * jnp.linalg.norm(z1))
    omega = jnp.arccos(jnp.clip(cosine, -1.0, 1.0))
    sin_omega = jnp.sin(omega)
    if float(sin_omega) > 1e-6:
      return (jnp.sin((1.0 - t) * omega) * z0[None] + jnp.sin(t * omega) * z1[None]) / sin_omega
  return (1.0 - t) * z0[None] + t * z1[None]


def sweep_latents(base, values: Optional[Sequence[float]] = None,
                  dims: Optional[Sequence[int]] = None) -> jnp.ndarray:
  """One row per latent dimension in `dims` (default all), that dimension set to each of `values`
  (default linspace(-3, 3, 9)) and the others kept at `base`.

  Shape (len(dims) * len(values), latent_dim), row-major: entry r * len(values) + c is `base` with
  dimension dims[r] set to values[c], so a grid of len(values) columns shows one sweep per row.
  """
  base = jnp.asarray(base, jnp.float32)
  values = jnp.linspace(-3.0, 3.0, 9) if values is None else jnp.asarray(values, jnp.float32)
  dims = np.arange(base.shape[-1]) if dims is None else np.asarray(dims)
  if dims.ndim != 1 or np.any(dims < 0) or np.any(dims >= base.shape[-1]):
    raise ValueError(f"dims must be latent dimensions 0..{base.shape[-1] - 1}, got {dims}")
  chosen = (dims[:, None] == np.arange(base.shape[-1])[None])[:, None, :]  # (rows, 1, L)
  grid = jnp.where(chosen, values[None, :, None], base[None, None, :])
  return grid.reshape(-1, base.shape[-1])


def manifold_latents(grid_size: int = 15, dims: Sequence[int] = (0, 1), base=None,
                     latent_dim: int = 2, quantiles: Sequence[float] = (0.05, 0.95)) -> jnp.ndarray:
  """A grid_size x grid_size grid of latents evenly spaced in probability under N(0, 1):
  v_i = ndtri(q_i) (the inverse normal CDF) at q = linspace(0.05, 0.95, grid_size), so each
  cell holds the same prior mass along each axis (Kingma & Welling, figure 4).

  Shape (grid_size^2, latent_dim), row-major, laid out like a plot of the two dimensions: column c
  has dims[0] = v[c] (rising to the right), row r has dims[1] = v[grid_size - 1 - r] (rising
  upwards); every other dimension is `base` (default zeros(latent_dim)).
  """
  base = jnp.zeros((latent_dim,), jnp.float32) if base is None else jnp.asarray(base, jnp.float32)
  values = ndtri(jnp.linspace(quantiles[0], quantiles[1], grid_size))
  rows, columns = jnp.meshgrid(values[::-1], values, indexing="ij")
  grid = jnp.broadcast_to(base, (grid_size, grid_size, base.shape[-1]))
  grid = grid.at[:, :, dims[0]].set(columns).at[:, :, dims[1]].set(rows)
  return grid.reshape(-1, base.shape[-1])


def scatter_by_class(means_2d, labels, path: str, class_names: Optional[Sequence[str]] = None,
                     title: str = "") -> None:
  """A PNG scatter of 2-D points (e.g. posterior means) coloured by integer class label."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  means_2d, labels = np.asarray(means_2d), np.asarray(labels)
  if means_2d.ndim != 2 or means_2d.shape[1] != 2 or len(labels) != len(means_2d):
    raise ValueError(f"need (N, 2) points and N labels, got {means_2d.shape} and {labels.shape}")
  classes = np.unique(labels)
  colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
  fig, ax = plt.subplots(figsize=(6, 6))
  for i, c in enumerate(classes):
    chosen = labels == c
    name = class_names[int(c)] if class_names is not None else str(c)
    ax.scatter(means_2d[chosen, 0], means_2d[chosen, 1], s=4, alpha=0.6,
               color=colours(i % colours.N), label=name)
  ax.set_xlabel("z[0]")
  ax.set_ylabel("z[1]")
  ax.set_title(title)
  ax.legend(markerscale=3, fontsize=8, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
