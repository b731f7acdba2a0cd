"""The Inception-v3 feature network of published FIDs, in Flax (NHWC).

FID (Heusel et al. 2017) is the Frechet distance between Gaussians fitted to the 2048-d pool
features of one particular network: the TensorFlow Inception-v3 graph of 2015-12-05 that the
TTUR code used, which pytorch-fid ports as `pt_inception-2015-12-05-6726825d.pth`. It differs
from torchvision's Inception-v3 where that graph does, kept here as pytorch-fid keeps it:
  - the 3x3 average pools of the A, C and E blocks leave padding out of the average
    (count_include_pad=False);
  - Mixed_7c (the second E block) pools its pool branch with a 3x3 max pool, not an average;
  - the classifier has 1008 outputs (unused by FID).
Inputs are RGB images in [0, 1] of any size, resized to 299x299 with PyTorch's bilinear
interpolation (align_corners=False, no antialiasing) and scaled to [-1, 1] before the network.

Parameter names map 1:1 from pytorch-fid's state dict: `Mixed_6b.branch7x7_2.conv.weight` is
params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"] (transposed OIHW -> HWIO),
`.bn.weight`/`.bn.bias` are ["bn"]["scale"]/["bn"]["bias"], `.bn.running_mean`/`running_var` are
batch_stats[...]["bn"]["mean"]/["var"]. `experiments/convert_fid_weights.py` turns the published
file into a `.npz` of those arrays once; nothing is downloaded here.
"""

import functools
import hashlib
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_LOGITS = 1008
BN_EPSILON = 1e-3  # torchvision's BasicConv2d (TensorFlow's 0.001)
WEIGHTS_ENV = "JAXGEN_FID_WEIGHTS"
PUBLISHED_FILE = "pt_inception-2015-12-05-6726825d.pth"
PUBLISHED_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 + PUBLISHED_FILE)
# sha256 of the published file: its name's suffix is the start (torch.hub's convention); the
# whole digest is as recorded publicly for the same file re-hosted by torch-fidelity.
PUBLISHED_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FORMAT = "jaxgen-fid-inception-v1"
HOW_TO_GET = (f"convert pytorch-fid's {PUBLISHED_URL} once with `python -m "
              f"experiments.convert_fid_weights --source={PUBLISHED_FILE} --out=fid_inception.npz`"
              f" and pass --inception_weights=fid_inception.npz or set {WEIGHTS_ENV}")


class FIDWeightsError(ValueError):
  """The FID weights file is missing or wrong; the message says what to do, in one line."""


# ---------------------------------------------------------------------------------------------
# Input: PyTorch's bilinear resize and the [-1, 1] scaling.


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) interpolation weights of torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False) along one axis: output i samples the input at
  max(0, (i + 0.5) in / out - 0.5), between its two nearest pixels (the last one repeated)."""
  source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = source - low
  weights = np.zeros((out_size, in_size))
  np.add.at(weights, (np.arange(out_size), low), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), high), frac)
  return weights


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """NHWC images resized to size x size as PyTorch's bilinear interpolate does (two matmuls)."""
  rows = jnp.asarray(bilinear_matrix(images.shape[1], size), images.dtype)
  cols = jnp.asarray(bilinear_matrix(images.shape[2], size), images.dtype)
  highest = lax.Precision.HIGHEST
  images = jnp.einsum("oh,nhwc->nowc", rows, images, precision=highest)
  return jnp.einsum("pw,nowc->nopc", cols, images, precision=highest)


# ---------------------------------------------------------------------------------------------
# The network.


