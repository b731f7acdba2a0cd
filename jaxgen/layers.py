"""Convolution layers shared by every image model in jaxgen.

`Conv` and `ConvTranspose` compute exactly what `flax.linen.Conv` and
`flax.linen.ConvTranspose(transpose_kernel=True)` compute, with the same parameter names, shapes
and initialisers, and PyTorch's (kernel, stride, padding) meaning. They differ in how their
gradients are written.

Why: XLA:CPU runs the weight gradient of an input-dilated convolution (which is what JAX's own
rule emits for a stride-2 transposed convolution, and for the double backward of a gradient
penalty through a strided convolution) through a slow generic loop, several times slower than its
forward convolutions. Here the three linear maps of a convolution

    conv2d(x, w)               y = x * w                      (forward)
    conv2d_input_grad(dy, w)   dx = adjoint of x -> x * w     (also: the transposed convolution)
    conv2d_weight_grad(x, dy)  dw = adjoint of w -> x * w

are each a `jax.custom_vjp` whose derivatives are written in terms of the other two. Every
derivative of every order is then one of three kinds of convolution XLA:CPU runs fast: a strided
forward convolution, an input-dilated forward convolution, and the weight gradient of a strided
(never input-dilated) convolution. The maths is identical to JAX's own rules, so values and
gradients agree with plain autodiff up to float rounding (tests/test_layers.py checks first and
second order).

Each of the three primals then has several equivalent forms: XLA's own convolution, a matrix
product where the kernel covers the whole input (the 1x1 -> 4x4 transposed convolution, the
4x4 -> 1 critic head), a stride-1 convolution of the space-to-depth input, one stride-1
convolution per output phase, interleaved (an input gradient without multiplications by inserted
zeros or outputs cropped away), one matrix product of im2col patches. `jaxgen.conv_forms` picks
one per map and shape by timing them on the machine at hand (or from a fixed table, or XLA's own
everywhere: $JAXGEN_CONV_FORMS).
"""

import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxgen import conv_forms

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")

# jax 0.10's XLA:CPU hands single convolutions to YNNPACK, which ran this package's convolutions
# ~25% slower than XLA's own (Eigen) kernels (README, Performance). The flag only exists in the
# versions checked.
_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def configure_cpu() -> bool:
  """Adds the XLA:CPU setting for single convolutions to XLA_FLAGS where it makes jaxgen's
  convolutions faster; True when it is in force.

  Part of the convolution form setting ($JAXGEN_CONV_FORMS, `jaxgen.conv_forms`): "measure"
  times a probe step with and without the flag in two fresh processes once per machine and keeps
  the answer in the form cache; "fixed" sets it (it ran the critic gradient 1.3x faster on the
  project's AVX2 machines); "lax" leaves XLA's defaults. Programs call it (through
  `jaxgen.training.configure_jax`) first in `main`: it only takes effect before JAX starts its
  CPU backend. A user's own setting of the flag wins; on other jax versions, and where an
  accelerator backend is expected, nothing changes. Importing this module changes nothing."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "ynn_fusion_type" in flags:
    return _CPU_FLAG in flags
  if jax.__version__ not in ("0.10.2",) or conv_forms.accelerator_expected():
    return False
  setting = conv_forms.mode()
  if setting == "lax" or (setting == "measure" and not conv_forms.flag_choice(_CPU_FLAG)):
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {_CPU_FLAG}".strip()
  return True

Initializer = Callable[..., jax.Array]

# The computation dtypes a model can run its layers in, by name (`dtype` of the layers; None
# keeps float32). Parameters stay float32 either way.
PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16}


def _whole_window(x_hw, kernel_hw, padding):
  """True when the kernel covers the whole (unpadded) input: the convolution is a matrix product."""
  return padding == 0 and tuple(x_hw) == tuple(kernel_hw)


def _lax_forward(x, w, stride, padding):
  return lax.conv_general_dilated(
      x, w, (stride, stride), ((padding, padding), (padding, padding)),
      dimension_numbers=_DIMENSIONS)


def _matmul_forward(x, w):
  """A kernel covering the whole input: one matrix product (N, H*W*C) @ (H*W*C, O)."""
  y = x.reshape(x.shape[0], -1) @ w.reshape(-1, w.shape[-1])
  return y.reshape(x.shape[0], 1, 1, -1)


def _space_to_depth(x, s):
  """(N, H, W, C) -> (N, H/s, W/s, s*s*C), channels ordered (row phase, column phase, C)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // s, w // s, s * s * c)


