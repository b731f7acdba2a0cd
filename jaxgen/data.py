"""Datasets as seeded, random-access batch sources, and the stream that feeds a training loop.

A source is any object with
  image_shape: (H, W, C)
  pixel_range: (low, high), the data's own pixel values that map to the model's -1 and 1
  split: 'train' or 'test'
  batch(index) -> float32 array (batch_size, H, W, C) in [-1, 1]: batch number `index` of the run
  num_examples, batches_per_epoch = ceil(num_examples / batch_size)
  eval_batch(i) -> (images, labels or None): examples i*B .. (i+1)*B - 1 of the split, in a fixed
    order (the last batch may be short), so i = 0 .. batches_per_epoch - 1 visits it once
so the position of a run in its data is one integer (the number of batches drawn). The same seed
and index give the same batch, which makes resumed runs see exactly the batches an uninterrupted
run would, with nothing but that integer saved.

The sources: Gaussian blobs (`BlobSource`, here), TFDS datasets and the user's images
(`image_source.ImageSource`, over `image_cache`, over `tfds_prepare`). This module imports those;
they never import it. Pixel mapping: `jaxgen.pixels` (`to_model_range`, `from_model_range`,
re-exported here).

Blob splits: the stream is unlimited, so each split's evaluation set is a fixed
`BLOB_EVAL_EXAMPLES` images (drawn in blocks, the same for any batch size), and `eval_batch`
gives no labels (every image of a blob dataset has the same number of blobs;
`eval_batch_with_truth` gives the true centres, widths and amplitudes). Every stream has its own
seed, so the test split never holds a train image.
"""

import difflib
import queue
import threading
from typing import Callable, Optional

import numpy as np

from jaxgen import image_cache, image_source
from jaxgen.blobs import BlobSpec, blob_images
from jaxgen.pixels import from_model_range, to_model_range  # noqa: F401 (re-exported)
from jaxgen.tfds_prepare import SPLITS, DatasetError, check_split  # noqa: F401 (re-exported)

BLOB_DATASETS = {"blobs1": 1, "blobs10": 10}
BLOB_EVAL_EXAMPLES = 10_000  # the size of each blob split's fixed evaluation set
BLOB_EVAL_BLOCK = 32  # evaluation images drawn per seed, so the set does not depend on the batch
# numpy SeedSequence spawn keys: train batches keep the bare [seed, index] of earlier runs; every
# other stream adds its own key, so no two streams share a seed.
BLOB_STREAMS = {("train", "batch"): (), ("test", "batch"): (1,),
                ("train", "eval"): (2,), ("test", "eval"): (3,)}


def default_image_size(dataset: str) -> int:
  """DCGAN's 64 for the photographic datasets (CelebA, Imagenette), 32 for the rest."""
  return 64 if dataset.split("/")[0] in ("celeba", "celeb_a", "imagenette") else 32


def dataset_names() -> list:
  return sorted(BLOB_DATASETS) + image_cache.dataset_names()


def check_name(dataset: str) -> None:
  """A one-line error for a dataset name jaxgen does not know, naming the closest valid one."""
  if dataset in BLOB_DATASETS:
    return
  if image_cache.is_image_dataset(dataset):
    image_cache.check_name(dataset)  # a user path that is not there
    return
  names = dataset_names()
  close = difflib.get_close_matches(dataset, names, n=1, cutoff=0.0)
  raise ValueError(f"unknown --dataset={dataset!r}; did you mean {close[0]!r}? "
                   f"Known: {', '.join(names)}")


def _blob_rng(seed: int, index: int, stream: tuple) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([seed, index], spawn_key=stream))


def _blob_eval_block(spec: BlobSpec, seed: int, split: str, block: int):
  """Images BLOB_EVAL_BLOCK * block .. of the split's evaluation set, and their truth."""
  return blob_images(_blob_rng(seed, block, BLOB_STREAMS[split, "eval"]), BLOB_EVAL_BLOCK, spec)


class BlobSource:
  """Gaussian-blob images drawn afresh for every batch: batch i of the train split comes from the
  seed (seed, i), of the test split from (seed, i) with its own spawn key (`BLOB_STREAMS`)."""

  def __init__(self, spec: BlobSpec, batch_size: int, seed: int, split: str = "train"):
    check_split(split)
    self.spec, self.batch_size, self.seed, self.split = spec, batch_size, seed, split
    self.image_shape = (spec.image_size, spec.image_size, 1)
    self.pixel_range = spec.pixel_range
    self.num_examples = BLOB_EVAL_EXAMPLES  # of the evaluation set; the stream is unlimited

  @property
  def batches_per_epoch(self) -> int:
    return -(-self.num_examples // self.batch_size)

  def batch_with_truth(self, index: int):
    rng = _blob_rng(self.seed, index, BLOB_STREAMS[self.split, "batch"])
    return blob_images(rng, self.batch_size, self.spec)

  def batch(self, index: int) -> np.ndarray:
    return to_model_range(self.batch_with_truth(index)[0], self.pixel_range)

  def eval_batch_with_truth(self, i: int):
    """(pixel values, truth) of examples i*B .. (i+1)*B - 1 of the split's evaluation set."""
    window = image_source.eval_window(i, self.batch_size, self.num_examples,
                                      f"the blob {self.split} split")
    blocks = range(window.start // BLOB_EVAL_BLOCK, (window.stop - 1) // BLOB_EVAL_BLOCK + 1)
    drawn = [_blob_eval_block(self.spec, self.seed, self.split, b) for b in blocks]
    offset = slice(window.start - blocks[0] * BLOB_EVAL_BLOCK,
                   window.stop - blocks[0] * BLOB_EVAL_BLOCK)
    images = np.concatenate([d[0] for d in drawn])[offset]
    truth = {k: np.concatenate([d[1][k] for d in drawn])[offset] for k in drawn[0][1]}
    return images, truth

  def eval_batch(self, i: int):
    """(images in [-1, 1], None): the split's evaluation set in order; blobs have no labels."""
    return to_model_range(self.eval_batch_with_truth(i)[0], self.pixel_range), None


def load(dataset: str, *, image_size: int, batch_size: int, seed: int,
         blob_width=1.5, blob_amplitude=1.0, data_dir: Optional[str] = None,
         split: str = "train"):
  """The batch source of `split` ('train' or 'test') of `dataset` (see `dataset_names()`).

  TFDS datasets serve their test split as 'test' (Imagenette its 'validation' split); the user's
  images have 'train' only; blob splits are disjoint random streams.
  """
  check_name(dataset)
  check_split(split)
  if dataset not in BLOB_DATASETS:
    return image_source.load_source(dataset, image_size=image_size, batch_size=batch_size,
                                    seed=seed, data_dir=data_dir, split=split)
  spec = BlobSpec(image_size, BLOB_DATASETS[dataset], blob_width, blob_amplitude)
  return BlobSource(spec, batch_size, seed, split)


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
