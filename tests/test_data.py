"""The sources' splits and whole-split access, the prefetching stream, the device layout of
batches."""

import os

import numpy as np
import pytest

from jaxgen import data, parallel, pixels


def test_pixel_mapping_is_reexported_by_data():
  assert data.to_model_range is pixels.to_model_range
  assert data.from_model_range is pixels.from_model_range


@pytest.mark.parametrize("dataset", ["blobs10", "mnist", "celeba", "npy"])
def test_bad_split_is_a_one_line_error_before_any_work(dataset, tmp_path):
  if dataset == "npy":
    np.save(tmp_path / "a.npy", np.zeros((4, 8, 8), np.uint8))
    dataset = f"npy:{tmp_path / 'a.npy'}"
  data_dir = tmp_path / "tfds"
  with pytest.raises(ValueError, match="unknown split='validation'; choose 'train' or 'test'") \
      as error:
    data.load(dataset, image_size=8, batch_size=2, seed=0, split="validation",
              data_dir=str(data_dir))
  assert "\n" not in str(error.value)
  assert not os.path.exists(data_dir)  # nothing prepared or cached


@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_users_images_have_one_split(kind, tmp_path):
  path = tmp_path / f"a.{kind}"
  images = np.zeros((4, 8, 8), np.uint8)
  if kind == "npy":
    np.save(path, images)
  else:
    np.savez(path, images=images)
  with pytest.raises(data.DatasetError, match=r"one split, 'train'.*move some to another folder") \
      as error:
    data.load(f"{kind}:{path}", image_size=8, batch_size=2, seed=0, split="test",
              data_dir=str(tmp_path))
  assert "\n" not in str(error.value)
  assert not os.path.exists(tmp_path / "jaxgen_cache")


def test_users_images_whole_split_in_order_with_labels(tmp_path):
  ids = np.arange(11)
  np.savez(tmp_path / "digits.npz", images=np.broadcast_to(
      (ids * 20).astype(np.uint8)[:, None, None], (11, 4, 4)), labels=ids + 100)
  source = data.load(f"npz:{tmp_path / 'digits.npz'}", image_size=4, batch_size=4, seed=1,
                     data_dir=str(tmp_path))
  assert (source.split, source.num_examples, source.batches_per_epoch) == ("train", 11, 3)
  images, labels = zip(*[source.eval_batch(i) for i in range(source.batches_per_epoch)])
  np.testing.assert_array_equal(np.concatenate(labels), ids + 100)
  np.testing.assert_allclose(np.concatenate(images)[:, 0, 0, 0], ids * 20 / 127.5 - 1, atol=1e-6)
  assert [len(x) for x in images] == [4, 4, 3]


def test_prefetch_yields_in_order_from_the_start_index():
  stream = data.Prefetch(lambda i: i * i, start=3, depth=2)
  assert [next(stream) for _ in range(4)] == [9, 16, 25, 36]
  stream.close()


def test_prefetch_raises_the_producers_error_in_the_consumer():
  def make(i):
    if i == 2:
      raise OSError("disk gone")
    return i
  stream = data.Prefetch(make, start=0)
  assert next(stream) == 0 and next(stream) == 1
  with pytest.raises(OSError, match="disk gone"):
    next(stream)
  stream.close()


def test_shard_gives_device_d_the_slice_that_draw_keeps():
  # (n_critic=2, batch=6): device d must hold examples 3d .. 3d+2 of each critic batch.
  batch = np.arange(2 * 6).reshape(2, 6)
  split = parallel.shard(batch, 2, axis=1)
  assert split.shape == (2, 2, 3)
  np.testing.assert_array_equal(split[1], [[3, 4, 5], [9, 10, 11]])
  np.testing.assert_array_equal(parallel.shard(np.arange(4), 2), [[0, 1], [2, 3]])
