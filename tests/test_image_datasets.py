"""Image datasets: TFDS preparation and its errors, the user's images, the cache, the batches,
the test splits, and the preparation command."""
import gzip
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from jaxgen import data, image_cache, image_source, tfds_prepare
from jaxgen.tfds_prepare import DatasetError

tfds = pytest.importorskip("tensorflow_datasets")

RAW_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def online(monkeypatch):
  monkeypatch.setattr(tfds_prepare, "network_available", lambda url, timeout=5.0: True)


@pytest.fixture
def offline(monkeypatch):
  monkeypatch.setattr(tfds_prepare, "network_available", lambda url, timeout=5.0: False)


@pytest.fixture
def mock_tfds(monkeypatch, online):
  """tfds.testing.mock_data, with its data source's __getitems__ fixed.

  TFDS 4.9.10 sets `__getitems__` on a MagicMock, which (not being a magic method it knows)
  is called without `self`, so batched reads of the mock fail; this restores the behaviour.
  """
  from tensorflow_datasets.testing import mocking
  monkeypatch.setattr(mocking, "_getitems", lambda record_keys, generator, serialized=False:
                      [generator[key] for key in record_keys])
  with tfds.testing.mock_data(num_examples=21):
    yield


# ---------------------------------------------------------------------------------------------
# Named datasets under tfds.testing.mock_data.

NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "imagenette": 10,
               "imagenette/320px": 10, "celeba": None, "celeb_a": None}
CHANNELS = {"mnist": 1, "fashion_mnist": 1}


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
def test_named_dataset_through_mock_tfds(name, mock_tfds, tmp_path):
  source = data.load(name, image_size=32, batch_size=8, seed=3, data_dir=str(tmp_path))
  channels = CHANNELS.get(name, 3)
  assert source.image_shape == (32, 32, channels)
  assert source.num_examples == 21
  assert source.pixel_range == (0.0, 255.0)
  batch = source.batch(4)
  assert batch.shape == (8, 32, 32, channels) and batch.dtype == np.float32
  assert -1.0 <= batch.min() and batch.max() <= 1.0 and batch.std() > 0.1
  # The lookup-table conversion equals the interface's pixel mapping.
  np.testing.assert_allclose(batch, data.to_model_range(source.pixels(4), source.pixel_range),
                             atol=1e-6)
  # The cache holds exactly what the convention makes of each example TFDS serves.
  examples = tfds.data_source(tfds_prepare.NAMED_DATASETS[name].tfds_id, split="train")
  crop = tfds_prepare.NAMED_DATASETS[name].crop
  for i in (0, 7, 20):
    expected = image_cache.square_image(np.asarray(examples[i]["image"]), 32, crop)
    np.testing.assert_array_equal(source.images[i], expected)
  if NUM_CLASSES[name] is None:
    assert source.label_array is None
    with pytest.raises(DatasetError, match="no labels"):
      source.labels(0)
  else:
    labels = source.labels(4)
    assert labels.shape == (8,) and labels.min() >= 0 and labels.max() < NUM_CLASSES[name]
    np.testing.assert_array_equal(labels, [examples[int(i)]["label"] for i in source.indices(4)])


def test_cache_is_reused_without_tfds(mock_tfds, tmp_path, monkeypatch):
  first = image_source.load_source("cifar10", image_size=16, batch_size=4, seed=0,
                                  data_dir=str(tmp_path))
  cache = os.path.join(tmp_path, "jaxgen_cache", "cifar10_3.0.2-train-16px")
  assert sorted(os.listdir(cache)) == ["images.npy", "labels.npy", "meta.json"]
  stamp = os.stat(os.path.join(cache, "images.npy")).st_mtime_ns

  def fail(*args, **kwargs):
    raise AssertionError("the cache should have been used")
  monkeypatch.setattr(tfds_prepare, "prepare", fail)
  monkeypatch.setattr(tfds, "data_source", fail)
  again = image_source.load_source("cifar10", image_size=16, batch_size=4, seed=0,
                                   data_dir=str(tmp_path))
  np.testing.assert_array_equal(again.batch(2), first.batch(2))
  assert os.stat(os.path.join(cache, "images.npy")).st_mtime_ns == stamp
  assert isinstance(again.images, np.memmap)
  # Another size is another cache.
  with pytest.raises(AssertionError, match="cache should have been used"):
    image_source.load_source("cifar10", image_size=8, batch_size=4, seed=0, data_dir=str(tmp_path))


