"""Real image datasets (TFDS) and the user's own images, as seeded random-access batch sources.

Named datasets come from TensorFlow Datasets: `mnist`, `fashion_mnist`, `cifar10`, `celeba`
(TFDS's `celeb_a`), `imagenette` (the 160px variant of Imagenette 2; any TFDS config as
`imagenette/320px-v2` etc.). The user's own images come as `folder:/path` (PNG/JPEG files,
class labels from sub-folder names), `npy:/path/file.npy` or `npz:/path/file.npz` (an `images`
array and optionally `labels`).

The path from raw files to a batch:
  1. `prepare`: TFDS's own builder writes ArrayRecord files under `<data_dir>/<name>/<version>`,
     from the files in `<data_dir>/downloads/manual/<tfds name>/` when they are there, else by
     downloading them (TFDS shows progress). Offline with files missing fails at once, naming them.
  2. `cached_images`: every image is decoded (through `tfds.data_source`, no TensorFlow),
     cropped and resized once, and the result is saved as uint8 `.npy` under
     `<data_dir>/jaxgen_cache/`, which later runs memory-map.
  3. `ImageSource.batch(index)`: batch `index` of the run is a slice of a stream of per-epoch
     permutations drawn from `np.random.default_rng([seed, epoch])`, so the run's position in its
     data is one integer and resumed runs see the same batches.

Preprocessing (the studies' conventions): MNIST-like 28x28 digits are zero-padded to 32x32 (kept
at 28 for MLPs, resized at other sizes); CelebA is centre-cropped to 108x108 and resized (DCGAN);
CIFAR-10, Imagenette and the user's images are centre-cropped to a square and resized.
"""

import concurrent.futures
import dataclasses
import difflib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Optional

import numpy as np
from PIL import Image

from jaxgen.data import to_model_range

USER_PREFIXES = ("folder:", "npy:", "npz:")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CACHE_FOLDER = "jaxgen_cache"
CELEBA_CROP = 108  # DCGAN's centre crop of the 218x178 aligned faces
CELEBA_HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
UINT8_RANGE = (0.0, 255.0)
DECODE_CHUNK = 512
DECODE_THREADS = min(8, os.cpu_count() or 1)


class DatasetError(ValueError):
  """A dataset cannot be used as asked; the message says what to do, in one line."""


@dataclasses.dataclass(frozen=True)
class NamedDataset:
  tfds_name: str          # TFDS builder, and the name of its manual-download folder
  config: Optional[str]   # TFDS builder config, None for the default
  crop: str               # how an image becomes square: "pad" (MNIST-like), "celeba", "centre"
  channels: int

  @property
  def tfds_id(self) -> str:
    return self.tfds_name + (f"/{self.config}" if self.config else "")


IMAGENETTE_CONFIGS = ("160px-v2", "320px-v2", "full-size-v2", "160px", "320px", "full-size")
NAMED_DATASETS = {
    "mnist": NamedDataset("mnist", None, "pad", 1),
    "fashion_mnist": NamedDataset("fashion_mnist", None, "pad", 1),
    "cifar10": NamedDataset("cifar10", None, "centre", 3),
    "celeba": NamedDataset("celeb_a", None, "celeba", 3),
    "celeb_a": NamedDataset("celeb_a", None, "celeba", 3),
    "imagenette": NamedDataset("imagenette", "160px-v2", "centre", 3),
    **{f"imagenette/{c}": NamedDataset("imagenette", c, "centre", 3) for c in IMAGENETTE_CONFIGS},
}


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


def default_data_dir() -> str:
  """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def manual_dir(dataset: str, data_dir: Optional[str] = None) -> str:
  """Where the raw files of a named dataset go for offline preparation."""
  return os.path.join(data_dir or default_data_dir(), "downloads", "manual",
                      NAMED_DATASETS[dataset].tfds_name)


def _log(message: str) -> None:
  print(f"[jaxgen.data] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# 1. Preparation with TFDS's builders.


def raw_files(builder) -> list:
  """(url, UrlInfo) of every raw file the builder downloads, from TFDS's checksum tables."""
  infos = builder.url_infos or {}
  if builder.name == "imagenette":  # the table lists every variant; a config needs one archive
    wanted = builder.builder_config.dirname + ".tgz"
    return [(url, info) for url, info in infos.items() if info.filename == wanted]
  return sorted(infos.items(), key=lambda item: item[1].filename)


