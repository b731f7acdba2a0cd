"""Gaussian-blob images: shapes, reproducibility, statistics against their closed forms, and the
source's train and test splits."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxgen import data
from jaxgen.blobs import BlobSpec, blob_images


def _erf(x):
  return np.vectorize(math.erf)(x)


def test_shapes_and_truth():
  spec = BlobSpec(image_size=16, num_blobs=10, width=(1.0, 2.0), amplitude=(0.5, 1.0))
  images, truth = blob_images(np.random.default_rng(0), 7, spec)
  assert images.shape == (7, 16, 16, 1) and images.dtype == np.float32
  assert truth["centres"].shape == (7, 10, 2)
  assert truth["widths"].shape == truth["amplitudes"].shape == (7, 10)
  assert 1.0 <= truth["widths"].min() and truth["widths"].max() <= 2.0
  assert 0.5 <= truth["amplitudes"].min() and truth["amplitudes"].max() <= 1.0


def test_image_equals_the_formula_at_one_pixel():
  spec = BlobSpec(image_size=12, num_blobs=3, width=(1.0, 3.0), amplitude=(0.2, 2.0))
  images, t = blob_images(np.random.default_rng(1), 2, spec)
  n, y, x = 1, 5, 9
  expected = sum(
      t["amplitudes"][n, k] * math.exp(-((y + 0.5 - t["centres"][n, k, 0]) ** 2 +
                                         (x + 0.5 - t["centres"][n, k, 1]) ** 2)
                                       / (2 * t["widths"][n, k] ** 2)) for k in range(3))
  assert images[n, y, x, 0] == pytest.approx(expected, rel=1e-5)


def test_centres_are_uniform():
  # U[0, S): mean S/2, variance S^2/12; 20000 draws put both within a few standard errors.
  _, truth = blob_images(np.random.default_rng(2), 20000, BlobSpec(image_size=32))
  c = truth["centres"].reshape(-1, 2)
  np.testing.assert_allclose(c.mean(0), 16.0, atol=4 * 32 / math.sqrt(12 * 20000))
  np.testing.assert_allclose(c.var(0), 32 ** 2 / 12, rtol=0.03)
  hist, _ = np.histogram(c[:, 0], bins=8, range=(0, 32))
  assert hist.min() > 0.9 * hist.mean() and hist.max() < 1.1 * hist.mean()


def test_flux_counts_the_blobs():
  # Sampled at pixel centres, a blob's pixel sum is the Gaussian's integral over the image:
  # A 2 pi s^2 times the fraction of its mass inside, from the error function. Summed over the
  # truth it gives the image's total flux, so the blob count is recoverable from the flux.
  spec = BlobSpec(image_size=32, num_blobs=10, width=1.5, amplitude=1.0)
  images, t = blob_images(np.random.default_rng(3), 50, spec)
  s, c = t["widths"][..., None], t["centres"]
  inside = 0.5 * (_erf((32 - c) / (s * math.sqrt(2))) - _erf(-c / (s * math.sqrt(2))))
  expected = (t["amplitudes"] * 2 * math.pi * t["widths"] ** 2 * inside.prod(-1)).sum(1)
  # Where the image edge cuts a blob, the pixel (midpoint-rule) sum is off by O(1/24 f'):
  # a few tenths of a percent; interior blobs are exact to float precision.
  np.testing.assert_allclose(images.sum((1, 2, 3)), expected, rtol=5e-3)
  interior = (inside.prod(-1) > 0.9999).all(1)
  counts = images.sum((1, 2, 3))[interior] / (2 * math.pi * 1.5 ** 2)
  np.testing.assert_allclose(counts, 10.0, rtol=1e-4)


def test_width_from_second_moments():
  spec = BlobSpec(image_size=48, num_blobs=1, width=(1.0, 3.0))
  images, t = blob_images(np.random.default_rng(4), 400, spec)
  c, s = t["centres"][:, 0], t["widths"][:, 0]
  far = ((c > 6 * s[:, None]) & (c < 48 - 6 * s[:, None])).all(1)  # truncation negligible
  img = images[far, ..., 0]
  grid = np.arange(48) + 0.5
  mass = img.sum((1, 2))
  mean_y = (img.sum(2) * grid).sum(1) / mass
  var_y = (img.sum(2) * (grid - mean_y[:, None]) ** 2).sum(1) / mass
  assert far.sum() > 50
  np.testing.assert_allclose(mean_y, c[far, 0], atol=1e-4)
  np.testing.assert_allclose(np.sqrt(var_y), s[far], rtol=1e-3)


def test_source_is_a_pure_function_of_seed_and_index():
  a = data.load("blobs10", image_size=16, batch_size=8, seed=5)
  b = data.load("blobs10", image_size=16, batch_size=8, seed=5)
  other = data.load("blobs10", image_size=16, batch_size=8, seed=6)
  later = [b.batch(i) for i in (3, 0, 2)]  # any order: position is only the index
  np.testing.assert_array_equal(a.batch(0), later[1])
  np.testing.assert_array_equal(a.batch(3), later[0])
  assert not np.array_equal(a.batch(0), a.batch(1))
  assert not np.array_equal(a.batch(0), other.batch(0))
  x = a.batch(2)
  assert x.shape == (8, 16, 16, 1) and x.min() >= -1.0 and x.max() <= 1.0


def test_train_batches_are_the_bare_seed_stream():
  # Runs from before splits existed resume on the same batches: batch i is rng([seed, i])'s.
  source = data.load("blobs10", image_size=16, batch_size=8, seed=5)
  images, _ = blob_images(np.random.default_rng([5, 3]), 8, source.spec)
  np.testing.assert_array_equal(source.batch(3), data.to_model_range(images, source.pixel_range))


def _centres(stream):
  """Each blobs1 image's identity: its blob centre (fixed width and amplitude)."""
  return {tuple(c) for c in np.concatenate(stream).reshape(-1, 2)}


