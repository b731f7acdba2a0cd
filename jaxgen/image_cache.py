"""Decode and resize once; cache uint8 arrays: named datasets and the user's own images.

The user's own images come as `folder:/path` (PNG/JPEG files, class labels from sub-folder
names), `npy:/path/file.npy` or `npz:/path/file.npz` (an `images` array and optionally `labels`).
`cached_images` decodes every image of a split once (a named dataset through `tfds.data_source`,
no TensorFlow, after `tfds_prepare.prepare`), crops and resizes it, and saves the result as
`.npy` under `<data_dir>/jaxgen_cache/`, which later runs memory-map.

Preprocessing (the studies' conventions): MNIST-like 28x28 digits are zero-padded to 32x32 (kept
at 28 for MLPs, resized at other sizes); CelebA is centre-cropped to 108x108 and resized (DCGAN);
CIFAR-10, Imagenette and the user's images are centre-cropped to a square and resized.

The user's images have one split, 'train' (all of them): to evaluate on held-out images, keep
them in another folder or array file and load that as a dataset of its own.
"""

import concurrent.futures
import difflib
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from typing import Optional

import numpy as np
from PIL import Image

from jaxgen import tfds_prepare
from jaxgen.pixels import UINT8_RANGE
from jaxgen.tfds_prepare import NAMED_DATASETS, DatasetError, check_split, default_data_dir

USER_PREFIXES = ("folder:", "npy:", "npz:")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CACHE_FOLDER = "jaxgen_cache"
CELEBA_CROP = 108  # DCGAN's centre crop of the 218x178 aligned faces
DECODE_CHUNK = 512
DECODE_THREADS = min(8, os.cpu_count() or 1)


def dataset_names() -> list:
  """The named datasets and the forms of the user's own."""
  return sorted(NAMED_DATASETS) + ["folder:/path", "npy:/path/file.npy", "npz:/path/file.npz"]


def is_image_dataset(dataset: str) -> bool:
  return dataset in NAMED_DATASETS or dataset.startswith(USER_PREFIXES)


def check_name(dataset: str) -> None:
  """A one-line error for an unknown name or a user path that is not there."""
  if dataset in NAMED_DATASETS:
    return
  kind, _, path = dataset.partition(":")
  if dataset.startswith(USER_PREFIXES):
    if kind == "folder" and not os.path.isdir(path):
      raise DatasetError(f"--dataset={dataset}: {path!r} is not a folder")
    if kind != "folder" and not os.path.isfile(path):
      raise DatasetError(f"--dataset={dataset}: no such file {path!r}")
    if kind != "folder" and not path.endswith("." + kind):
      raise DatasetError(f"--dataset={dataset}: a {kind}: path must end in .{kind}")
    return
  close = difflib.get_close_matches(dataset, dataset_names(), n=1, cutoff=0.0)
  raise DatasetError(f"unknown --dataset={dataset!r}; did you mean {close[0]!r}?")


def square_image(image: np.ndarray, image_size: int, crop: str) -> np.ndarray:
  """One (H, W, C) image as (image_size, image_size, C) by the dataset's convention."""
  height, width = image.shape[:2]
  if crop == "pad" and height == width and image_size == height + 4:
    return np.pad(image, ((2, 2), (2, 2), (0, 0)))  # MNIST at 32x32: the DCGAN/WGAN-GP padding
  if crop == "celeba":
    side = min(CELEBA_CROP, height, width)
  else:
    side = min(height, width)
  top, left = int(round((height - side) / 2)), int(round((width - side) / 2))
  image = image[top:top + side, left:left + side]
  if side == image_size:
    return image
  return np.stack([_resize_plane(image[..., c], image_size) for c in range(image.shape[-1])], -1)


def _resize_plane(plane: np.ndarray, image_size: int) -> np.ndarray:
  # PIL's bilinear filter widens with the scale factor, so downsampling is antialiased.
  if plane.dtype == np.uint8:
    return np.asarray(Image.fromarray(plane).resize((image_size, image_size), Image.BILINEAR))
  resized = Image.fromarray(plane.astype(np.float32), mode="F").resize(
      (image_size, image_size), Image.BILINEAR)
  return np.asarray(resized, np.float32)


class _CacheWriter:
  """Fills a cache folder under a temporary name and renames it when complete.

  `images` is a memory-mapped .npy being written, so a cache larger than memory can be built;
  an interrupted build leaves only a `.incomplete-*` folder, which is never read.
  """

  def __init__(self, folder: str, shape: tuple, dtype):
    self.folder = folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    self.staging = tempfile.mkdtemp(prefix=".incomplete-", dir=os.path.dirname(folder))
    self.images = np.lib.format.open_memmap(os.path.join(self.staging, "images.npy"), "w+",
                                            dtype, shape)

  def __enter__(self):
    return self

  def finish(self, labels: Optional[np.ndarray], meta: dict) -> None:
    self.images.flush()
    del self.images
    if labels is not None:
      np.save(os.path.join(self.staging, "labels.npy"), labels)
    with open(os.path.join(self.staging, "meta.json"), "w") as f:
      json.dump(meta, f, indent=1)
    if os.path.exists(self.folder):  # a concurrent run finished first; its cache is as good
      shutil.rmtree(self.staging)
    else:
      os.replace(self.staging, self.folder)

  def __exit__(self, kind, error, trace):
    if error is not None:
      shutil.rmtree(self.staging, ignore_errors=True)