def network_available(url: str, timeout: float = 5.0) -> bool:
  """Whether `url`'s host answers at all (through the user's proxy if set): one quick request."""
  import requests  # a TFDS dependency
  try:
    requests.head(url, timeout=timeout, allow_redirects=False)
    return True
  except requests.RequestException:
    return False


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _check_preparation_tools(tfds_name: str) -> None:
  # TFDS's builders read with tf.io.gfile and import importlib_resources; Drive needs bs4.
  tools = [("tensorflow", "tensorflow-cpu"), ("importlib_resources", "importlib_resources")]
  if tfds_name == "celeb_a":
    tools.append(("bs4", "beautifulsoup4"))
  for module, requirement in tools:
    if importlib.util.find_spec(module) is None:
      raise DatasetError(f"preparing a TFDS dataset needs {module}: pip install {requirement} "
                         "(training afterwards does not)")


def _wrong_manual_file(folder: str, files: list, check_sha256: bool = True) -> Optional[str]:
  """The one-line complaint about the first manual file whose size or sha256 is not TFDS's."""
  for url, info in files:
    path = os.path.join(folder, info.filename)
    if not os.path.exists(path):
      continue
    size = os.path.getsize(path)
    if size != int(info.size):
      return (f"raw file {path} has {size} bytes, TFDS expects {int(info.size)}: it is truncated "
              f"or not the right file; replace it with {info.filename} from {url}")
  for url, info in files if check_sha256 else ():
    path = os.path.join(folder, info.filename)
    if os.path.exists(path) and _sha256(path) != info.checksum:
      return (f"raw file {path} has the right size but the wrong sha256 (TFDS expects "
              f"{info.checksum}): replace it with {info.filename} from {url}")
  return None


