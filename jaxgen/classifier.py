"""A small CNN classifier of MNIST-like images, for a "classifier FID" that needs no external
weights.

FID's idea (Heusel et al. 2017) with another feature network: jaxgen trains this classifier once
on a labelled dataset's training split (MNIST-like digits zero-padded to 32x32x1, pixels in
[-1, 1]), saves it with orbax and reuses it; the Frechet distance between the Gaussians fitted
to its penultimate-layer features of real and generated images is the classifier FID. A number
from one trained classifier is comparable only with numbers from the same classifier (same
saved weights), which is why its directory records its test accuracy and training settings.

Network: four 3x3/4x4 convolutions with ReLU (two of stride 2: 32 -> 16 -> 8), a 128-unit ReLU
layer (the features) and a linear layer to the class logits; Adam with a cosine-decayed step,
softmax cross-entropy, and random translations of up to two pixels as augmentation.
"""

import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxgen.layers import Conv
from jaxgen.parallel import draw, pmean

CONFIG_FILE = "classifier.json"


class Classifier(nn.Module):
  num_classes: int = 10
  width: int = 32
  feature_dim: int = 128
  conv: Any = Conv
  dtype: Any = None

  @nn.compact
  def __call__(self, images, features: bool = False):
    """Class logits (N, num_classes), or the penultimate features (N, feature_dim)."""
    x = images
    for channels, kernel, stride, padding in ((self.width, 3, 1, 1), (self.width, 4, 2, 1),
                                              (2 * self.width, 3, 1, 1),
                                              (2 * self.width, 4, 2, 1)):
      x = nn.relu(self.conv(channels, kernel, stride, padding, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(self.feature_dim, dtype=self.dtype)(x.reshape(x.shape[0], -1)))
    if features:
      return x.astype(jnp.float32)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


@struct.dataclass
class ClassifierState:
  step: jax.Array
  params: Any
  opt_state: Any


def optimizer(learning_rate: float, total_steps: int) -> optax.GradientTransformation:
  return optax.adam(optax.cosine_decay_schedule(learning_rate, max(total_steps, 1)))


def random_shift(images: jax.Array, key: jax.Array, max_shift: int, axis_name=None):
  """Each image translated by its own (dy, dx) in [-max_shift, max_shift], the border filled with
  the background value -1; the shifts are drawn for the global batch."""
  if max_shift == 0:
    return images
  n, h, w, _ = images.shape
  shifts = draw(jax.random.randint, key, (n, 2), axis_name, minval=0, maxval=2 * max_shift + 1)
  padded = jnp.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)),
                   constant_values=-1.0)
  crop = lambda image, s: jax.lax.dynamic_slice(image, (s[0], s[1], 0), (h, w, image.shape[-1]))
  return jax.vmap(crop)(padded, shifts)


def loss_fn(params, images, labels, *, model: nn.Module):
  """Mean softmax cross-entropy of integer labels, and the batch accuracy."""
  logits = model.apply({"params": params}, images)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def train_step(state: ClassifierState, batch, key: jax.Array, *, model: nn.Module,
               optimizer: optax.GradientTransformation, max_shift: int = 2, axis_name=None):
  """One Adam step on batch = (images (B, H, W, C) in [-1, 1], labels (B,) int32); the shifts
  come from fold_in(key, state.step)."""
  images, labels = batch
  images = random_shift(images, jax.random.fold_in(key, state.step), max_shift, axis_name)
  grads, metrics = jax.grad(functools.partial(loss_fn, model=model), has_aux=True)(
      state.params, images, labels)
  updates, opt_state = optimizer.update(pmean(grads, axis_name), state.opt_state, state.params)
  return (ClassifierState(state.step + 1, optax.apply_updates(state.params, updates), opt_state),
          pmean(metrics, axis_name))