class BasicConv(nn.Module):
  """torchvision's BasicConv2d: convolution without bias, BatchNorm (eps 1e-3), ReLU."""
  features: int
  kernel: Sequence[int] = (1, 1)
  strides: int = 1
  padding: Sequence[int] = (0, 0)
  dtype: Any = jnp.float32  # float64 (with jax_enable_x64) for exact comparisons

  @nn.compact
  def __call__(self, x):
    pad_h, pad_w = self.padding
    # Full float32 products (no TF32 on GPUs): features must match the reference to 1e-4.
    x = nn.Conv(self.features, tuple(self.kernel), self.strides,
                padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False,
                precision=lax.Precision.HIGHEST, dtype=self.dtype, param_dtype=self.dtype,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, dtype=self.dtype,
                     param_dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  # TensorFlow's average pool, which pytorch-fid keeps: padding is left out of the average.
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride_2(x):
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  """Mixed_5b/c/d (pytorch-fid's FIDInceptionA): 1x1, 5x5, double 3x3 and pool branches."""
  pool_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, dtype=self.dtype)
    b1 = conv(64, name="branch1x1")(x)
    b5 = conv(48, name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35 -> 17 (strided 3x3, double 3x3, max pool)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, dtype=self.dtype)
    b3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = conv(64, name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride_2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..e (pytorch-fid's FIDInceptionC): factorised 7x7 branches."""
  channels_7x7: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, dtype=self.dtype)
    c = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = conv(192, name="branch1x1")(x)
    b7 = conv(c, name="branch7x7_1")(x)
    b7 = conv(c, **row, name="branch7x7_2")(b7)
    b7 = conv(192, **col, name="branch7x7_3")(b7)
    bd = conv(c, name="branch7x7dbl_1")(x)
    bd = conv(c, **col, name="branch7x7dbl_2")(bd)
    bd = conv(c, **row, name="branch7x7dbl_3")(bd)
    bd = conv(c, **col, name="branch7x7dbl_4")(bd)
    bd = conv(192, **row, name="branch7x7dbl_5")(bd)
    bp = conv(192, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17 -> 8."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, dtype=self.dtype)
    b3 = conv(192, name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride_2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (FIDInceptionE_1, average pool) and Mixed_7c (FIDInceptionE_2, max pool)."""
  max_pool: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv, dtype=self.dtype)
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    b1 = conv(320, name="branch1x1")(x)
    b3 = conv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, **row, name="branch3x3_2a")(b3),
                          conv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, **row, name="branch3x3dbl_3a")(bd),
                          conv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.max_pool:  # the TensorFlow graph's quirk in its last block
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = conv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInception(nn.Module):
  """pytorch-fid's InceptionV3 up to the 2048-d pool features (its output block 3).

  images: (N, H, W, 3) RGB in [0, 1]. Returns (N, 2048) pool features; with `logits=True`,
  also the (N, 1008) classifier logits (not used by FID, kept so every published weight loads).
  dtype: float32; float64 (under jax_enable_x64) computes every layer in double precision.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, logits: bool = False):
    conv = functools.partial(BasicConv, dtype=self.dtype)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"FID Inception takes (N, H, W, 3) RGB images, got shape {images.shape}")
    x = resize_bilinear(images.astype(self.dtype), INPUT_SIZE) * 2.0 - 1.0
    x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)  # 149x149
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147x147
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_stride_2(x)  # 73x73
    x = conv(80, name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71x71
    x = _max_pool_3x3_stride_2(x)  # 35x35
    x = InceptionA(32, dtype=self.dtype, name="Mixed_5b")(x)
    x = InceptionA(64, dtype=self.dtype, name="Mixed_5c")(x)
    x = InceptionA(64, dtype=self.dtype, name="Mixed_5d")(x)
    x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)  # 17x17
    for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                           ("Mixed_6e", 192)):
      x = InceptionC(channels, dtype=self.dtype, name=name)(x)
    x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)  # 8x8
    x = InceptionE(dtype=self.dtype, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, dtype=self.dtype, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    if not logits:
      return pool
    return pool, nn.Dense(NUM_LOGITS, precision=lax.Precision.HIGHEST, dtype=self.dtype,
                          param_dtype=self.dtype, name="fc")(pool)


def variable_shapes() -> dict:
  """{"params/Mixed_5b/branch1x1/conv/kernel": shape, ...}: every variable of the network."""
  return dict(_variable_shapes())


@functools.lru_cache(maxsize=1)
def _variable_shapes() -> tuple:
  shapes = jax.eval_shape(lambda: FIDInception().init(jax.random.PRNGKey(0),
                                                      jnp.zeros((1, 75, 75, 3)), logits=True))
  return tuple((name, tuple(leaf.shape)) for name, leaf in _flatten(shapes).items())


def _flatten(tree, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else key
    flat.update(_flatten(value, name) if hasattr(value, "items") else {name: value})
  return flat


def _unflatten(flat: dict) -> dict:
  tree = {}
  for name, value in flat.items():
    *folders, leaf = name.split("/")
    node = tree
    for folder in folders:
      node = node.setdefault(folder, {})
    node[leaf] = value
  return tree


# ---------------------------------------------------------------------------------------------
# Weights: pytorch-fid's state dict -> a .npz of the variables above, and back.

_TORCH_SUFFIXES = {  # state-dict suffix -> (collection, flax leaf, transpose)
    "conv.weight": ("params", "conv/kernel", (2, 3, 1, 0)),
    "bn.weight": ("params", "bn/scale", None),
    "bn.bias": ("params", "bn/bias", None),
    "bn.running_mean": ("batch_stats", "bn/mean", None),
    "bn.running_var": ("batch_stats", "bn/var", None),
}


def from_state_dict(state_dict: dict) -> dict:
  """pytorch-fid's state dict (name -> array) as this network's flat variables (name -> array).

  BatchNorm's `num_batches_tracked` counters are dropped (training bookkeeping). A name or a
  shape that is not pytorch-fid's is a one-line error.
  """
  expected = variable_shapes()
  flat = {}
  for name, value in state_dict.items():
    value = np.asarray(value)
    if name.endswith("num_batches_tracked"):
      continue
    if name in ("fc.weight", "fc.bias"):
      key, value = f"params/fc/{'kernel' if name == 'fc.weight' else 'bias'}", value.T
    else:
      parts = name.split(".")  # "Mixed_6b.branch7x7_2" + "conv.weight"
      suffix, path = ".".join(parts[-2:]), "/".join(parts[:-2])
      if suffix not in _TORCH_SUFFIXES or not path:
        raise FIDWeightsError(f"{name!r} is not a variable of pytorch-fid's FID Inception "
                              f"(torchvision's ImageNet Inception-v3 is a different network)")
      collection, flax_leaf, axes = _TORCH_SUFFIXES[suffix]
      key = f"{collection}/{path}/{flax_leaf}"
      if axes:
        value = value.transpose(axes)
    if key not in expected:
      raise FIDWeightsError(f"{name!r} is not a variable of pytorch-fid's FID Inception "
                            f"(torchvision's ImageNet Inception-v3 is a different network)")
    if value.shape != expected[key]:
      raise FIDWeightsError(f"{name!r} has shape {value.shape} after conversion, not "
                            f"{expected[key]}: not pytorch-fid's FID Inception")
    flat[key] = np.ascontiguousarray(value, np.float32)
  missing = sorted(set(expected) - set(flat))
  if missing:
    raise FIDWeightsError(f"the state dict lacks {len(missing)} of the FID Inception's "
                          f"variables, e.g. {missing[0]!r}")
  return flat


def content_sha256(flat: dict) -> str:
  """sha256 of the variables themselves (sorted names, dtypes, shapes and little-endian bytes):
  the same for the same weights however the .npz was zipped."""
  digest = hashlib.sha256()
  for name in sorted(flat):
    value = np.ascontiguousarray(flat[name], np.dtype(flat[name].dtype).newbyteorder("<"))
    digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def save_weights(path: str, flat: dict, source_sha256: str) -> str:
  """Writes the converted variables and the sha256 of their source and of their content;
  returns the content sha256."""
  digest = content_sha256(flat)
  np.savez(path, **flat, **{"meta/format": np.array(FORMAT), "meta/content_sha256":
                            np.array(digest), "meta/source_sha256": np.array(source_sha256)})
  return digest


def load_weights(path: Optional[str] = None, expected_sha256: Optional[str] = None):
  """(variables, info) from a converted .npz: `path`, else $JAXGEN_FID_WEIGHTS.

  Checks the content sha256 recorded by the converter (a damaged or edited file is refused) and,
  when given, `expected_sha256`; info = {"path", "content_sha256", "source_sha256",
  "published"}, published meaning the source's sha256 is that of pytorch-fid's file.
  Every failure is a one-line FIDWeightsError that says where to get the weights.
  """
  path = path or os.environ.get(WEIGHTS_ENV)
  if not path:
    raise FIDWeightsError(f"no FID Inception weights given: {HOW_TO_GET}")
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FIDWeightsError(f"FID Inception weights {path!r} do not exist: {HOW_TO_GET}")
  try:
    with np.load(path, allow_pickle=False) as archive:
      stored = {name: archive[name] for name in archive.files}
  except Exception as error:  # a truncated zip, or not an .npz at all
    raise FIDWeightsError(f"{path!r} is not a readable .npz ({type(error).__name__}): "
                          f"{HOW_TO_GET}") from None
  meta = {k.partition("/")[2]: str(v) for k, v in stored.items() if k.startswith("meta/")}
  flat = {k: v for k, v in stored.items() if not k.startswith("meta/")}
  if meta.get("format") != FORMAT:
    raise FIDWeightsError(f"{path!r} was not written by experiments/convert_fid_weights.py: "
                          f"{HOW_TO_GET}")
  digest = content_sha256(flat)
  if digest != meta.get("content_sha256"):
    raise FIDWeightsError(f"{path!r} is damaged: its variables' sha256 {digest[:16]}... differs "
                          f"from the {meta.get('content_sha256', '')[:16]}... recorded when it "
                          f"was converted; convert it again ({HOW_TO_GET})")
  if expected_sha256 and digest != expected_sha256:
    raise FIDWeightsError(f"{path!r} holds weights of sha256 {digest[:16]}..., not the expected "
                          f"{expected_sha256[:16]}...")
  expected = variable_shapes()
  wrong = [k for k in expected if k not in flat or flat[k].shape != expected[k]]
  if wrong or len(flat) != len(expected):
    raise FIDWeightsError(f"{path!r} does not hold the FID Inception's variables (first "
                          f"mismatch: {(wrong or sorted(set(flat) - set(expected)))[0]!r})")
  info = {"path": os.path.abspath(path), "content_sha256": digest,
          "source_sha256": meta.get("source_sha256", ""),
          "published": meta.get("source_sha256") == PUBLISHED_SHA256}
  return jax.tree.map(jnp.asarray, _unflatten(flat)), info


# ---------------------------------------------------------------------------------------------
# Features.


@jax.jit
def _pool_features(variables, images):
  return FIDInception().apply(variables, images)


def to_inception_input(images: np.ndarray, pixel_range) -> np.ndarray:
  """Images in their own pixel range (N, H, W, 1 or 3) as the network's [0, 1] RGB input
  (greyscale repeated over three channels, as pytorch-fid's RGB conversion of a PNG does)."""
  low, high = pixel_range
  x = np.clip((np.asarray(images, np.float32) - low) / (high - low), 0.0, 1.0)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  if x.shape[-1] != 3:
    raise ValueError(f"FID Inception needs 1 or 3 channels, got images of shape {x.shape}")
  return x


def features(variables, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
  """(N, 2048) float32 pool features of RGB [0, 1] images, `batch_size` at a time (the last
  batch padded, so the network compiles once per image size)."""
  images = np.asarray(images, np.float32)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]),
                                             np.float32)]) if len(chunk) < batch_size else chunk
    out.append(np.asarray(_pool_features(variables, padded))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)
