"""The FID Inception network: pytorch-fid's state-dict layout, loading, resize, one forward pass.

The published weights cannot be downloaded here: the tests write a random state dict in the
published layout, from this file's own table of the architecture (torchvision's Inception3 with
pytorch-fid's FID blocks), and check that it converts, loads and runs.
"""

import math
import os

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import convert_fid_weights
from jaxgen import inception


def _basic(name, cin, cout, kh, kw=None):
  """torchvision's BasicConv2d in a state dict: a bias-free conv and a BatchNorm."""
  kw = kh if kw is None else kw
  return {f"{name}.conv.weight": (cout, cin, kh, kw), f"{name}.bn.weight": (cout,),
          f"{name}.bn.bias": (cout,), f"{name}.bn.running_mean": (cout,),
          f"{name}.bn.running_var": (cout,), f"{name}.bn.num_batches_tracked": ()}


def _published_layout() -> dict:
  """name -> shape of every tensor in pt_inception-2015-12-05-6726825d.pth (PyTorch OIHW)."""
  table = {}
  add = lambda name, *args: table.update(_basic(name, *args))
  for name, cin, cout, k in (("Conv2d_1a_3x3", 3, 32, 3), ("Conv2d_2a_3x3", 32, 32, 3),
                             ("Conv2d_2b_3x3", 32, 64, 3), ("Conv2d_3b_1x1", 64, 80, 1),
                             ("Conv2d_4a_3x3", 80, 192, 3)):
    add(name, cin, cout, k)
  for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
    add(f"{name}.branch1x1", cin, 64, 1)
    add(f"{name}.branch5x5_1", cin, 48, 1)
    add(f"{name}.branch5x5_2", 48, 64, 5)
    add(f"{name}.branch3x3dbl_1", cin, 64, 1)
    add(f"{name}.branch3x3dbl_2", 64, 96, 3)
    add(f"{name}.branch3x3dbl_3", 96, 96, 3)
    add(f"{name}.branch_pool", cin, pool, 1)
  add("Mixed_6a.branch3x3", 288, 384, 3)
  add("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
  add("Mixed_6a.branch3x3dbl_2", 64, 96, 3)
  add("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
  for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    add(f"{name}.branch1x1", 768, 192, 1)
    add(f"{name}.branch7x7_1", 768, c, 1)
    add(f"{name}.branch7x7_2", c, c, 1, 7)
    add(f"{name}.branch7x7_3", c, 192, 7, 1)
    add(f"{name}.branch7x7dbl_1", 768, c, 1)
    add(f"{name}.branch7x7dbl_2", c, c, 7, 1)
    add(f"{name}.branch7x7dbl_3", c, c, 1, 7)
    add(f"{name}.branch7x7dbl_4", c, c, 7, 1)
    add(f"{name}.branch7x7dbl_5", c, 192, 1, 7)
    add(f"{name}.branch_pool", 768, 192, 1)
  add("Mixed_7a.branch3x3_1", 768, 192, 1)
  add("Mixed_7a.branch3x3_2", 192, 320, 3)
  add("Mixed_7a.branch7x7x3_1", 768, 192, 1)
  add("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
  add("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1)
  add("Mixed_7a.branch7x7x3_4", 192, 192, 3)
  for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
    add(f"{name}.branch1x1", cin, 320, 1)
    add(f"{name}.branch3x3_1", cin, 384, 1)
    add(f"{name}.branch3x3_2a", 384, 384, 1, 3)
    add(f"{name}.branch3x3_2b", 384, 384, 3, 1)
    add(f"{name}.branch3x3dbl_1", cin, 448, 1)
    add(f"{name}.branch3x3dbl_2", 448, 384, 3)
    add(f"{name}.branch3x3dbl_3a", 384, 384, 1, 3)
    add(f"{name}.branch3x3dbl_3b", 384, 384, 3, 1)
    add(f"{name}.branch_pool", cin, 192, 1)
  table["fc.weight"], table["fc.bias"] = (1008, 2048), (1008,)
  return table


def _random_state_dict(seed=0) -> dict:
  """Random tensors of the published layout, scaled so activations stay finite and O(1)."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in _published_layout().items():
    if name.endswith("conv.weight"):
      value = rng.normal(0, math.sqrt(2 / np.prod(shape[1:])), shape)
    elif name.endswith("running_var"):
      value = rng.uniform(0.5, 2.0, shape)
    elif name.endswith("num_batches_tracked"):
      value = np.array(0, np.int64)
    else:
      value = rng.normal(0, 0.1, shape) + (1.0 if name.endswith("bn.weight") else 0.0)
    state[name] = np.asarray(value, np.int64 if not shape else np.float32)
  return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  state = _random_state_dict()
  path = str(tmp_path_factory.mktemp("fid") / "random_fid.npz")
  inception.save_weights(path, inception.from_state_dict(state), "0" * 64)
  return path, state


def test_published_layout_maps_one_to_one_onto_the_flax_variables():
  table = _published_layout()
  assert len(table) == 566  # 94 BasicConv2d x (conv, 4 BatchNorm tensors, counter) + fc
  flat = inception.from_state_dict(_random_state_dict())
  shapes = inception.variable_shapes()
  assert set(flat) == set(shapes) and len(flat) == 472
  assert all(flat[k].shape == shapes[k] for k in flat)
  # pytorch-fid 0.3.0's FID Inception holds 23,885,392 numbers besides its BatchNorm counters.
  assert sum(v.size for v in flat.values()) == 23885392
  assert sum(np.prod(s) for k, s in table.items() if "num_batches" not in k) == 23885392


def test_conversion_transposes_kernels_and_renames_batchnorm():
  state = _random_state_dict(1)
  flat = inception.from_state_dict(state)
  torch_kernel = state["Mixed_6b.branch7x7_2.conv.weight"]  # (out, in, 1, 7)
  np.testing.assert_array_equal(flat["params/Mixed_6b/branch7x7_2/conv/kernel"],
                                torch_kernel.transpose(2, 3, 1, 0))
  assert flat["params/Mixed_6b/branch7x7_2/conv/kernel"].shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(flat["batch_stats/Mixed_7c/branch_pool/bn/var"],
                                state["Mixed_7c.branch_pool.bn.running_var"])
  np.testing.assert_array_equal(flat["params/Conv2d_1a_3x3/bn/scale"],
                                state["Conv2d_1a_3x3.bn.weight"])
  np.testing.assert_array_equal(flat["params/fc/kernel"], state["fc.weight"].T)


def test_other_networks_are_refused_in_one_line():
  state = _random_state_dict()
  aux = {**state, "AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1), np.float32)}
  imagenet_head = {**state, "fc.weight": np.zeros((1000, 2048), np.float32)}
  missing = {k: v for k, v in state.items() if not k.startswith("Mixed_7c.branch_pool")}
  for bad, message in ((aux, "not a variable of pytorch-fid's FID Inception"),
                       (imagenet_head, r"shape \(2048, 1000\)"), (missing, "lacks 5")):
    with pytest.raises(inception.FIDWeightsError, match=message) as error:
      inception.from_state_dict(bad)
    assert "\n" not in str(error.value)


def test_pool_features_of_a_random_weights_file(weights_file, monkeypatch):
  path, _ = weights_file
  monkeypatch.setenv(inception.WEIGHTS_ENV, path)
  variables, info = inception.load_weights()  # from $JAXGEN_FID_WEIGHTS
  assert info["path"] == os.path.abspath(path) and not info["published"]
  assert info["content_sha256"] == inception.load_weights(path)[1]["content_sha256"]
  rng = np.random.default_rng(2)
  a, b, c = rng.uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
  traces = inception._pool_features._cache_size()
  first = inception.features(variables, np.stack([a, b]), batch_size=2)
  # three images in batches of two: the last batch is padded, so nothing compiles again
  second = inception.features(variables, np.stack([a, c, b]), batch_size=2)
  assert inception._pool_features._cache_size() == traces + 1
  chex.assert_shape(first, (2, inception.FEATURE_DIM))
  chex.assert_tree_all_finite(second)
  assert first.std() > 1e-3  # a working network, not a constant
  # Inference-mode BatchNorm: an image's features do not depend on its batch.
  np.testing.assert_allclose(second[0], first[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(second[2], first[1], rtol=1e-5, atol=1e-5)
  assert np.abs(second[1] - first[1]).max() > 1e-3


def _torch_bilinear_reference(image, out_h, out_w):
  """PyTorch's interpolate(mode="bilinear", align_corners=False), one output pixel at a time."""
  in_h, in_w = image.shape[:2]

  def taps(i, n_in, n_out):
    src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    low = min(int(math.floor(src)), n_in - 1)
    return low, min(low + 1, n_in - 1), src - low

  out = np.zeros((out_h, out_w, image.shape[2]))
  for i in range(out_h):
    y0, y1, fy = taps(i, in_h, out_h)
    for j in range(out_w):
      x0, x1, fx = taps(j, in_w, out_w)
      out[i, j] = ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x1])
                   + fy * ((1 - fx) * image[y1, x0] + fx * image[y1, x1]))
  return out


@pytest.mark.parametrize("in_size, out_size", [((5, 7), 12), ((9, 11), 4), ((6, 6), 6)])
def test_resize_is_pytorch_bilinear(in_size, out_size):
  image = np.random.default_rng(3).uniform(size=(*in_size, 2)).astype(np.float32)
  got = np.asarray(inception.resize_bilinear(jnp.asarray(image[None]), out_size))[0]
  np.testing.assert_allclose(got, _torch_bilinear_reference(image, out_size, out_size),
                             rtol=1e-6, atol=1e-6)


def test_average_pool_leaves_padding_out():
  # TensorFlow's pool (count_include_pad=False): a constant stays constant at the borders too,
  # where torchvision's default would give 4/9 in the corners.
  pooled = inception._avg_pool_3x3(jnp.full((1, 5, 5, 2), 3.0))
  np.testing.assert_allclose(pooled, 3.0, rtol=1e-6)


def test_inception_input_is_rgb_in_0_1():
  grey = np.array([[[[0.0], [255.0]]]])
  x = inception.to_inception_input(grey, (0.0, 255.0))
  np.testing.assert_array_equal(x, [[[[0, 0, 0], [1, 1, 1]]]])
  with pytest.raises(ValueError, match="1 or 3 channels"):
    inception.to_inception_input(np.zeros((1, 2, 2, 2)), (0.0, 1.0))


def test_weights_file_errors_are_one_line(weights_file, tmp_path, monkeypatch):
  path, _ = weights_file
  monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
  damaged = str(tmp_path / "damaged.npz")
  with np.load(path) as archive:
    stored = dict(archive)
  stored["params/fc/bias"] = stored["params/fc/bias"] + 1.0  # weights edited, digest kept
  np.savez(damaged, **stored)
  plain = str(tmp_path / "plain.npz")
  np.savez(plain, x=np.zeros(3))
  cases = [((None,), "no FID Inception weights given"),
           ((str(tmp_path / "absent.npz"),), "do not exist"),
           ((damaged,), "is damaged"),
           ((plain,), "not written by experiments/convert_fid_weights.py"),
           ((path, "f" * 64), "not the expected ffffffffffffffff")]
  for args, message in cases:
    with pytest.raises(inception.FIDWeightsError, match=message) as error:
      inception.load_weights(*args)
    assert "\n" not in str(error.value)
    if message in ("no FID Inception weights given", "do not exist"):
      assert inception.PUBLISHED_URL in str(error.value) and inception.WEIGHTS_ENV in str(
          error.value)


def test_converter_refuses_a_file_that_is_not_the_published_one(tmp_path):
  source = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
  source.write_bytes(b"not the published weights")
  with pytest.raises(ValueError, match="not the published") as error:
    convert_fid_weights.convert(str(source), str(tmp_path / "out.npz"))
  assert "\n" not in str(error.value) and not (tmp_path / "out.npz").exists()
