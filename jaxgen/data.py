"""Datasets as seeded, random-access batch sources, and the stream that feeds a training loop.

A source is any object with
  image_shape: (H, W, C)
  pixel_range: (low, high), the data's own pixel values that map to the model's -1 and 1
  batch(index) -> float32 array (batch_size, H, W, C) in [-1, 1]: batch number `index` of the run
so the position of a run in its data is one integer (the number of batches drawn). The same seed
and index give the same batch, which makes resumed runs see exactly the batches an uninterrupted
run would, with nothing but that integer saved.

Pixel mapping: x_model = 2 (x - low) / (high - low) - 1, clipped to [-1, 1] (what a tanh
generator can produce); `from_model_range` inverts it for display and for samples written out.
"""

import difflib
import queue
import threading
from typing import Callable, Optional

import numpy as np

from jaxgen.blobs import BlobSpec, blob_images

BLOB_DATASETS = {"blobs1": 1, "blobs10": 10}


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


def default_image_size(dataset: str) -> int:
  """DCGAN's 64 for the photographic datasets (CelebA, Imagenette), 32 for the rest."""
  return 64 if dataset.split("/")[0] in ("celeba", "celeb_a", "imagenette") else 32


def dataset_names() -> list:
  from jaxgen import image_datasets  # here, so that blob runs never import TFDS
  return sorted(BLOB_DATASETS) + image_datasets.dataset_names()


def check_name(dataset: str) -> None:
  """A one-line error for a dataset name jaxgen does not know, naming the closest valid one."""
  if dataset in BLOB_DATASETS:
    return
  from jaxgen import image_datasets
  if image_datasets.is_image_dataset(dataset):
    image_datasets.check_name(dataset)  # a user path that is not there
    return
  names = dataset_names()
  close = difflib.get_close_matches(dataset, names, n=1, cutoff=0.0)
  raise ValueError(f"unknown --dataset={dataset!r}; did you mean {close[0]!r}? "
                   f"Known: {', '.join(names)}")


class BlobSource:
  """Gaussian-blob images drawn afresh for every batch: batch i comes from the seed (seed, i)."""

  def __init__(self, spec: BlobSpec, batch_size: int, seed: int):
    self.spec, self.batch_size, self.seed = spec, batch_size, seed
    self.image_shape = (spec.image_size, spec.image_size, 1)
    self.pixel_range = spec.pixel_range

  def batch_with_truth(self, index: int):
    rng = np.random.default_rng([self.seed, index])
    return blob_images(rng, self.batch_size, self.spec)

  def batch(self, index: int) -> np.ndarray:
    return to_model_range(self.batch_with_truth(index)[0], self.pixel_range)


def load(dataset: str, *, image_size: int, batch_size: int, seed: int,
         blob_width=1.5, blob_amplitude=1.0, data_dir: Optional[str] = None):
  """The batch source named `dataset` (see `dataset_names()`)."""
  check_name(dataset)
  if dataset not in BLOB_DATASETS:
    from jaxgen import image_datasets
    return image_datasets.load_source(dataset, image_size=image_size, batch_size=batch_size,
                                      seed=seed, data_dir=data_dir)
  spec = BlobSpec(image_size, BLOB_DATASETS[dataset], blob_width, blob_amplitude)
  return BlobSource(spec, batch_size, seed)


class Prefetch:
  """Computes `make(i)` for i = start, start + 1, ... in a background thread, `depth` ahead.

  `make` should return what the training step consumes, already placed on its devices, so the
  host work and the host-to-device copy of the next steps overlap the current step.
  """

  def __init__(self, make: Callable[[int], object], start: int, depth: int = 2):
    self._queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(make, start), daemon=True)
    self._thread.start()

  def _run(self, make, index):
    while not self._stop.is_set():
      try:
        item = (make(index), None)
      except Exception as e:  # surfaced in the training thread
        item = (None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[1] is not None:
        return
      index += 1

  def __next__(self):
    value, error = self._queue.get()
    if error is not None:
      raise error
    return value

  def __iter__(self):
    return self

  def close(self):
    self._stop.set()
    self._thread.join()
