"""The classifier of the classifier FID: shapes, shifts, one step on 1 vs 2 devices, a tiny
training run, and save/load."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import classifier, parallel


def _two_class_images(rng, n):
  """32x32x1 images in [-1, 1]: class 0 a bright bar across the top, class 1 down the left."""
  labels = rng.integers(0, 2, n).astype(np.int32)
  images = np.full((n, 32, 32, 1), -1.0, np.float32)
  images[labels == 0, 6:10, 4:28] = 1.0
  images[labels == 1, 4:28, 6:10] = 1.0
  return images + rng.normal(0, 0.1, images.shape).astype(np.float32), labels


def test_shapes():
  model = classifier.Classifier(num_classes=10, width=8)
  x = jnp.zeros((3, 32, 32, 1))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  chex.assert_shape(model.apply({"params": params}, x), (3, 10))
  chex.assert_shape(model.apply({"params": params}, x, features=True), (3, 128))


def test_random_shift_moves_each_image_by_its_own_offset():
  images = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
  shifted = classifier.random_shift(images, jax.random.PRNGKey(3), 2)
  for i in range(2):
    # each output is a window of the (-1)-padded input: find its offset and check it
    padded = np.pad(np.asarray(images[i, ..., 0]), 2, constant_values=-1.0)
    matches = [(dy, dx) for dy in range(5) for dx in range(5)
               if np.array_equal(padded[dy:dy + 6, dx:dx + 6], shifted[i, ..., 0])]
    assert len(matches) == 1
  assert classifier.random_shift(images, jax.random.PRNGKey(3), 0) is images


def test_step_on_two_devices_equals_one_device():
  rng = np.random.default_rng(0)
  images, labels = _two_class_images(rng, 8)
  model = classifier.Classifier(num_classes=2, width=4)
  opt = classifier.optimizer(1e-3, 10)
  state = classifier.init_state(jax.random.PRNGKey(1), model, opt, (32, 32, 1))
  key = jax.random.PRNGKey(2)
  step = functools.partial(classifier.train_step, model=model, optimizer=opt)
  one, m1 = jax.jit(step)(state, (images, labels), key)
  devices = jax.local_devices()[:2]
  two, m2 = jax.pmap(functools.partial(step, axis_name=parallel.AXIS), axis_name=parallel.AXIS,
                     in_axes=(0, 0, None), devices=devices)(
      parallel.replicate(state, devices),
      (parallel.shard(images, 2), parallel.shard(labels, 2)), key)
  # Adam's first update is about lr * sign(gradient) (1e-3) wherever the gradient is far above
  # eps, so a gradient near eps can carry a rounding difference of the split batch into a few
  # parts per 1e3 of one update: 1e-5 is 1% of an update (seen: 4.3e-6 on an AMD EPYC Zen 3)
  chex.assert_trees_all_close(parallel.unreplicate(two).params, one.params, atol=1e-5)
  chex.assert_trees_all_close(parallel.unreplicate(m2), m1, rtol=1e-5)


def test_tiny_training_learns_and_save_load_round_trips(tmp_path):
  rng = np.random.default_rng(4)
  train_x, train_y = _two_class_images(rng, 256)
  test_x, test_y = _two_class_images(rng, 64)
  model, params, last = classifier.train(train_x, train_y, num_classes=2, epochs=2,
                                         batch_size=32, learning_rate=3e-3, width=4, seed=0)
  assert np.isfinite(last["loss"])
  accuracy = classifier.accuracy(model, params, test_x, test_y, batch_size=48)
  assert accuracy == 1.0
  directory = str(tmp_path / "classifier")
  classifier.save(directory, model, params, (32, 32, 1), {"test_accuracy": accuracy})
  loaded_model, loaded_params, config = classifier.load(directory)
  assert loaded_model == model and config["test_accuracy"] == 1.0
  features = classifier.features(model, params, test_x, 64)
  np.testing.assert_array_equal(classifier.features(loaded_model, loaded_params, test_x, 64),
                                features)
  # another batch size may block the convolutions differently: equal to float rounding
  np.testing.assert_allclose(classifier.features(loaded_model, loaded_params, test_x, 40),
                             features, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="already holds a classifier"):
    classifier.save(directory, model, params, (32, 32, 1), {})


def test_bad_inputs_are_one_line_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no trained classifier"):
    classifier.load(str(tmp_path))
  with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
    classifier.train(np.zeros((4, 32, 32, 1)), np.array([0, 1, 2, 0]), num_classes=2)
