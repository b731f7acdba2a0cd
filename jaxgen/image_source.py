"""Batches of cached images: the shuffled training stream and the split in order for evaluation.

`ImageSource.batch(index)`: batch `index` of the run is a slice of a stream of per-epoch
permutations drawn from `np.random.default_rng([seed, epoch])`, so the run's position in its data
is one integer and resumed runs see the same batches. `ImageSource.eval_batch(i)`: examples
i*B .. (i+1)*B - 1 of the split in their cached order, unshuffled, with their labels, so that
`eval_batch(0 .. batches_per_epoch - 1)` visits the whole split exactly once.
"""

import functools
import os
import shutil
import tempfile
import time
from typing import Optional

import numpy as np

from jaxgen.image_cache import cached_images, named_cache_folder
from jaxgen.pixels import UINT8_RANGE, to_model_range
from jaxgen.tfds_prepare import NAMED_DATASETS, DatasetError, default_data_dir


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, num_examples: int, epoch: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the examples."""
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.flags.writeable = False
  return order


def batch_indices(seed: int, num_examples: int, batch_size: int, index: int) -> np.ndarray:
  """Example indices of batch `index`: positions [index*B, (index+1)*B) of the epochs end to end."""
  start, stop = index * batch_size, (index + 1) * batch_size
  epochs = range(start // num_examples, (stop - 1) // num_examples + 1)
  if len(epochs) == 1:  # the usual case: a slice, with no copy of the whole order
    offset = epochs[0] * num_examples
    return epoch_order(seed, num_examples, epochs[0])[start - offset:stop - offset]
  stream = np.concatenate([epoch_order(seed, num_examples, e) for e in epochs])
  offset = epochs[0] * num_examples
  return stream[start - offset:stop - offset]


def eval_window(i: int, batch_size: int, num_examples: int, name: str = "the split") -> slice:
  """Positions i*B .. (i+1)*B - 1 of a split of `num_examples`, the last batch cut short; a
  one-line IndexError for a batch number outside the split."""
  count = -(-num_examples // batch_size)
  if not 0 <= i < count:
    raise IndexError(f"eval_batch({i}): {name} has {count} batches of {batch_size} "
                     f"(0 .. {count - 1}) for its {num_examples} examples")
  return slice(i * batch_size, min((i + 1) * batch_size, num_examples))


class ImageSource:
  """Batches of cached images, every image once per epoch, batch i a function of (seed, i)."""

  def __init__(self, images: np.ndarray, labels: Optional[np.ndarray], pixel_range,
               batch_size: int, seed: int, name: str = "", class_names=None,
               split: str = "train"):
    self.images, self.label_array = images, labels
    self.pixel_range = tuple(float(v) for v in pixel_range)
    self.batch_size, self.seed, self.name, self.split = batch_size, seed, name, split
    self.class_names = class_names
    self.image_shape = tuple(images.shape[1:])
    self.num_examples = len(images)

  @property
  def batches_per_epoch(self) -> int:
    """The batches of `eval_batch` that cover the split once (the last may be short)."""
    return -(-self.num_examples // self.batch_size)

  def indices(self, index: int) -> np.ndarray:
    return batch_indices(self.seed, self.num_examples, self.batch_size, index)

  def pixels(self, index: int) -> np.ndarray:
    """Batch `index` in the data's own pixel values (uint8 or float32)."""
    return self.images[self.indices(index)]

  def batch(self, index: int) -> np.ndarray:
    return to_model_range(self.pixels(index), self.pixel_range)

  def labels(self, index: int) -> np.ndarray:
    """The labels of the images of `batch(index)`, in the same order."""
    if self.label_array is None:
      raise DatasetError(f"{self.name} has no labels")
    return self.label_array[self.indices(index)]

  def eval_batch(self, i: int):
    """(images in [-1, 1], labels or None): examples i*B .. (i+1)*B - 1 of the split in order."""
    window = eval_window(i, self.batch_size, self.num_examples,
                         f"{self.name or 'the source'}'s {self.split} split")
    labels = None if self.label_array is None else self.label_array[window]
    return to_model_range(self.images[window], self.pixel_range), labels


def load_source(dataset: str, *, image_size: int, batch_size: int, seed: int,
                data_dir: Optional[str] = None, split: str = "train") -> ImageSource:
  """The batch source for a named dataset or the user's images (preparing and caching once)."""
  images, labels, meta = cached_images(dataset, image_size=image_size, split=split,
                                       data_dir=data_dir)
  return ImageSource(images, labels, meta["pixel_range"], batch_size, seed, name=dataset,
                     class_names=meta.get("class_names"), split=split)


# ---------------------------------------------------------------------------------------------
# Throughput.

REAL_SHAPES = {  # (training images, image_size, channels) when the real data is absent
    "mnist": (60000, 32, 1), "fashion_mnist": (60000, 32, 1), "cifar10": (50000, 32, 3),
    "celeba": (162770, 64, 3), "celeb_a": (162770, 64, 3), "imagenette": (9469, 64, 3),
}


def _is_cached_or_prepared(dataset: str, image_size: int, split: str, data_dir: str) -> bool:
  import tensorflow_datasets as tfds
  spec = NAMED_DATASETS[dataset]
  builder = tfds.builder(spec.tfds_id, data_dir=data_dir, file_format="array_record")
  return builder.is_prepared() or os.path.exists(
      named_cache_folder(dataset, split, image_size, data_dir))


def loader_benchmark(dataset: str, batch_size: int, data_dir: Optional[str] = None,
                     steps: int = 200, image_size: Optional[int] = None, seed: int = 0,
                     split: str = "train") -> dict:
  """Images per second that `ImageSource.batch` delivers from the memory-mapped cache.

  Uses the real cache when the dataset is prepared or cached (never downloads); otherwise a
  synthetic cache of the real shape in a temporary folder, and says so in "data".
  """
  count, default_size, channels = REAL_SHAPES[dataset]
  image_size = image_size or default_size
  data_dir = data_dir or default_data_dir()
  scratch = None
  if _is_cached_or_prepared(dataset, image_size, split, data_dir):
    source = load_source(dataset, image_size=image_size, batch_size=batch_size, seed=seed,
                         data_dir=data_dir, split=split)
    kind = "real"
  else:
    scratch = tempfile.mkdtemp(prefix="jaxgen-loader-")
    block = np.random.default_rng(seed).integers(0, 256, (4096, image_size, image_size, channels),
                                                 dtype=np.uint8)
    images = np.lib.format.open_memmap(os.path.join(scratch, "images.npy"), "w+", np.uint8,
                                       (count, image_size, image_size, channels))
    for start in range(0, count, len(block)):
      images[start:start + len(block)] = block[:count - start]
    images.flush()
    images = np.load(os.path.join(scratch, "images.npy"), mmap_mode="r")
    labels = np.arange(count, dtype=np.int32) % 10
    source = ImageSource(images, labels, UINT8_RANGE, batch_size, seed, name=dataset)
    kind = "synthetic (real shape, random pixels; the real data is not prepared here)"
  try:
    for index in range(2):  # page in and fill the epoch-order cache
      source.batch(index)
    start = time.perf_counter()
    for index in range(2, 2 + steps):
      source.batch(index)
    seconds = time.perf_counter() - start
  finally:
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)
  return {"dataset": dataset, "data": kind, "num_examples": source.num_examples,
          "image_shape": list(source.image_shape), "batch_size": batch_size, "steps": steps,
          "images_per_s": steps * batch_size / seconds,
          "batches_per_s": steps / seconds}
