"""Gaussian-blob images: the synthetic data of the point-source studies, with known truth.

Each image is the sum of `num_blobs` isotropic Gaussian blobs, a point source of amplitude A
convolved with a Gaussian point-spread function of standard deviation `width` pixels, sampled at
the pixel centres:

    I[y, x] = sum_k A_k exp(-((y + 0.5 - cy_k)^2 + (x + 0.5 - cx_k)^2) / (2 width_k^2))

Pixel (row y, column x) covers [y, y+1) x [x, x+1), so centres drawn uniformly from
[0, size)^2 can sit anywhere in the image, and blobs may overlap (ten blobs per image often
merge). Width and amplitude are fixed numbers or (low, high) ranges drawn uniformly per blob.
"""

import dataclasses
from typing import Union

import numpy as np

Range = Union[float, tuple]


def _bounds(value: Range) -> tuple:
  return (float(value), float(value)) if np.isscalar(value) else tuple(map(float, value))


@dataclasses.dataclass(frozen=True)
class BlobSpec:
  image_size: int = 32
  num_blobs: int = 1
  width: Range = 1.5  # PSF standard deviation in pixels, or a (low, high) range
  amplitude: Range = 1.0  # peak of a lone blob, or a (low, high) range

  def __post_init__(self):
    if self.image_size < 1 or self.num_blobs < 1:
      raise ValueError(f"blob image_size and num_blobs must be positive, got {self.image_size} "
                       f"and {self.num_blobs}")
    for name in ("width", "amplitude"):
      low, high = _bounds(getattr(self, name))
      if not 0 < low <= high:
        raise ValueError(f"blob {name} must be positive (a number or a (low, high) range), "
                         f"got {getattr(self, name)}")

  @property
  def pixel_range(self) -> tuple:
    """Pixel values mapped to the model's [-1, 1]: zero to the brightest lone-blob peak, doubled
    when blobs can overlap so that two merged peaks still fit (brighter pixels are clipped)."""
    top = _bounds(self.amplitude)[1]
    return (0.0, top if self.num_blobs == 1 else 2.0 * top)


def blob_images(rng: np.random.Generator, n: int, spec: BlobSpec):
  """`n` blob images (n, size, size, 1) float32 and their true parameters.

  Returns (images, truth) with truth = {"centres": (n, k, 2) as (y, x) in pixels,
  "widths": (n, k), "amplitudes": (n, k)}. Vectorised: one separable outer product per blob,
  no Python loop over images.
  """
  k = spec.num_blobs
  centres = rng.uniform(0.0, spec.image_size, size=(n, k, 2))
  widths = rng.uniform(*_bounds(spec.width), size=(n, k))
  amplitudes = rng.uniform(*_bounds(spec.amplitude), size=(n, k))
  pixels = np.arange(spec.image_size) + 0.5
  # profile[n, k, axis, pixel]: the Gaussian along rows (axis 0) and columns (axis 1)
  offsets = pixels[None, None, None, :] - centres[..., None]
  profile = np.exp(-0.5 * (offsets / widths[..., None, None]) ** 2)
  images = np.einsum("nk,nky,nkx->nyx", amplitudes, profile[:, :, 0], profile[:, :, 1],
                     optimize=True)
  truth = {"centres": centres, "widths": widths, "amplitudes": amplitudes}
  return images[..., None].astype(np.float32), truth