def prepare(dataset: str, data_dir: Optional[str] = None):
  """Prepares a named dataset as ArrayRecord files if it is not yet; returns the TFDS builder."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

  spec = NAMED_DATASETS[dataset]
  data_dir = data_dir or default_data_dir()
  builder = tfds.builder(spec.tfds_id, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    formats = [f.value for f in builder.info.available_file_formats()]
    if "array_record" not in formats:
      raise DatasetError(f"{spec.tfds_id} is prepared in {builder.data_dir} as {formats} only, "
                         "and jaxgen reads ArrayRecord: delete that folder or use another "
                         "--data_dir")
    return builder

  _check_preparation_tools(spec.tfds_name)
  folder = manual_dir(dataset, data_dir)
  files = raw_files(builder)
  wrong_size = _wrong_manual_file(folder, files, check_sha256=False)  # sha256 is left to TFDS
  if wrong_size:
    raise DatasetError(wrong_size)
  missing = [(url, info) for url, info in files
             if not os.path.exists(os.path.join(folder, info.filename))]
  if missing and not network_available(missing[0][0]):
    names = ", ".join(info.filename for _, info in missing)
    raise DatasetError(f"{dataset} is not prepared in {data_dir} and there is no network: put "
                       f"{names} (from {os.path.dirname(missing[0][0])}/) in {folder}/ and run "
                       "again (see docs/datasets.md)")
  route = ("downloading " + ", ".join(info.filename for _, info in missing) if missing
           else "from " + folder)
  _log(f"preparing {spec.tfds_id} in {data_dir} ({route}); this happens once")
  start = time.perf_counter()
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=folder))
  except NonMatchingChecksumError as error:
    complaint = _wrong_manual_file(folder, files)
    if complaint:
      raise DatasetError(complaint) from None
    raise _download_failure(dataset, spec, folder, missing, error) from error
  except Exception as error:
    if not _is_download_error(error):
      raise
    raise _download_failure(dataset, spec, folder, missing, error) from error
  _log(f"prepared {spec.tfds_id} in {time.perf_counter() - start:.1f} s")
  return builder


def _is_download_error(error: Exception) -> bool:
  import requests
  import tensorflow_datasets as tfds
  return (isinstance(error, (tfds.download.DownloadError, requests.RequestException))
          or (isinstance(error, ValueError) and "GDrive" in str(error)))


def _download_failure(dataset, spec, folder, missing, error) -> DatasetError:
  names = ", ".join(info.filename for _, info in missing) or "the raw files"
  reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
  if spec.tfds_name == "celeb_a":
    return DatasetError(
        f"CelebA's download from Google Drive failed ({reason}), most often Drive's daily quota: "
        f"download {names} yourself from the Google Drive linked at {CELEBA_HOMEPAGE} "
        f"(img_align_celeba.zip is under Img/, the .txt files under Anno/ and Eval/), "
        f"put them in {folder}/ and run again")
  return DatasetError(f"downloading {dataset} failed ({reason}): put {names} in {folder}/ "
                      "and run again (see docs/datasets.md)")


# ---------------------------------------------------------------------------------------------
# 2. Decode and resize once; cache uint8 arrays.


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


def _read_cache(folder: str):
  meta_path = os.path.join(folder, "meta.json")
  if not os.path.exists(meta_path):
    return None
  with open(meta_path) as f:
    meta = json.load(f)
  images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")
  labels_path = os.path.join(folder, "labels.npy")
  labels = np.load(labels_path) if os.path.exists(labels_path) else None
  return images, labels, meta


def _cache_folder(data_dir: str, key: str) -> str:
  return os.path.join(data_dir, CACHE_FOLDER, key.replace("/", "_").replace(":", "_"))


def _progress(total: int, description: str):
  from tqdm import auto
  return auto.tqdm(total=total, desc=description, unit=" images", mininterval=2.0,
                   disable=total < 5000)


def _cache_named(dataset: str, split: str, image_size: int, data_dir: str) -> str:
  import tensorflow_datasets as tfds
  spec = NAMED_DATASETS[dataset]
  full_name = tfds.builder(spec.tfds_id, data_dir=data_dir).info.full_name  # reads no data
  folder = _cache_folder(data_dir, f"{full_name}-{split}-{image_size}px")
  if os.path.exists(os.path.join(folder, "meta.json")):
    return folder  # the raw files and TFDS's copy may even be gone
  builder = prepare(dataset, data_dir)
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
  """(images (N, S, S, C) memory-mapped, labels (N,) int32 or None, meta dict), built once."""
  check_name(dataset)
  data_dir = data_dir or default_data_dir()
  if dataset in NAMED_DATASETS:
    folder = _cache_named(dataset, split, image_size, data_dir)
  elif dataset.startswith("folder:"):
    folder = _cache_folder_images(dataset.partition(":")[2], image_size, data_dir)
  else:
    folder = _cache_array_images(dataset, image_size, data_dir)
  return _read_cache(folder)


# ---------------------------------------------------------------------------------------------
# 3. Batches.


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


class ImageSource:
  """Batches of cached images, every image once per epoch, batch i a function of (seed, i)."""

  def __init__(self, images: np.ndarray, labels: Optional[np.ndarray], pixel_range,
               batch_size: int, seed: int, name: str = "", class_names=None):
    self.images, self.label_array = images, labels
    self.pixel_range = tuple(float(v) for v in pixel_range)
    self.batch_size, self.seed, self.name = batch_size, seed, name
    self.class_names = class_names
    self.image_shape = tuple(images.shape[1:])
    self.num_examples = len(images)

  @property
  def batches_per_epoch(self) -> float:
    return self.num_examples / self.batch_size

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


def load_source(dataset: str, *, image_size: int, batch_size: int, seed: int,
                data_dir: Optional[str] = None, split: str = "train") -> ImageSource:
  """The batch source for a named dataset or the user's images (preparing and caching once)."""
  images, labels, meta = cached_images(dataset, image_size=image_size, split=split,
                                       data_dir=data_dir)
  return ImageSource(images, labels, meta["pixel_range"], batch_size, seed, name=dataset,
                     class_names=meta.get("class_names"))


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
      _cache_folder(data_dir, f"{builder.info.full_name}-{split}-{image_size}px"))


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


if __name__ == "__main__":
  # Prepare and cache ahead of training, e.g. on a login node that has the network:
  #   python -m jaxgen.image_datasets mnist celeba --image_size=64 --data_dir=/data/tfds
  import argparse
  parser = argparse.ArgumentParser(description="prepare and cache jaxgen's image datasets")
  parser.add_argument("datasets", nargs="+", help=", ".join(dataset_names()))
  parser.add_argument("--image_size", type=int, default=0,
                      help="default: what training picks, 64 for celeba and imagenette, else 32")
  parser.add_argument("--data_dir", default=None,
                      help="default: $TFDS_DATA_DIR or ~/tensorflow_datasets")
  arguments = parser.parse_args()
  for name in arguments.datasets:
    from jaxgen.data import default_image_size
    size = arguments.image_size or default_image_size(name)
    images, labels, meta = cached_images(name, image_size=size, data_dir=arguments.data_dir)
    _log(f"{name}: {meta['num_examples']} images of {tuple(images.shape[1:])}, "
         f"{'with' if labels is not None else 'without'} labels, cached under "
         f"{os.path.join(arguments.data_dir or default_data_dir(), CACHE_FOLDER)}")