class _Damaged(Exception):
  """A cache folder whose files do not hold what its meta.json says."""


def _read_cache(folder: str):
  """(images memory-mapped, labels or None, meta) of a complete cache folder; `_Damaged` naming
  the file when one is unreadable, truncated or of another shape than meta.json records."""
  def damaged(file, why):
    return _Damaged(f"{os.path.join(folder, file)} {why}")

  try:
    with open(os.path.join(folder, "meta.json")) as f:
      meta = json.load(f)
    expected = (meta["num_examples"], *meta["image_shape"])
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise damaged("meta.json", f"cannot be read ({error})") from None
  files = {"images.npy": expected}
  if os.path.exists(os.path.join(folder, "labels.npy")):
    files["labels.npy"] = expected[:1]
  arrays = {}
  for name, shape in files.items():
    try:
      arrays[name] = np.load(os.path.join(folder, name), mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:  # a truncated file fails its mapping
      raise damaged(name, f"is damaged ({error})") from None
    if arrays[name].shape != tuple(shape):
      raise damaged(name, f"has shape {arrays[name].shape}, not {tuple(shape)}")
  labels = arrays.get("labels.npy")
  return arrays["images.npy"], None if labels is None else np.array(labels), meta


def _cache_folder(data_dir: str, key: str) -> str:
  return os.path.join(data_dir, CACHE_FOLDER, key.replace("/", "_").replace(":", "_"))


def _progress(total: int, description: str):
  from tqdm import auto
  return auto.tqdm(total=total, desc=description, unit=" images", mininterval=2.0,
                   disable=total < 5000)


def named_cache_folder(dataset: str, split: str, image_size: int, data_dir: str) -> str:
  """The cache folder of a named dataset's split at one size (TFDS's split name in it)."""
  import tensorflow_datasets as tfds
  spec = NAMED_DATASETS[dataset]
  full_name = tfds.builder(spec.tfds_id, data_dir=data_dir).info.full_name  # reads no data
  return _cache_folder(data_dir, f"{full_name}-{spec.tfds_split(split)}-{image_size}px")


def _cache_named(dataset: str, split: str, image_size: int, data_dir: str) -> str:
  import tensorflow_datasets as tfds
  spec = NAMED_DATASETS[dataset]
  folder = named_cache_folder(dataset, split, image_size, data_dir)
  if os.path.exists(os.path.join(folder, "meta.json")):
    return folder  # the raw files and TFDS's copy may even be gone
  split = spec.tfds_split(split)  # TFDS's name from here on: Imagenette's 'test' is 'validation'
  builder = tfds_prepare.prepare(dataset, data_dir)
  source = tfds.data_source(spec.tfds_id, split=split, data_dir=data_dir, download=False)
  count = len(source)
  labels = np.zeros(count, np.int32) if "label" in builder.info.features else None
  shape = (count, image_size, image_size, spec.channels)
  with _CacheWriter(folder, shape, np.uint8) as cache, \
       _progress(count, f"decoding {spec.tfds_id} {split} to {image_size}px") as bar:

    def decode(start):  # chunks are disjoint, so threads write without locks
      keys = list(range(start, min(start + DECODE_CHUNK, count)))
      for key, example in zip(keys, source.__getitems__(keys)):
        cache.images[key] = square_image(np.asarray(example["image"]), image_size, spec.crop)
        if labels is not None:
          labels[key] = int(example["label"])
      bar.update(len(keys))

    # PIL decodes and resizes without the GIL, so threads use the cores for big JPEG datasets.
    with concurrent.futures.ThreadPoolExecutor(DECODE_THREADS) as pool:
      list(pool.map(decode, range(0, count, DECODE_CHUNK)))
    cache.finish(labels, {"dataset": builder.info.full_name, "split": split,
                          "pixel_range": list(UINT8_RANGE), "num_examples": count,
                          "image_shape": list(shape[1:])})
  return folder


def _folder_files(path: str):
  """Image files under `path` and their labels: the index of their sub-folder, if all have one."""
  files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                 if name.lower().endswith(IMAGE_SUFFIXES))
  if not files:
    raise DatasetError(f"--dataset=folder:{path}: no {'/'.join(IMAGE_SUFFIXES)} files in it")
  parts = [os.path.relpath(f, path).split(os.sep) for f in files]
  if all(len(p) == 2 for p in parts):
    class_names = sorted({p[0] for p in parts})
    labels = np.array([class_names.index(p[0]) for p in parts], np.int32)
    return files, labels, class_names
  return files, None, None


def _fingerprint(paths: list) -> str:
  """Changes when any input file is added, removed, rewritten or touched."""
  digest = hashlib.sha256()
  for path in paths:
    stat = os.stat(path)
    digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:12]


