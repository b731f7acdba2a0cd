"""jaxgen.layers against plain autodiff: values, first- and second-order gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxgen import layers

_DIMS = ("NHWC", "HWIO", "NHWC")

# (input size, in channels, out channels, kernel, stride, padding): strided, odd sizes, a kernel
# that covers the whole input (the matrix-product path), few input channels (the im2col weight
# gradient and the space-to-depth input gradient), more input channels (the per-phase input
# gradient and XLA's weight gradient), and stride 1.
CASES = [
    (8, 3, 5, 4, 2, 1),
    (9, 2, 3, 3, 2, 1),
    (7, 6, 4, 3, 1, 1),
    (4, 6, 2, 4, 1, 0),
    (8, 6, 5, 4, 2, 1),
    (34, 5, 2, 4, 2, 1),
    (10, 6, 3, 4, 2, 0),
    (12, 5, 2, 6, 3, 0),
]


def _plain(x, w, stride, padding):
  return lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                  dimension_numbers=_DIMS)


def _inputs(size, cin, cout, k, batch=2, seed=0):
  kx, kw = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(kx, (batch, size, size, cin)),
          jax.random.normal(kw, (k, k, cin, cout)) / np.sqrt(k * k * cin))


@pytest.mark.parametrize("size,cin,cout,k,stride,padding", CASES)
def test_conv2d_and_its_gradients_match_plain_autodiff(size, cin, cout, k, stride, padding):
  x, w = _inputs(size, cin, cout, k)
  y = _plain(x, w, stride, padding)
  dy = jax.random.normal(jax.random.PRNGKey(1), y.shape)
  np.testing.assert_allclose(layers.conv2d(x, w, stride, padding), y, rtol=1e-5, atol=1e-5)
  _, plain_vjp = jax.vjp(lambda x, w: _plain(x, w, stride, padding), x, w)
  _, fast_vjp = jax.vjp(lambda x, w: layers.conv2d(x, w, stride, padding), x, w)
  for fast, plain in zip(fast_vjp(dy), plain_vjp(dy)):
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      layers.conv2d_input_grad(dy, w, stride, padding, x.shape[1:3]), plain_vjp(dy)[0],
      rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      layers.conv2d_weight_grad(x, dy, stride, padding, w.shape[:2]), plain_vjp(dy)[1],
      rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,cin,cout,k,stride,padding", CASES[:5])
def test_penalty_second_order_gradients_match_plain_autodiff(size, cin, cout, k, stride, padding):
  """A gradient penalty through two layers: the double backward WGAN-GP differentiates."""
  x, w1 = _inputs(size, cin, cout, k)
  w2 = jax.random.normal(jax.random.PRNGKey(2), (k, k, cout, 3)) / np.sqrt(k * k * cout)
  out = (size + 2 * padding - k) // stride + 1
  if out + 2 * padding < k:
    w2 = w2[:1, :1]

  def penalty(conv, x, w1, w2):
    def score(x):
      h = nn.leaky_relu(conv(x, w1, stride, padding), 0.2)
      return jnp.sum(jnp.tanh(conv(h, w2, 1, padding if w2.shape[0] > 1 else 0)))
    g = jax.grad(score)(x)
    return jnp.sum((jnp.sqrt(jnp.sum(g * g, axis=(1, 2, 3))) - 1.0) ** 2) + score(x)

  plain = jax.grad(lambda *a: penalty(_plain, *a), argnums=(0, 1, 2))(x, w1, w2)
  fast = jax.grad(lambda *a: penalty(layers.conv2d, *a), argnums=(0, 1, 2))(x, w1, w2)
  for f, p in zip(fast, plain):
    np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin", [3, 6])
def test_input_and_weight_grads_second_order_match_their_transposes(cin):
  """Derivatives of the adjoint maps themselves (each is a custom_vjp)."""
  x, w = _inputs(8, cin, 4, 4)
  dy = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 4))

  def plain_input_grad(dy, w):
    return jax.vjp(lambda x: _plain(x, w, 2, 1), x)[1](dy)[0]

  def plain_weight_grad(x, dy):
    return jax.vjp(lambda w: _plain(x, w, 2, 1), w)[1](dy)[0]

  for fast, plain, args in [
      (lambda dy, w: layers.conv2d_input_grad(dy, w, 2, 1, (8, 8)), plain_input_grad, (dy, w)),
      (lambda x, dy: layers.conv2d_weight_grad(x, dy, 2, 1, (4, 4)), plain_weight_grad, (x, dy))]:
    loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b)))
    for g_fast, g_plain in zip(jax.grad(loss(fast), (0, 1))(*args),
                               jax.grad(loss(plain), (0, 1))(*args)):
      np.testing.assert_allclose(g_fast, g_plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,k,stride,padding", [(8, 4, 2, 1), (7, 3, 2, 1), (1, 4, 1, 0),
                                                   (5, 4, 2, 1)])
def test_conv_transpose_matches_flax(size, k, stride, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 6))
  ours = layers.ConvTranspose(4, k, stride, padding)
  params = ours.init(jax.random.PRNGKey(1), x)
  theirs = nn.ConvTranspose(4, (k, k), (stride, stride), padding=((k - 1 - padding,) * 2,) * 2,
                            transpose_kernel=True)
  assert jax.tree.map(jnp.shape, theirs.init(jax.random.PRNGKey(1), x)) == \
      jax.tree.map(jnp.shape, params)
  y = ours.apply(params, x)
  assert y.shape[1] == layers.transposed_output_size(size, k, stride, padding)
  np.testing.assert_allclose(y, theirs.apply(params, x), rtol=1e-5, atol=1e-5)
  dy = jax.random.normal(jax.random.PRNGKey(2), y.shape)
  g_ours = jax.vjp(lambda p, x: ours.apply(p, x), params, x)[1](dy)
  g_theirs = jax.vjp(lambda p, x: theirs.apply(p, x), params, x)[1](dy)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,k,stride,padding", [(8, 4, 2, 1), (4, 4, 1, 0), (9, 3, 2, 1)])
def test_conv_matches_flax(size, k, stride, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 3))
  ours = layers.Conv(5, k, stride, padding)
  theirs = nn.Conv(5, (k, k), (stride, stride), padding=((padding, padding),) * 2)
  params = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, theirs.init(jax.random.PRNGKey(1), x)) == \
      jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,cin", [(4, 6), (5, 3), (1, 8)])
def test_upsample_conv_is_resize_then_conv(size, cin):
  """The one transposed convolution UpsampleConv computes equals nearest-neighbour upsampling
  then a 3x3 convolution (PlainUpsampleConv, flax's nn.Conv on jnp.repeat), values and the
  gradients of parameters and input, on the same parameters."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, cin))
  ours = layers.UpsampleConv(5)
  params = ours.init(jax.random.PRNGKey(1), x)
  theirs = layers.PlainUpsampleConv(5)
  assert jax.tree.map(jnp.shape, theirs.init(jax.random.PRNGKey(1), x)) == \
      jax.tree.map(jnp.shape, params)
  y = ours.apply(params, x)
  assert y.shape == (2, 2 * size, 2 * size, 5)
  np.testing.assert_allclose(y, theirs.apply(params, x), rtol=1e-5, atol=1e-5)
  # A third computation: each 2x2 block of the output read off one 3x3 window of the input.
  w = np.asarray(params["params"]["kernel"], np.float64)
  up = np.repeat(np.repeat(np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0))),
                           2, 1), 2, 2)[:, 1:-1, 1:-1]  # upsampled, padded by one pixel
  r, c = 2 * size - 1, 2 * size - 2
  direct = np.einsum("nhwc,hwcf->nf", up[:, r:r + 3, c:c + 3], w) + \
      np.asarray(params["params"]["bias"])
  np.testing.assert_allclose(y[:, r, c], direct, rtol=1e-5, atol=1e-5)
  dy = jax.random.normal(jax.random.PRNGKey(2), y.shape)
  g_ours = jax.vjp(lambda p, x: ours.apply(p, x), params, x)[1](dy)
  g_theirs = jax.vjp(lambda p, x: theirs.apply(p, x), params, x)[1](dy)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_upsample_conv_refuses_other_shapes():
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(ValueError, match="upsampling by 2 then a 3x3 convolution"):
    layers.UpsampleConv(3, 4, 2, 1).init(jax.random.PRNGKey(0), x)