def init_state(key: jax.Array, model: nn.Module, optimizer, image_shape) -> ClassifierState:
  params = model.init(key, jnp.zeros((1, *image_shape)))["params"]
  return ClassifierState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def train(images: np.ndarray, labels: np.ndarray, *, num_classes: int = 10, epochs: int = 3,
          batch_size: int = 128, learning_rate: float = 1e-3, width: int = 32,
          max_shift: int = 2, seed: int = 0, log=None):
  """Trains a Classifier on images (N, H, W, C) in [-1, 1] and integer labels (N,).

  Returns (model, params, metrics of the last step). Every epoch visits the examples in the
  order np.random.default_rng([seed, epoch]).permutation(N), dropping the last partial batch;
  `log(step, metrics)` is called every 100 steps when given.
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  if images.ndim != 4 or len(images) != len(labels):
    raise ValueError(f"train needs images (N, H, W, C) and labels (N,), got {images.shape} and "
                     f"{labels.shape}")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}.."
                     f"{labels.max()}")
  steps_per_epoch = len(images) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{len(images)} images make no batch of {batch_size}")
  model = Classifier(num_classes, width)
  opt = optimizer(learning_rate, epochs * steps_per_epoch)
  init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
  state = init_state(init_key, model, opt, images.shape[1:])
  step_fn = jax.jit(functools.partial(train_step, model=model, optimizer=opt,
                                      max_shift=max_shift), donate_argnums=0)
  metrics = {}
  for epoch in range(epochs):
    order = np.random.default_rng([seed, epoch]).permutation(len(images))
    for b in range(steps_per_epoch):
      index = np.sort(order[b * batch_size:(b + 1) * batch_size])  # sorted: faster memmap reads
      state, metrics = step_fn(state, (images[index], labels[index]), train_key)
      if log is not None and int(state.step) % 100 == 0:
        log(int(state.step), {k: float(v) for k, v in metrics.items()})
  return model, state.params, {k: float(v) for k, v in metrics.items()}


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, params, images, features):
  return model.apply({"params": params}, images, features=features)


def _in_batches(model, params, images, features, batch_size):
  images = np.asarray(images, np.float32)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)  # one shape for every batch: one compilation
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
    out.append(np.asarray(_apply(model, params, chunk, features))[:batch_size - pad])
  return np.concatenate(out)


def features(model: Classifier, params, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """(N, feature_dim) penultimate-layer features of images in [-1, 1]."""
  return _in_batches(model, params, images, True, batch_size)


def accuracy(model: Classifier, params, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 500) -> float:
  """Fraction of images whose most likely class is their label."""
  logits = _in_batches(model, params, images, False, batch_size)
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def save(directory: str, model: Classifier, params, image_shape, meta: dict) -> None:
  """Writes the parameters (orbax) and classifier.json: the network's settings, the image shape
  and `meta` (dataset, test accuracy, training settings)."""
  from jaxgen import checkpoint, report

  if os.path.exists(os.path.join(directory, CONFIG_FILE)):
    raise ValueError(f"{directory} already holds a classifier; remove it to train a new one")
  checkpoints = checkpoint.Checkpoints(os.path.join(directory, "checkpoints"), keep=1)
  checkpoints.save(1, params, {})
  checkpoints.close()
  config = {"num_classes": model.num_classes, "width": model.width,
            "feature_dim": model.feature_dim, "image_shape": list(image_shape), **meta}
  report.write_json(os.path.join(directory, CONFIG_FILE), config)


def load(directory: str) -> tuple:
  """(model, params, config) of a classifier saved by `save`; a one-line error if none is there."""
  from jaxgen import checkpoint

  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no trained classifier in {directory} (no {CONFIG_FILE})")
  with open(path) as f:
    config = json.load(f)
  model = Classifier(config["num_classes"], config["width"], config["feature_dim"])
  like = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros((1, *config["image_shape"])))["params"])
  checkpoints = checkpoint.Checkpoints(os.path.join(directory, "checkpoints"), read_only=True)
  params, _ = checkpoints.restore(like)
  checkpoints.close()
  return model, params, config