def _pad(x, padding):
  """Zero padding of both spatial sides of NHWC `x`."""
  return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def _phases_fit(x_shape, kernel_hw, stride, padding):
  """True when a strided convolution of NHWC input of `x_shape` splits into whole stride x stride
  phases: a square kernel and a padded input that the stride divides."""
  k, h, wd = kernel_hw[0], x_shape[1] + 2 * padding, x_shape[2] + 2 * padding
  return stride > 1 and kernel_hw[1] == k and not (k % stride or h % stride or wd % stride)


def _phase_kernel(w, s):
  """(k, k, C, O) -> (k/s, k/s, s*s*C, O): the same correlation on `_space_to_depth` input."""
  k, _, c, o = w.shape
  w = w.reshape(k // s, s, k // s, s, c, o).transpose(0, 2, 1, 3, 4, 5)
  return w.reshape(k // s, k // s, s * s * c, o)


def _unphase_kernel(w, s):
  """Inverse of `_phase_kernel`."""
  kp, _, sc, o = w.shape
  w = w.reshape(kp, kp, s, s, sc // (s * s), o).transpose(0, 2, 1, 3, 4, 5)
  return w.reshape(kp * s, kp * s, sc // (s * s), o)


def _phase_forward(x, w, stride, padding):
  """The strided convolution as a stride-1 convolution of the space-to-depth padded input
  (`_phases_fit` shapes only).

  Its transpose (an input gradient) is then a stride-1 convolution, which XLA:CPU runs faster
  than the input-dilated one it emits for a strided convolution (no multiplications by zeros),
  and its weight gradient that of a stride-1 convolution.
  """
  x = _space_to_depth(_pad(x, padding), stride)
  return lax.conv_general_dilated(x, _phase_kernel(w, stride), (1, 1), "VALID",
                                  dimension_numbers=_DIMENSIONS)


def _patches(x, kernel_hw, stride, padding, out_hw):
  """im2col: (N, Ho, Wo, kh*kw*C), features ordered (kh, kw, C) like an HWIO kernel's rows."""
  x = _pad(x, padding)
  return jnp.concatenate(
      [x[:, i:i + stride * (out_hw[0] - 1) + 1:stride, j:j + stride * (out_hw[1] - 1) + 1:stride]
       for i in range(kernel_hw[0]) for j in range(kernel_hw[1])], axis=-1)


# im2col forms are candidates only up to this many patch elements (a quarter of a GiB in float32).
_MAX_PATCH_ELEMENTS = 1 << 26


def _output_hw(x_hw, kernel_hw, stride, padding):
  return tuple((size + 2 * padding - k) // stride + 1 for size, k in zip(x_hw, kernel_hw))


def _patches_fit(x_shape, kernel_hw, stride, padding):
  ho, wo = _output_hw(x_shape[1:3], kernel_hw, stride, padding)
  return x_shape[0] * ho * wo * kernel_hw[0] * kernel_hw[1] * x_shape[3] <= _MAX_PATCH_ELEMENTS


def _patches_forward(x, w, stride, padding):
  """The convolution as one matrix product of im2col patches with the (kh*kw*C, O) kernel."""
  out_hw = _output_hw(x.shape[1:3], w.shape[:2], stride, padding)
  return _patches(x, w.shape[:2], stride, padding, out_hw) @ w.reshape(-1, w.shape[-1])


def forward_forms(x, w, stride, padding):
  """The forms of `conv2d`'s primal for these operands: ({form: fn(x, w)}, the fixed table's)."""
  forms = {"lax": lambda x, w: _lax_forward(x, w, stride, padding)}
  whole = _whole_window(x.shape[1:3], w.shape[:2], padding)
  if whole:
    # a 4x4 -> 1x1 head, or the adjoint of a 1x1 -> 4x4 transposed convolution: XLA:CPU (AVX2)
    # ran the matrix product several times faster than the equivalent convolution.
    forms["matmul"] = _matmul_forward
  if _phases_fit(x.shape, w.shape[:2], stride, padding):
    forms["phase"] = lambda x, w: _phase_forward(x, w, stride, padding)
  if not whole and _patches_fit(x.shape, w.shape[:2], stride, padding):
    forms["patches"] = lambda x, w: _patches_forward(x, w, stride, padding)
  return forms, "matmul" if whole else "lax"


def _in_chosen_form(name, forms_and_fixed, operands, params):
  """Map `name` applied to `operands` in the form `conv_forms` chooses among `forms_and_fixed`
  (what `forward_forms`, `input_grad_forms` or `weight_grad_forms` return)."""
  forms, fixed = forms_and_fixed
  return forms[conv_forms.choose(name, forms, fixed, operands, params)](*operands)


def _forward(x, w, stride, padding):
  """Primal of `conv2d`, in the form `conv_forms` chooses for the shape."""
  return _in_chosen_form("forward", forward_forms(x, w, stride, padding), (x, w),
                         (stride, padding))


def weight_grad_forms(x, dy, stride, padding, kernel_hw):
  """The forms of `conv2d_weight_grad`'s primal: ({form: fn(x, dy)}, the fixed table's)."""
  shape = (*kernel_hw, x.shape[-1], dy.shape[-1])
  forms = {"lax": lambda x, dy: _transpose_of(
      lambda w: _lax_forward(x, w, stride, padding), shape, x.dtype, dy)}
  whole = _whole_window(x.shape[1:3], kernel_hw, padding)
  phases = _phases_fit(x.shape, kernel_hw, stride, padding)
  if whole:
    forms["matmul"] = lambda x, dy: (
        x.reshape(x.shape[0], -1).T @ dy.reshape(dy.shape[0], -1)).reshape(shape)
  if phases:
    forms["phase"] = lambda x, dy: _transpose_of(
        lambda w: _phase_forward(x, w, stride, padding), shape, x.dtype, dy)
    # im2col of the space-to-depth input: (k/s)^2 slices instead of k^2 (smaller programs).
    forms["phase_patches"] = lambda x, dy: _phase_patches_weight_grad(
        x, dy, stride, padding, kernel_hw)
  if not whole and _patches_fit(x.shape, kernel_hw, stride, padding):
    forms["patches"] = lambda x, dy: _patch_product(
        _patches(x, kernel_hw, stride, padding, dy.shape[1:3]), dy).reshape(shape)
  # The fixed table: over an image's few channels the window-dilated convolution XLA emits ran
  # at a fraction of the speed of one matrix product over im2col patches (2 AVX2 cores, README);
  # with more input channels XLA's was faster than building and transposing the patches.
  fixed = "matmul" if whole else (
      ("phase_patches" if phases else "patches") if x.shape[-1] <= 4 else "lax")
  return forms, fixed if fixed in forms else "lax"


def _weight_grad(x, dy, stride, padding, kernel_hw):
  """Primal of `conv2d_weight_grad`, in the form `conv_forms` chooses for the shape."""
  return _in_chosen_form("weight_grad", weight_grad_forms(x, dy, stride, padding, kernel_hw),
                         (x, dy), (stride, padding, tuple(kernel_hw)))


def _patch_product(p, dy):
  """Sum over examples and output positions of im2col patches `p` times `dy`: (features, O)."""
  return lax.dot_general(p, dy, (((0, 1, 2), (0, 1, 2)), ((), ())))


def _phase_patches_weight_grad(x, dy, stride, padding, kernel_hw):
  k = kernel_hw[0]
  xs = _space_to_depth(_pad(x, padding), stride)
  dw = _patch_product(_patches(xs, (k // stride, k // stride), 1, 0, dy.shape[1:3]), dy)
  return _unphase_kernel(dw.reshape(k // stride, k // stride, -1, dy.shape[-1]), stride)


def _subpixel_pads(dy_shape, w_shape, stride, padding, input_hw):
  """Per output phase (r, t), the padding of dy for `_subpixel_input_grad`; None where the shapes
  do not split into whole phases."""
  k, s, p, h, wd = w_shape[0], stride, padding, dy_shape[1], dy_shape[2]
  if s < 2 or k % s or input_hw[0] % s or input_hw[1] % s or w_shape[1] != k:
    return None
  m = k // s
  hp, wp = input_hw[0] // s, input_hw[1] // s  # outputs per phase
  pads = {}
  for r in range(s):
    lo_r = (s * (m - 1) + (r + p) % s - r - p) // s  # a - h at the first window position
    for t in range(s):
      lo_t = (s * (m - 1) + (t + p) % s - t - p) // s
      pad = ((lo_r, hp + m - 1 - lo_r - h), (lo_t, wp + m - 1 - lo_t - wd))
      if min(pad[0] + pad[1]) < 0:
        return None
      pads[r, t] = pad
  return pads


def _subpixel_input_grad(dy, w, stride, padding, input_hw):
  """`conv2d_input_grad` as stride*stride stride-1 convolutions, one per output phase, interleaved.

  Output phase r (rows r, r + s, r + 2s, ... of dx) is a stride-1 correlation of dy with the k/s
  kernel rows i = r + p (mod s), in reverse order: dx[s*a + r] sums dy[h] w[i] over
  s*h + i - p = s*a + r. None of these convolutions multiplies by the zeros an input-dilated
  convolution inserts, and, unlike the transpose of `_phase_forward`, none computes outputs that
  the padding crops away (a quarter of the work at 8x8, more at 4x4). Only for shapes
  `_subpixel_pads` splits.
  """
  k, s, p, n, (c, o) = w.shape[0], stride, padding, dy.shape[0], w.shape[2:]
  m = k // s
  pads = _subpixel_pads(dy.shape, w.shape, stride, padding, input_hw)
  # kernels[q, q'] holds rows i = m' * s + q, reversed in m', for every residue q: one transpose.
  kernels = w.reshape(m, s, m, s, c, o)[::-1, :, ::-1].transpose(1, 3, 0, 2, 5, 4)
  phases = [lax.conv_general_dilated(dy, kernels[(r + p) % s, (t + p) % s], (1, 1), pads[r, t],
                                     dimension_numbers=_DIMENSIONS)
            for r in range(s) for t in range(s)]
  hp, wp = input_hw[0] // s, input_hw[1] // s
  dx = jnp.stack(phases, axis=3).reshape(n, hp, wp, s, s, c)
  return dx.transpose(0, 1, 3, 2, 4, 5).reshape(n, hp * s, wp * s, c)


def input_grad_forms(dy, w, stride, padding, input_hw):
  """The forms of `conv2d_input_grad`'s primal: ({form: fn(dy, w)}, the fixed table's)."""
  shape = (dy.shape[0], *input_hw, w.shape[2])
  forms = {"lax": lambda dy, w: _transpose_of(
      lambda x: _lax_forward(x, w, stride, padding), shape, dy.dtype, dy)}
  whole = _whole_window(input_hw, w.shape[:2], padding)
  phases = _phases_fit(shape, w.shape[:2], stride, padding)
  subpixel = _subpixel_pads(dy.shape, w.shape, stride, padding, input_hw) is not None
  if whole:
    forms["matmul"] = lambda dy, w: (dy.reshape(dy.shape[0], -1) @ w.reshape(
        -1, w.shape[-1]).T).reshape(shape)
  if phases:
    forms["phase"] = lambda dy, w: _transpose_of(
        lambda x: _phase_forward(x, w, stride, padding), shape, dy.dtype, dy)
  if subpixel:
    forms["subpixel"] = lambda dy, w: _subpixel_input_grad(dy, w, stride, padding, input_hw)
  # The fixed table: per-phase convolutions, except into an image's 1-4 channels (the output
  # layer of a generator, the penalty's input gradient), where per-phase convolutions with few
  # output channels were slow and one convolution on the space-to-depth layout was not.
  fixed = "subpixel" if subpixel and w.shape[2] > 4 else (
      "phase" if phases else ("matmul" if whole else "lax"))
  return forms, fixed


def _input_grad(dy, w, stride, padding, input_hw):
  """Primal of `conv2d_input_grad`, in the form `conv_forms` chooses for the shape."""
  return _in_chosen_form("input_grad", input_grad_forms(dy, w, stride, padding, input_hw),
                         (dy, w), (stride, padding, tuple(input_hw)))


def _transpose_of(fn, like_shape, dtype, cotangent):
  """Adjoint of the linear map `fn` (input of shape `like_shape`) applied to `cotangent`."""
  return jax.linear_transpose(fn, jax.ShapeDtypeStruct(like_shape, dtype))(cotangent)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, w, stride, padding):
  """Cross-correlation of NHWC `x` with HWIO `w` (PyTorch's Conv2d, zero padding on both sides)."""
  return _forward(x, w, stride, padding)


def _conv2d_fwd(x, w, stride, padding):
  return _forward(x, w, stride, padding), (x, w)


def _conv2d_bwd(stride, padding, residuals, dy):
  x, w = residuals
  return (conv2d_input_grad(dy, w, stride, padding, x.shape[1:3]),
          conv2d_weight_grad(x, dy, stride, padding, w.shape[:2]))


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_input_grad(dy, w, stride, padding, input_hw):
  """Gradient of `conv2d` with respect to its input: PyTorch's ConvTranspose2d with weight `w`.

  `input_hw` is the spatial size of the convolution's input, i.e. of this function's output.
  """
  return _input_grad(dy, w, stride, padding, input_hw)


def _input_grad_fwd(dy, w, stride, padding, input_hw):
  return conv2d_input_grad(dy, w, stride, padding, input_hw), (dy, w)


def _input_grad_bwd(stride, padding, input_hw, residuals, ct):
  dy, w = residuals
  # <input_grad(dy, w), ct> = <dy, conv2d(ct, w)>: both derivatives are forward-conv maps.
  return (conv2d(ct, w, stride, padding),
          conv2d_weight_grad(ct, dy, stride, padding, w.shape[:2]))


conv2d_input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_weight_grad(x, dy, stride, padding, kernel_hw):
  """Gradient of `conv2d` with respect to its weight, for input `x` and output cotangent `dy`."""
  return _weight_grad(x, dy, stride, padding, kernel_hw)


def _weight_grad_fwd(x, dy, stride, padding, kernel_hw):
  return conv2d_weight_grad(x, dy, stride, padding, kernel_hw), (x, dy)


def _weight_grad_bwd(stride, padding, kernel_hw, residuals, ct):
  x, dy = residuals
  # <weight_grad(x, dy), ct> = <conv2d(x, ct), dy>.
  return (conv2d_input_grad(dy, ct, stride, padding, x.shape[1:3]),
          conv2d(x, ct, stride, padding))


conv2d_weight_grad.defvjp(_weight_grad_fwd, _weight_grad_bwd)


def transposed_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
  """Spatial output size of PyTorch's ConvTranspose2d (no output padding)."""
  return (size - 1) * stride - 2 * padding + kernel


class _ConvLayer(nn.Module):
  """The parameters of a 2-D convolution layer (nn.Conv's names, shapes and initialisers)."""
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Any = None  # computation dtype; None keeps the input's
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  def _affine(self, x, kernel_shape, linear):
    """linear(x, kernel) plus the bias, in the computation dtype."""
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) \
        if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = linear(x, kernel)
    return y if bias is None else y + bias.reshape(1, 1, 1, -1)


class Conv(_ConvLayer):
  """2-D convolution, NHWC, PyTorch's (kernel_size, strides, padding); parameters as nn.Conv."""

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    return self._affine(x, (k, k, x.shape[-1], self.features),
                        lambda x, w: conv2d(x, w, self.strides, self.padding))


class ConvTranspose(_ConvLayer):
  """Transposed 2-D convolution with PyTorch's ConvTranspose2d meaning of stride and padding.

  The kernel is stored as (k, k, features, in_features): the HWIO kernel of the convolution this
  layer transposes, as in `nn.ConvTranspose(transpose_kernel=True)`.
  """

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    out_hw = tuple(transposed_output_size(size, k, self.strides, self.padding)
                   for size in x.shape[1:3])
    return self._affine(
        x, (k, k, self.features, x.shape[-1]),
        lambda x, w: conv2d_input_grad(x, w, self.strides, self.padding, out_hw))


class PlainConv(_ConvLayer):
  """The baseline `Conv` replaces: flax's own `nn.Conv` (JAX's autodiff rules), same fields.

  Its parameters sit where `Conv`'s do (the wrapped layer shares this module's scope), so the
  two take the same parameter trees and compute the same values.
  """

  def setup(self):
    k, p = self.kernel_size, self.padding
    self.layer = nn.Conv(self.features, (k, k), self.strides, ((p, p), (p, p)),
                         use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                         kernel_init=self.kernel_init, bias_init=self.bias_init)
    nn.share_scope(self, self.layer)

  def __call__(self, x):
    return self.layer(x)


class PlainConvTranspose(_ConvLayer):
  """The baseline `ConvTranspose` replaces: `nn.ConvTranspose(transpose_kernel=True)`, same fields
  (PyTorch's padding p is lax's k - 1 - p on the stride-dilated input)."""

  def setup(self):
    k, p = self.kernel_size, self.kernel_size - 1 - self.padding
    self.layer = nn.ConvTranspose(self.features, (k, k), (self.strides,) * 2, ((p, p), (p, p)),
                                  use_bias=self.use_bias, transpose_kernel=True, dtype=self.dtype,
                                  param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                                  bias_init=self.bias_init)
    nn.share_scope(self, self.layer)

  def __call__(self, x):
    return self.layer(x)


def _upsample_kernel(kernel):
  """The (4, 4, out, in) kernel of the stride-2 transposed convolution that equals nearest-neighbour
  upsampling by 2 followed by a 3x3 convolution (padding 1) with the HWIO `kernel`.

  Each output pixel of the pair reads the 3x3 kernel over a 2x2-replicated input, so along each
  axis the equivalent kernel is the 3-tap kernel summed with itself shifted by one (4 taps),
  flipped into the transposed convolution's orientation.
  """
  rows = jnp.pad(kernel, ((0, 1), (0, 0), (0, 0), (0, 0))) + \
      jnp.pad(kernel, ((1, 0), (0, 0), (0, 0), (0, 0)))
  both = jnp.pad(rows, ((0, 0), (0, 1), (0, 0), (0, 0))) + \
      jnp.pad(rows, ((0, 0), (1, 0), (0, 0), (0, 0)))
  return jnp.swapaxes(both[::-1, ::-1], 2, 3)


class UpsampleConv(_ConvLayer):
  """Nearest-neighbour upsampling by 2, then a 3x3 convolution with padding 1 (Odena et al. 2016's
  resize-convolution, free of the checkerboard a stride-2 transposed convolution leaves).

  Computed as the one stride-2 transposed convolution it equals (`_upsample_kernel`), so it costs
  what `ConvTranspose(k4 s2 p1)` costs instead of a 3x3 convolution at the doubled size (2.25
  times the multiplications). Parameters are a 3x3 `Conv`'s; only kernel_size 3, strides 2 and
  padding 1 are supported.
  """
  kernel_size: int = 3
  strides: int = 2
  padding: int = 1

  @nn.compact
  def __call__(self, x):
    _check_upsample(self)
    out_hw = tuple(2 * size for size in x.shape[1:3])
    return self._affine(x, (3, 3, x.shape[-1], self.features),
                        lambda x, w: conv2d_input_grad(x, _upsample_kernel(w), 2, 1, out_hw))


class PlainUpsampleConv(_ConvLayer):
  """The baseline `UpsampleConv` replaces: `jnp.repeat` upsampling then flax's `nn.Conv`."""
  kernel_size: int = 3
  strides: int = 2
  padding: int = 1

  def setup(self):
    _check_upsample(self)
    self.layer = nn.Conv(self.features, (3, 3), 1, ((1, 1), (1, 1)), use_bias=self.use_bias,
                         dtype=self.dtype, param_dtype=self.param_dtype,
                         kernel_init=self.kernel_init, bias_init=self.bias_init)
    nn.share_scope(self, self.layer)

  def __call__(self, x):
    return self.layer(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def _check_upsample(layer) -> None:
  if (layer.kernel_size, layer.strides, layer.padding) != (3, 2, 1):
    raise ValueError(f"{type(layer).__name__} is upsampling by 2 then a 3x3 convolution with "
                     f"padding 1; got kernel_size={layer.kernel_size}, strides={layer.strides}, "
                     f"padding={layer.padding}")