TFDS_TEST_SPLITS = {"mnist": "test", "imagenette": "validation", "celeba": "test"}


@pytest.mark.parametrize("name", sorted(TFDS_TEST_SPLITS))
def test_test_split_through_mock_tfds_whole_and_in_order(name, mock_tfds, tmp_path, monkeypatch):
  asked, serve = [], tfds.data_source
  def spy(*args, **kwargs):
    asked.append(kwargs["split"])
    return serve(*args, **kwargs)
  monkeypatch.setattr(tfds, "data_source", spy)
  tfds_split, data_dir = TFDS_TEST_SPLITS[name], str(tmp_path)
  test = data.load(name, image_size=16, batch_size=8, seed=3, split="test", data_dir=data_dir)
  assert asked == [tfds_split] and test.split == "test"
  folder = image_cache.named_cache_folder(name, "test", 16, data_dir)
  assert folder.endswith(f"-{tfds_split}-16px") and image_cache._read_cache(folder)[2]["split"] == (
      tfds_split)
  # eval_batch: every example of the split once, in TFDS's order, with its label.
  spec = tfds_prepare.NAMED_DATASETS[name]
  examples = serve(spec.tfds_id, split=tfds_split)
  assert test.num_examples == 21 and test.batches_per_epoch == 3
  images, labels = zip(*[test.eval_batch(i) for i in range(3)])
  assert [len(x) for x in images] == [8, 8, 5]
  expected = np.stack([image_cache.square_image(np.asarray(examples[i]["image"]), 16, spec.crop)
                       for i in range(21)])
  np.testing.assert_allclose(np.concatenate(images), data.to_model_range(expected, (0, 255)),
                             atol=1e-6)
  if name == "celeba":
    assert labels == (None, None, None)
  else:
    np.testing.assert_array_equal(np.concatenate(labels), [examples[i]["label"] for i in range(21)])
  # The train split is asked of TFDS separately and cached beside it.
  train = data.load(name, image_size=16, batch_size=8, seed=3, data_dir=data_dir)
  assert asked == [tfds_split, "train"] and train.split == "train"
  assert sorted(os.listdir(os.path.dirname(folder))) == sorted(
      [os.path.basename(folder), os.path.basename(folder).replace(f"-{tfds_split}-", "-train-")])


def test_split_names_map_to_tfds_splits():
  assert tfds_prepare.NAMED_DATASETS["imagenette/320px-v2"].tfds_split("test") == "validation"
  assert tfds_prepare.NAMED_DATASETS["celeba"].tfds_split("test") == "test"
  assert tfds_prepare.NAMED_DATASETS["cifar10"].tfds_split("train") == "train"
  for bad in ("validation", "Test", "train[:10%]"):
    expected = re.escape(f"unknown split={bad!r}; choose 'train' or 'test'")
    with pytest.raises(DatasetError, match=expected):
      tfds_prepare.NAMED_DATASETS["mnist"].tfds_split(bad)


# ---------------------------------------------------------------------------------------------
# Preprocessing conventions.


def test_mnist_padding_and_native_size():
  digit = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
  np.testing.assert_array_equal(image_cache.square_image(digit, 32, "pad"),
                                np.pad(digit, ((2, 2), (2, 2), (0, 0))))
  np.testing.assert_array_equal(image_cache.square_image(digit, 28, "pad"), digit)
  assert image_cache.square_image(digit, 64, "pad").shape == (64, 64, 1)


def test_celeba_centre_crop_is_dcgans():
  rows, cols = np.meshgrid(np.arange(218), np.arange(178), indexing="ij")
  face = np.stack([rows, cols, rows + cols], -1).astype(np.uint8)
  np.testing.assert_array_equal(image_cache.square_image(face, 108, "celeba"), face[55:163, 35:143])
  flat = np.full((218, 178, 3), 77, np.uint8)
  np.testing.assert_array_equal(image_cache.square_image(flat, 64, "celeba"), 77)