def test_test_split_is_deterministic_and_disjoint_from_train():
  kwargs = dict(image_size=8, batch_size=16, seed=5)
  train = data.load("blobs1", split="train", **kwargs)
  test = data.load("blobs1", split="test", **kwargs)
  again = data.load("blobs1", split="test", **kwargs)
  assert (train.split, test.split) == ("train", "test")
  for i in (0, 7, 3):
    np.testing.assert_array_equal(test.batch(i), again.batch(i))
    np.testing.assert_array_equal(test.eval_batch(i)[0], again.eval_batch(i)[0])
  streams = {  # 800 images of each of the four streams
      "train batches": [train.batch_with_truth(i)[1]["centres"] for i in range(50)],
      "test batches": [test.batch_with_truth(i)[1]["centres"] for i in range(50)],
      "train eval": [train.eval_batch_with_truth(i)[1]["centres"] for i in range(50)],
      "test eval": [test.eval_batch_with_truth(i)[1]["centres"] for i in range(50)]}
  centres = {name: _centres(stream) for name, stream in streams.items()}
  assert all(len(c) == 800 for c in centres.values())
  assert len(set.union(*centres.values())) == 4 * 800  # no image in two streams
  # An image is its truth: the batch is the blobs drawn at those centres.
  np.testing.assert_array_equal(test.eval_batch(2)[0], data.to_model_range(
      test.eval_batch_with_truth(2)[0], test.pixel_range))


def test_eval_set_is_fixed_whatever_the_batch_size():
  by_64 = data.load("blobs1", image_size=8, batch_size=64, seed=2, split="test")
  by_100 = data.load("blobs1", image_size=8, batch_size=100, seed=2, split="test")
  assert by_64.num_examples == by_100.num_examples == data.BLOB_EVAL_EXAMPLES == 10000
  assert (by_64.batches_per_epoch, by_100.batches_per_epoch) == (157, 100)
  batches = [by_64.eval_batch(i) for i in range(157)]
  assert len(batches[-1][0]) == 10000 - 156 * 64 and all(labels is None for _, labels in batches)
  whole = np.concatenate([images for images, _ in batches])
  assert whole.shape == (10000, 8, 8, 1)
  np.testing.assert_array_equal(
      whole, np.concatenate([by_100.eval_batch(i)[0] for i in range(100)]))
  assert len(np.unique(whole.reshape(10000, -1), axis=0)) == 10000  # each image once
  np.testing.assert_array_equal(by_64.eval_batch(5)[0], whole[320:384])  # random access
  with pytest.raises(IndexError, match=r"eval_batch\(157\): the blob test split has 157 "):
    by_64.eval_batch(157)


def test_bad_split_is_a_one_line_error():
  with pytest.raises(ValueError, match="unknown split='valid'; choose 'train' or 'test'") as error:
    data.load("blobs1", image_size=8, batch_size=2, seed=0, split="valid")
  assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match="unknown split='Train'"):
    data.BlobSource(BlobSpec(), 2, 0, split="Train")


def test_blob_runs_do_not_import_tensorflow():
  code = ("import sys; from jaxgen import data; data.check_name('blobs1'); data.dataset_names(); "
          "data.load('blobs1', image_size=8, batch_size=2, seed=0).batch(0); "
          "data.load('blobs1', image_size=8, batch_size=2, seed=0, split='test').eval_batch(0); "
          "loaded = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not loaded, loaded")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(__file__)))
  assert done.returncode == 0, done.stderr


def test_model_range_round_trip():
  spec = BlobSpec(num_blobs=10, amplitude=1.0)
  assert spec.pixel_range == (0.0, 2.0)
  assert BlobSpec(num_blobs=1, amplitude=(0.5, 3.0)).pixel_range == (0.0, 3.0)
  x = np.array([0.0, 0.5, 1.0, 2.0, 3.0], np.float32)
  m = data.to_model_range(x, spec.pixel_range)
  np.testing.assert_allclose(m, [-1.0, -0.5, 0.0, 1.0, 1.0])  # above the range clips
  np.testing.assert_allclose(data.from_model_range(m, spec.pixel_range), [0, 0.5, 1, 2, 2])


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_blobs=0), "num_blobs"), (dict(width=0.0), "width"),
    (dict(amplitude=(2.0, 1.0)), "amplitude")])
def test_bad_spec_is_a_clear_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    BlobSpec(**kwargs)


def test_unknown_dataset_names_the_closest():
  with pytest.raises(ValueError, match="did you mean 'blobs10'"):
    data.check_name("blob10")
