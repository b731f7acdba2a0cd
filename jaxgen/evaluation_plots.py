"""Pictures of an evaluation: feature clouds of real and generated images, blob histograms.

matplotlib is imported inside each function (Agg backend), so importing this module costs
nothing and needs no display.
"""

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def principal_components(reference: np.ndarray, count: int):
  """(mean, (D, count) directions) of the largest-variance directions of `reference`."""
  reference = np.asarray(reference, np.float64)
  mean = reference.mean(axis=0)
  _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
  return mean, vt[:count].T


def feature_scatter(real: np.ndarray, generated: np.ndarray, path: str, components: int = 4,
                    title: str = "", max_points: int = 2000, seed: int = 0) -> None:
  """Pairwise scatter plots of the first `components` principal components (of the real
  features) for real and generated features, their histograms on the diagonal."""
  plt = _pyplot()
  components = min(components, real.shape[1])
  mean, directions = principal_components(real, components)
  rng = np.random.default_rng(seed)
  pick = lambda x: x[rng.permutation(len(x))[:max_points]]
  real_pc, fake_pc = ((pick(np.asarray(x, np.float64)) - mean) @ directions
                      for x in (real, generated))
  fig, axes = plt.subplots(components, components, figsize=(2.2 * components, 2.2 * components),
                           squeeze=False)
  for i in range(components):
    for j in range(components):
      ax = axes[i, j]
      if i == j:
        bins = np.histogram_bin_edges(np.concatenate([real_pc[:, i], fake_pc[:, i]]), 40)
        ax.hist(real_pc[:, i], bins, density=True, alpha=0.5, label="real")
        ax.hist(fake_pc[:, i], bins, density=True, alpha=0.5, label="generated")
      else:
        ax.scatter(real_pc[:, j], real_pc[:, i], s=1.5, alpha=0.3, label="real")
        ax.scatter(fake_pc[:, j], fake_pc[:, i], s=1.5, alpha=0.3, label="generated")
      ax.tick_params(labelsize=6)
      if i == components - 1:
        ax.set_xlabel(f"PC {j + 1}", fontsize=8)
      if j == 0:
        ax.set_ylabel(f"PC {i + 1}", fontsize=8)
  axes[0, 0].legend(fontsize=6, markerscale=4)
  fig.suptitle(title or "features: principal components of the real set", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def blob_histograms(sets: dict, path: str, true_count: int, title: str = "") -> None:
  """Histograms of blob counts, fitted widths, amplitudes and elongations, one colour per set
  (`sets`: name -> `jaxgen.blob_metrics.detect` output)."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 4, figsize=(13, 3.0))
  top = max(int(found["counts"].max(initial=0)) for found in sets.values()) + 1
  count_bins = np.arange(max(top, true_count + 1) + 1) - 0.5
  for name, found in sets.items():
    axes[0].hist(found["counts"], count_bins, density=True, alpha=0.45, label=name)
  axes[0].axvline(true_count, color="k", lw=0.8, ls="--")
  axes[0].set_title(f"blobs per image (truth {true_count})", fontsize=9)
  for ax, key in zip(axes[1:], ("width", "amplitude", "elongation")):
    values = {name: found[key][found["fitted"]] for name, found in sets.items()}
    pooled = np.concatenate([v for v in values.values() if v.size] or [np.zeros(1)])
    low, high = np.percentile(pooled, [0.5, 99.5])
    bins = np.linspace(low, high + 1e-9, 50)
    for name, v in values.items():
      ax.hist(np.clip(v, low, high), bins, density=True, alpha=0.45, label=name)
    ax.set_title(f"fitted {key}", fontsize=9)
  for ax in axes:
    ax.tick_params(labelsize=7)
  axes[0].legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