def test_centre_crop_of_a_wide_image_then_resize():
  wide = np.zeros((160, 240, 3), np.uint8)
  wide[:, 40:200] = 200  # the central square is uniform, the sides are black
  np.testing.assert_array_equal(image_cache.square_image(wide, 160, "centre"), 200)
  np.testing.assert_array_equal(image_cache.square_image(wide, 64, "centre"), 200)
  ramp = np.linspace(-3.0, 5.0, 32 * 32, dtype=np.float32).reshape(32, 32, 1)
  small = image_cache.square_image(ramp, 16, "centre")
  assert small.dtype == np.float32 and small.shape == (16, 16, 1)
  np.testing.assert_allclose(small.mean(), ramp.mean(), atol=0.02)  # float pixels are not rounded


# ---------------------------------------------------------------------------------------------
# The user's own images.


def _write_png(path, pixels):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels).save(path)


def test_folder_of_images_with_class_subfolders(tmp_path):
  images = tmp_path / "pets"
  colours = {}
  for i in range(7):
    kind = "cats" if i < 3 else "dogs"
    colour = (10 * i, 100 + i, 250 - i)
    shape = (40, 30 + 5 * i) if i % 2 else (30 + 5 * i, 40)  # landscape and portrait
    _write_png(str(images / kind / f"{i}.png"), np.full(shape + (3,), colour, np.uint8))
    colours[i] = colour
  _write_png(str(images / "dogs" / "grey.png"), np.full((20, 20), 33, np.uint8))
  source = data.load(f"folder:{images}", image_size=16, batch_size=4, seed=0,
                     data_dir=str(tmp_path / "tfds"))
  assert source.image_shape == (16, 16, 3) and source.num_examples == 8
  assert source.class_names == ["cats", "dogs"]
  np.testing.assert_array_equal(source.label_array, [0, 0, 0, 1, 1, 1, 1, 1])
  for i in range(7):  # files in sorted order: cats/0..2, dogs/3..6, then dogs/grey.png
    np.testing.assert_array_equal(source.images[i], np.full((16, 16, 3), colours[i], np.uint8))
  np.testing.assert_array_equal(source.images[7], 33)
  one_epoch = np.concatenate([source.indices(0), source.indices(1)])
  np.testing.assert_array_equal(np.sort(one_epoch), np.arange(8))


def test_folder_of_grey_images_has_one_channel(tmp_path):
  for i in range(3):
    _write_png(str(tmp_path / "stars" / f"{i}.png"), np.full((8, 8), 50 * i, np.uint8))
  source = data.load(f"folder:{tmp_path / 'stars'}", image_size=8, batch_size=2, seed=0,
                     data_dir=str(tmp_path / "tfds"))
  assert source.image_shape == (8, 8, 1) and source.label_array is None
  np.testing.assert_array_equal(source.images[:, 0, 0, 0], [0, 50, 100])


def test_unreadable_image_is_named_and_leaves_no_cache(tmp_path):
  _write_png(str(tmp_path / "pics" / "a.png"), np.zeros((8, 8), np.uint8))
  (tmp_path / "pics" / "b.png").write_bytes(b"not a png")
  with pytest.raises(DatasetError, match="cannot read .*b.png"):
    data.load(f"folder:{tmp_path / 'pics'}", image_size=8, batch_size=2, seed=0,
              data_dir=str(tmp_path / "tfds"))
  assert not os.path.exists(tmp_path / "tfds" / "jaxgen_cache")


def test_interrupted_cache_build_leaves_nothing(tmp_path):
  folder = str(tmp_path / "jaxgen_cache" / "x-8px")
  with pytest.raises(KeyboardInterrupt):
    with image_cache._CacheWriter(folder, (3, 8, 8, 1), np.uint8) as cache:
      cache.images[0] = 1
      raise KeyboardInterrupt
  assert os.listdir(tmp_path / "jaxgen_cache") == []
  with image_cache._CacheWriter(folder, (3, 8, 8, 1), np.uint8) as cache:
    cache.images[:] = 5
    cache.finish(np.arange(3), {"pixel_range": [0, 255], "num_examples": 3,
                                "image_shape": [8, 8, 1]})
  images, labels, meta = image_cache._read_cache(folder)
  assert os.listdir(tmp_path / "jaxgen_cache") == ["x-8px"]
  np.testing.assert_array_equal(images, 5)
  np.testing.assert_array_equal(labels, [0, 1, 2])


