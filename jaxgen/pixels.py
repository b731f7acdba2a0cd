"""The pixel mapping every data source shares: the data's own values to the model's [-1, 1].

x_model = 2 (x - low) / (high - low) - 1, clipped to [-1, 1] (what a tanh generator can produce),
for the source's `pixel_range = (low, high)`; `from_model_range` inverts it for display and for
samples written out. Its own module so that the image modules and `jaxgen.data` (which imports
them) both use it without importing each other.
"""

import numpy as np

UINT8_RANGE = (0.0, 255.0)


def to_model_range(x: np.ndarray, pixel_range) -> np.ndarray:
  low, high = pixel_range
  # One float32 copy, scaled in place: several times faster than float64 temporaries, and this
  # runs on every batch.
  scale = np.float32(2.0 / (high - low))
  model = np.asarray(x).astype(np.float32)
  model *= scale
  model -= np.float32(low * scale + 1.0)
  return np.clip(model, -1.0, 1.0, out=model)


def from_model_range(x: np.ndarray, pixel_range) -> np.ndarray:
  low, high = pixel_range
  return low + (np.asarray(x, np.float32) + 1.0) * ((high - low) / 2.0)
