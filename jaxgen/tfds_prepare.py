"""The TFDS datasets jaxgen knows by name, and their preparation with TFDS's own builders.

Named datasets: `mnist`, `fashion_mnist`, `cifar10`, `celeba` (TFDS's `celeb_a`), `imagenette`
(the 160px variant of Imagenette 2; any TFDS config as `imagenette/320px-v2` etc.).

`prepare` has TFDS's builder write ArrayRecord files under `<data_dir>/<name>/<version>`, from
the files in `<data_dir>/downloads/manual/<tfds name>/` when they are there, else by downloading
them (TFDS shows progress). Offline with files missing fails at once, naming them. TFDS and
TensorFlow are imported inside the functions that need them, never at import time, so that blob
runs (and training from a finished cache) never load them.

Every jaxgen source has the splits `SPLITS`; a named dataset maps them to its TFDS splits
(`NamedDataset.tfds_split`): 'test' is TFDS's 'test', except Imagenette's, which is 'validation'
(Imagenette publishes no test split).
"""

import dataclasses
import hashlib
import importlib.util
import os
import sys
import time
from typing import Optional

CELEBA_HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
SPLITS = ("train", "test")


class DatasetError(ValueError):
  """A dataset cannot be used as asked; the message says what to do, in one line."""


def check_split(split: str) -> None:
  """A one-line error for a split name that is not one of `SPLITS`."""
  if split not in SPLITS:
    raise DatasetError(f"unknown split={split!r}; choose 'train' or 'test' (Imagenette's "
                       "'validation' is its 'test')")


@dataclasses.dataclass(frozen=True)
class NamedDataset:
  tfds_name: str          # TFDS builder, and the name of its manual-download folder
  config: Optional[str]   # TFDS builder config, None for the default
  crop: str               # how an image becomes square: "pad" (MNIST-like), "celeba", "centre"
  channels: int
  test_split: str = "test"  # the TFDS split that serves as jaxgen's 'test'

  @property
  def tfds_id(self) -> str:
    return self.tfds_name + (f"/{self.config}" if self.config else "")

  def tfds_split(self, split: str) -> str:
    """The TFDS split behind jaxgen's `split` ('train' or 'test')."""
    check_split(split)
    return self.test_split if split == "test" else split


IMAGENETTE_CONFIGS = ("160px-v2", "320px-v2", "full-size-v2", "160px", "320px", "full-size")
NAMED_DATASETS = {
    "mnist": NamedDataset("mnist", None, "pad", 1),
    "fashion_mnist": NamedDataset("fashion_mnist", None, "pad", 1),
    "cifar10": NamedDataset("cifar10", None, "centre", 3),
    "celeba": NamedDataset("celeb_a", None, "celeba", 3),
    "celeb_a": NamedDataset("celeb_a", None, "celeba", 3),
    "imagenette": NamedDataset("imagenette", "160px-v2", "centre", 3, "validation"),
    **{f"imagenette/{c}": NamedDataset("imagenette", c, "centre", 3, "validation")
       for c in IMAGENETTE_CONFIGS},
}


def default_data_dir() -> str:
  """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def manual_dir(dataset: str, data_dir: Optional[str] = None) -> str:
  """Where the raw files of a named dataset go for offline preparation."""
  return os.path.join(data_dir or default_data_dir(), "downloads", "manual",
                      NAMED_DATASETS[dataset].tfds_name)


def log(message: str) -> None:
  print(f"[jaxgen.data] {message}", file=sys.stderr, flush=True)


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
  log(f"preparing {spec.tfds_id} in {data_dir} ({route}); this happens once")
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
  log(f"prepared {spec.tfds_id} in {time.perf_counter() - start:.1f} s")
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