def test_npz_uint8_with_labels(tmp_path):
  count = 10
  ids = np.arange(count, dtype=np.uint8)
  images = np.broadcast_to(ids[:, None, None] * 20, (count, 12, 12)).copy()
  np.savez(tmp_path / "digits.npz", images=images, labels=ids.astype(np.int64) + 100)
  source = data.load(f"npz:{tmp_path / 'digits.npz'}", image_size=12, batch_size=4, seed=1,
                     data_dir=str(tmp_path))
  assert source.image_shape == (12, 12, 1) and source.pixel_range == (0.0, 255.0)
  for index in range(6):  # the labels are those of the batch's images, in order
    pixels = source.pixels(index)
    np.testing.assert_array_equal(source.labels(index), pixels[:, 0, 0, 0] // 20 + 100)
    np.testing.assert_allclose(source.batch(index)[:, 0, 0, 0], pixels[:, 0, 0, 0] / 127.5 - 1,
                               atol=1e-6)


def test_npy_float_images_keep_their_values(tmp_path):
  # Astronomical images: counts in an arbitrary range, kept as float32, mapped by their extent.
  rng = np.random.default_rng(0)
  images = rng.gamma(2.0, 300.0, (6, 8, 8, 2))
  np.save(tmp_path / "sky.npy", images)
  source = data.load(f"npy:{tmp_path / 'sky.npy'}", image_size=8, batch_size=6, seed=0,
                     data_dir=str(tmp_path))
  assert source.image_shape == (8, 8, 2) and source.images.dtype == np.float32
  assert source.pixel_range == (pytest.approx(images.min()), pytest.approx(images.max()))
  batch = source.batch(0)
  assert batch.min() == -1.0 and batch.max() == 1.0
  back = data.from_model_range(batch, source.pixel_range)
  np.testing.assert_allclose(back, images[source.indices(0)], rtol=1e-5)
  unit = rng.uniform(0.0, 1.0, (4, 16, 16, 3)).astype(np.float32)
  np.save(tmp_path / "unit.npy", unit)
  small = data.load(f"npy:{tmp_path / 'unit.npy'}", image_size=8, batch_size=2, seed=0,
                    data_dir=str(tmp_path))
  assert small.pixel_range == (0.0, 1.0) and small.image_shape == (8, 8, 3)


def test_user_array_errors(tmp_path):
  np.savez(tmp_path / "bad.npz", pictures=np.zeros((3, 4, 4)))
  with pytest.raises(DatasetError, match=r"not an 'images' array"):
    data.load(f"npz:{tmp_path / 'bad.npz'}", image_size=4, batch_size=2, seed=0,
              data_dir=str(tmp_path))
  np.savez(tmp_path / "mismatch.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.zeros(2))
  with pytest.raises(DatasetError, match="2 labels for 3 images"):
    data.load(f"npz:{tmp_path / 'mismatch.npz'}", image_size=4, batch_size=2, seed=0,
              data_dir=str(tmp_path))
  np.save(tmp_path / "flat.npy", np.zeros((3, 16)))
  with pytest.raises(DatasetError, match=r"expected \(N, H, W\)"):
    data.load(f"npy:{tmp_path / 'flat.npy'}", image_size=4, batch_size=2, seed=0,
              data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="no such file"):
    data.check_name(f"npy:{tmp_path / 'absent.npy'}")
  with pytest.raises(ValueError, match="is not a folder"):
    data.check_name(f"folder:{tmp_path / 'absent'}")


def test_changed_user_files_make_a_new_cache(tmp_path):
  path = tmp_path / "a.npy"
  np.save(path, np.zeros((4, 8, 8), np.uint8))
  first = data.load(f"npy:{path}", image_size=8, batch_size=2, seed=0, data_dir=str(tmp_path))
  np.save(path, np.full((5, 8, 8), 9, np.uint8))
  os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
  second = data.load(f"npy:{path}", image_size=8, batch_size=2, seed=0, data_dir=str(tmp_path))
  assert (first.num_examples, second.num_examples) == (4, 5)
  np.testing.assert_array_equal(second.images, 9)
  assert len(os.listdir(tmp_path / "jaxgen_cache")) == 2


# ---------------------------------------------------------------------------------------------
# The batch stream.


def test_batches_reproducible_resumable_and_each_image_once_per_epoch():
  count, batch_size = 10, 4
  images = np.arange(count, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  run = image_source.ImageSource(images, np.arange(count), (0, 255), batch_size, seed=7)
  drawn = [run.labels(i) for i in range(10)]  # 40 images: 4 epochs of 10
  stream = np.concatenate(drawn)
  for epoch in range(4):
    np.testing.assert_array_equal(np.sort(stream[epoch * count:(epoch + 1) * count]),
                                  np.arange(count))
    np.testing.assert_array_equal(stream[epoch * count:(epoch + 1) * count],
                                  np.random.default_rng([7, epoch]).permutation(count))
  assert not np.array_equal(stream[:count], stream[count:2 * count])  # epochs are reshuffled
  # A resumed run (a new source, started at batch 6) sees the uninterrupted run's batches.
  resumed = image_source.ImageSource(images, np.arange(count), (0, 255), batch_size, seed=7)
  prefetch = data.Prefetch(resumed.batch, start=6)
  try:
    for index in range(6, 10):
      np.testing.assert_array_equal(next(prefetch), run.batch(index))
  finally:
    prefetch.close()
  other_seed = image_source.ImageSource(images, np.arange(count), (0, 255), batch_size, seed=8)
  assert not np.array_equal(other_seed.labels(0), drawn[0])
  np.testing.assert_allclose(run.batch(3)[:, 0, 0, 0], drawn[3] / 127.5 - 1, atol=1e-6)


def test_batch_larger_than_the_dataset():
  images = np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1)
  source = image_source.ImageSource(images, None, (0, 255), batch_size=7, seed=0)
  first = source.pixels(0)[:, 0, 0, 0]
  assert first.shape == (7,)
  np.testing.assert_array_equal(np.sort(first[:6]), [0, 0, 1, 1, 2, 2])  # two whole epochs


def test_eval_batch_visits_the_split_once_in_order():
  count = 10
  pixels = np.broadcast_to((np.arange(count, dtype=np.uint8) * 20)[:, None, None, None],
                           (count, 2, 2, 1))
  labels = np.arange(count) + 100
  source = image_source.ImageSource(pixels, labels, (0, 255), batch_size=4, seed=7, split="test")
  before = source.batch(1)
  assert source.num_examples == 10 and source.batches_per_epoch == 3
  got = [source.eval_batch(i) for i in range(3)]
  assert [len(images) for images, _ in got] == [4, 4, 2]  # the last batch is short
  np.testing.assert_array_equal(np.concatenate([batch_labels for _, batch_labels in got]), labels)
  np.testing.assert_allclose(np.concatenate([images for images, _ in got]),
                             pixels / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(source.batch(1), before)  # the shuffled stream is untouched
  # The order is the stored one, whatever the seed; without labels, None.
  unlabelled = image_source.ImageSource(pixels, None, (0, 255), batch_size=4, seed=8)
  images, none = unlabelled.eval_batch(1)
  assert none is None
  np.testing.assert_array_equal(images, got[1][0])
  whole = image_source.ImageSource(pixels[:8], None, (0, 255), batch_size=4, seed=0)
  assert whole.batches_per_epoch == 2 and len(whole.eval_batch(1)[0]) == 4
  for bad in (3, -1):
    expected = fr"eval_batch\({bad}\): .* 3 batches of 4 \(0 \.\. 2\) for its 10 examples"
    with pytest.raises(IndexError, match=expected) as error:
      source.eval_batch(bad)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# Clear errors.


@pytest.mark.parametrize("typo,meant", [("celba", "celeba"), ("mnsit", "mnist"),
                                        ("fashion-mnist", "fashion_mnist"), ("cifar", "cifar10"),
                                        ("blobs", "blobs1")])
def test_unknown_name_suggests_the_closest(typo, meant):
  with pytest.raises(ValueError, match=f"did you mean '{meant}'") as error:
    data.check_name(typo)
  assert "\n" not in str(error.value)


def test_offline_and_not_prepared_fails_at_once_naming_files_and_folder(offline, tmp_path):
  start = time.perf_counter()
  with pytest.raises(DatasetError) as error:
    data.load("fashion_mnist", image_size=32, batch_size=8, seed=0, data_dir=str(tmp_path))
  assert time.perf_counter() - start < 10  # not TFDS's ~200 s of retries
  message = str(error.value)
  assert "\n" not in message and "no network" in message
  assert os.path.join(str(tmp_path), "downloads", "manual", "fashion_mnist") in message
  for name in MNIST_FILES:  # fashion_mnist's files have MNIST's names
    assert name in message


def test_network_probe_answers_false_quickly_without_network():
  start = time.perf_counter()
  tfds_prepare.network_available("https://host.invalid/file.tar.gz", timeout=2.0)  # never resolves
  assert time.perf_counter() - start < 5
  assert tfds_prepare.network_available("https://host.invalid/file.tar.gz", timeout=2.0) is False


def _place_zero_files(folder, sizes):
  os.makedirs(folder, exist_ok=True)
  for name, size in sizes.items():
    with open(os.path.join(folder, name), "wb") as f:
      f.truncate(size)


def test_truncated_raw_file_is_named(offline, tmp_path):
  folder = tfds_prepare.manual_dir("mnist", str(tmp_path))
  _place_zero_files(folder, {"train-images-idx3-ubyte.gz": 1000, "t10k-labels-idx1-ubyte.gz": 4542})
  with pytest.raises(DatasetError, match="truncated") as error:
    tfds_prepare.prepare("mnist", str(tmp_path))
  message = str(error.value)
  assert os.path.join(folder, "train-images-idx3-ubyte.gz") in message
  assert "has 1000 bytes, TFDS expects 9912422" in message and "\n" not in message


def test_raw_file_with_the_wrong_content_is_named(offline, tmp_path):
  folder = tfds_prepare.manual_dir("mnist", str(tmp_path))
  _place_zero_files(folder, {"train-images-idx3-ubyte.gz": 9912422,
                             "train-labels-idx1-ubyte.gz": 28881,
                             "t10k-images-idx3-ubyte.gz": 1648877,
                             "t10k-labels-idx1-ubyte.gz": 4542})
  with pytest.raises(DatasetError, match="wrong sha256") as error:
    tfds_prepare.prepare("mnist", str(tmp_path))
  assert os.path.join(folder, "t10k-images-idx3-ubyte.gz") in str(error.value)  # first in order
  assert not os.path.exists(tmp_path / "mnist" / "3.0.1")


def test_celeba_drive_quota_failure_spells_out_the_manual_route(online, tmp_path, monkeypatch):
  from tensorflow_datasets.core.download import downloader

  def quota_page(url, **kwargs):  # what TFDS raises on Drive's "Quota exceeded" page
    raise ValueError(f"Failed to obtain confirmation link for GDrive URL {url}.")
  monkeypatch.setattr(downloader, "_open_url", quota_page)
  with pytest.raises(DatasetError) as error:
    data.load("celeba", image_size=64, batch_size=8, seed=0, data_dir=str(tmp_path))
  message = str(error.value)
  assert "\n" not in message and "Google Drive" in message and "quota" in message
  assert os.path.join(str(tmp_path), "downloads", "manual", "celeb_a") in message
  for name in ("img_align_celeba.zip", "list_eval_partition.txt", "list_attr_celeba.txt",
               "list_landmarks_align_celeba.txt", "identity_CelebA.txt"):
    assert name in message


# ---------------------------------------------------------------------------------------------
# Throughput.


def test_loader_benchmark_without_real_data_says_synthetic(tmp_path):
  result = image_source.loader_benchmark("mnist", batch_size=64, data_dir=str(tmp_path), steps=20)
  assert result["data"].startswith("synthetic")
  assert result["num_examples"] == 60000 and result["image_shape"] == [32, 32, 1]
  assert result["images_per_s"] > 10000  # far beyond any training step on this machine
  assert not os.listdir(tmp_path)  # the synthetic cache is gone


# ---------------------------------------------------------------------------------------------
# The preparation command.


def test_prepare_data_command_caches_at_the_training_size(mock_tfds, tmp_path, capsys):
  from experiments import prepare_data
  np.save(tmp_path / "sky.npy", np.full((3, 8, 8), 7, np.uint8))
  data_dir = str(tmp_path / "tfds")
  prepare_data.main(["mnist", f"npy:{tmp_path / 'sky.npy'}", f"--data_dir={data_dir}"])
  message = capsys.readouterr().err
  assert "mnist: 21 images of (32, 32, 1), with labels" in message
  assert "3 images of (32, 32, 1), without labels" in message
  cache = os.path.join(data_dir, "jaxgen_cache")
  assert f"cached under {cache}" in message
  assert "mnist_3.0.1-train-32px" in os.listdir(cache) and len(os.listdir(cache)) == 2
  prepare_data.main(["imagenette", "--split=test", "--image_size=16", f"--data_dir={data_dir}"])
  assert "imagenette_160px-v2_1.0.0-validation-16px" in os.listdir(cache)


def test_prepare_data_command_runs_as_a_program(tmp_path):
  done = subprocess.run([sys.executable, "-m", "experiments.prepare_data", "mnsit",
                         f"--data_dir={tmp_path}"], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(__file__)))
  assert done.returncode != 0 and "did you mean 'mnist'" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # one line, no traceback
  assert not os.listdir(tmp_path)


def test_prepare_data_command_without_network_or_raw_files_says_where_to_put_them(offline,
                                                                                   tmp_path):
  from experiments import prepare_data
  with pytest.raises(SystemExit) as stop:
    prepare_data.main(["mnist", f"--data_dir={tmp_path}"])
  message = str(stop.value.code)
  assert message.startswith("error: ") and "\n" not in message
  assert os.path.join("downloads", "manual", "mnist") in message


# ---------------------------------------------------------------------------------------------
# Real MNIST, prepared offline from the raw files (when this machine has them).


def _raw_idx(path, header):
  with gzip.open(path, "rb") as f:
    return np.frombuffer(f.read(), np.uint8)[header:]


@pytest.mark.skipif(not os.path.isdir(RAW_MNIST), reason="no raw MNIST files on this machine")
def test_real_mnist_offline_from_raw_files(offline, tmp_path):
  data_dir = str(tmp_path)
  folder = tfds_prepare.manual_dir("mnist", data_dir)
  os.makedirs(folder)
  for name in MNIST_FILES:
    shutil.copy(os.path.join(RAW_MNIST, name), folder)
  start = time.perf_counter()
  tfds_prepare.prepare("mnist", data_dir)
  print(f"real MNIST prepared in {time.perf_counter() - start:.1f} s")
  train = tfds.data_source("mnist", split="train", data_dir=data_dir, download=False)
  test = tfds.data_source("mnist", split="test", data_dir=data_dir, download=False)
  assert (len(train), len(test)) == (60000, 10000)

  raw_train = _raw_idx(os.path.join(RAW_MNIST, MNIST_FILES[0]), 16).reshape(60000, 784)
  raw_train_labels = _raw_idx(os.path.join(RAW_MNIST, MNIST_FILES[1]), 8)
  train_by_bytes = {image.tobytes(): label for image, label in zip(raw_train, raw_train_labels)}
  for i in np.random.default_rng(0).choice(60000, 500, replace=False):  # TFDS shuffles the order
    example = train[int(i)]
    assert train_by_bytes[np.asarray(example["image"]).tobytes()] == example["label"]

  # The test split's cache, built in a fresh process that must not import TensorFlow.
  code = ("import sys; from jaxgen import image_cache as d; "
          f"d.cached_images('mnist', image_size=28, split='test', data_dir={data_dir!r}); "
          "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
  subprocess.run([sys.executable, "-c", code], check=True,
                 cwd=os.path.dirname(os.path.dirname(__file__)))
  images, labels, meta = image_cache.cached_images("mnist", image_size=28, split="test",
                                                   data_dir=data_dir)
  assert images.shape == (10000, 28, 28, 1) and meta["num_examples"] == 10000
  assert (images.min(), images.max()) == (0, 255)
  raw_test = _raw_idx(os.path.join(RAW_MNIST, MNIST_FILES[2]), 16).reshape(10000, 784)
  raw_test_labels = _raw_idx(os.path.join(RAW_MNIST, MNIST_FILES[3]), 8)
  ours = np.concatenate([images.reshape(10000, 784), labels[:, None].astype(np.uint8)], 1)
  theirs = np.concatenate([raw_test, raw_test_labels[:, None]], 1)
  def sort_rows(rows):
    return rows[np.lexsort(rows.T[::-1])]
  np.testing.assert_array_equal(sort_rows(ours), sort_rows(theirs))  # the same images and labels

  result = image_source.loader_benchmark("mnist", batch_size=64, data_dir=data_dir, steps=50,
                                         image_size=28, split="test")
  assert result["data"] == "real" and result["images_per_s"] > 10000
