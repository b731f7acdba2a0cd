"""The prefetching stream and the device layout of batches."""

import numpy as np
import pytest

from jaxgen import data, parallel


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