def _open_image(file: str, folder: str):
  try:
    image = Image.open(file)
    image.load()
    return image
  except OSError as error:
    raise DatasetError(f"--dataset=folder:{folder}: cannot read {file} ({error}); "
                       "remove or replace it") from None


def _cache_folder_images(path: str, image_size: int, data_dir: str) -> str:
  files, labels, class_names = _folder_files(path)
  name = os.path.basename(os.path.normpath(path))
  folder = _cache_folder(data_dir, f"folder-{name}-{_fingerprint(files)}-{image_size}px")
  if os.path.exists(os.path.join(folder, "meta.json")):
    return folder
  grey = True
  for file in files[:64]:
    with _open_image(file, path) as im:
      grey = grey and im.mode in ("1", "L")
  mode, channels = ("L", 1) if grey else ("RGB", 3)
  shape = (len(files), image_size, image_size, channels)
  with _CacheWriter(folder, shape, np.uint8) as cache, \
       _progress(len(files), f"decoding {path} to {image_size}px") as bar:
    for i, file in enumerate(files):
      with _open_image(file, path) as im:
        pixels = np.asarray(im.convert(mode)).reshape(im.height, im.width, channels)
      cache.images[i] = square_image(pixels, image_size, "centre")
      bar.update(1)
    cache.finish(labels, {"dataset": f"folder:{os.path.abspath(path)}",
                          "pixel_range": list(UINT8_RANGE), "num_examples": len(files),
                          "image_shape": list(shape[1:]), "class_names": class_names})
  return folder


def _array_pixel_range(images: np.ndarray) -> tuple:
  """uint8 -> (0, 255); floats within [0, 1] -> (0, 1); anything else -> the data's own extent."""
  if images.dtype == np.uint8:
    return UINT8_RANGE
  low, high = float(np.min(images)), float(np.max(images))
  if not (math.isfinite(low) and math.isfinite(high)):
    raise DatasetError("the images array has NaN or infinite values; fix or drop those images")
  if low >= 0.0 and high <= 1.0:
    return (0.0, 1.0)
  if high == low:
    raise DatasetError("the images array is constant; there is nothing to learn")
  return (low, high)


def _cache_array_images(dataset: str, image_size: int, data_dir: str) -> str:
  kind, _, path = dataset.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  folder = _cache_folder(data_dir, f"{kind}-{name}-{_fingerprint([path])}-{image_size}px")
  if os.path.exists(os.path.join(folder, "meta.json")):
    return folder
  labels = None
  if kind == "npz":
    with np.load(path) as archive:
      if "images" not in archive:
        raise DatasetError(f"--dataset={dataset}: the .npz holds {sorted(archive.files)}, "
                           "not an 'images' array")
      images = archive["images"]
      labels = archive["labels"] if "labels" in archive else None
  else:
    images = np.load(path, mmap_mode="r")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise DatasetError(f"--dataset={dataset}: images have shape {images.shape}; "
                       "expected (N, H, W) or (N, H, W, C)")
  if labels is not None and labels.shape[:1] != images.shape[:1]:
    raise DatasetError(f"--dataset={dataset}: {len(labels)} labels for {len(images)} images")
  pixel_range = _array_pixel_range(images)
  dtype = np.uint8 if images.dtype == np.uint8 else np.float32  # floats keep their precision
  shape = (len(images), image_size, image_size, images.shape[-1])
  with _CacheWriter(folder, shape, dtype) as cache:
    for i in range(len(images)):
      cache.images[i] = square_image(np.asarray(images[i], dtype), image_size, "centre")
    cache.finish(None if labels is None else labels.astype(np.int32),
                 {"dataset": f"{kind}:{os.path.abspath(path)}", "pixel_range": list(pixel_range),
                  "num_examples": len(images), "image_shape": list(shape[1:])})
  return folder


def cached_images(dataset: str, *, image_size: int, split: str = "train",
                  data_dir: Optional[str] = None):
  """(images (N, S, S, C) memory-mapped, labels (N,) int32 or None, meta dict), built once.

  `split` is 'train' or 'test' (Imagenette's 'test' is TFDS's 'validation'); the user's images
  have 'train' only.
  """
  check_name(dataset)
  check_split(split)
  data_dir = data_dir or default_data_dir()
  if dataset in NAMED_DATASETS:
    build = lambda: _cache_named(dataset, split, image_size, data_dir)
  elif split != "train":
    raise DatasetError(f"--dataset={dataset} has one split, 'train' (all its images): to "
                       "evaluate on held-out images, move some to another folder or array file "
                       "and load that as its own dataset")
  elif dataset.startswith("folder:"):
    build = lambda: _cache_folder_images(dataset.partition(":")[2], image_size, data_dir)
  else:
    build = lambda: _cache_array_images(dataset, image_size, data_dir)
  folder = build()
  try:
    return _read_cache(folder)
  except _Damaged as damaged:  # never trusted: built again from the data
    print(f"warning: the dataset cache {damaged}; building it again", file=sys.stderr)
    shutil.rmtree(folder)
    return _read_cache(build())
