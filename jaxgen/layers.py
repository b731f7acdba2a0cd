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
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")

Initializer = Callable[..., jax.Array]


def _forward(x, w, stride, padding):
  return lax.conv_general_dilated(
      x, w, (stride, stride), ((padding, padding), (padding, padding)),
      dimension_numbers=_DIMENSIONS)


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
  shape = (dy.shape[0], *input_hw, w.shape[2])
  return _transpose_of(lambda x: _forward(x, w, stride, padding), shape, dy.dtype, dy)


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
  shape = (*kernel_hw, x.shape[-1], dy.shape[-1])
  return _transpose_of(lambda w: _forward(x, w, stride, padding), shape, x.dtype, dy)


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


class Conv(nn.Module):
  """2-D convolution, NHWC, PyTorch's (kernel_size, strides, padding); parameters as nn.Conv."""
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Any = None  # computation dtype; None keeps the input's
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) \
        if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.strides, self.padding)
    return y if bias is None else y + bias.reshape(1, 1, 1, -1)


class ConvTranspose(nn.Module):
  """Transposed 2-D convolution with PyTorch's ConvTranspose2d meaning of stride and padding.

  The kernel is stored as (k, k, features, in_features): the HWIO kernel of the convolution this
  layer transposes, as in `nn.ConvTranspose(transpose_kernel=True)`.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, self.features, x.shape[-1]),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) \
        if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    out_hw = tuple(transposed_output_size(s, k, self.strides, self.padding)
                   for s in x.shape[1:3])
    y = conv2d_input_grad(x, kernel, self.strides, self.padding, out_hw)
    return y if bias is None else y + bias.reshape(1, 1, 1, -1)
