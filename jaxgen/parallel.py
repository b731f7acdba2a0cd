"""Data parallelism over local devices with `jax.pmap`, in one place.

A step function is written once for one device and takes `axis_name`: None on one device, or the
pmap axis. Inside it, `pmean` averages gradients and metrics over the devices, and `draw` makes
every random draw for the global batch and keeps this device's slice, so a step on N devices
computes what the same step computes on one device with the whole batch (up to float rounding).
BatchNorm layers take the same `axis_name` to average their statistics over the devices.

Everything that knows about pmap lives here (wrapping a step, laying out batches and states),
so that a move to `shard_map` or `jit` with shardings changes this file alone.

Layout: a global batch (B, ...) is split as (devices, B / devices, ...); device d holds examples
d * B/devices ... (d + 1) * B/devices - 1, the same slice `draw` keeps.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

AXIS = "devices"


def select_devices(num_devices: int) -> list:
  """The first `num_devices` local devices (0 means all), or a one-line error."""
  available = jax.local_devices()
  if num_devices < 0 or num_devices > len(available):
    raise ValueError(f"--num_devices={num_devices} but this machine has {len(available)} "
                     f"{available[0].platform} device(s); use 0 for all or a number up to "
                     f"{len(available)}")
  return available[:num_devices or len(available)]


def check_split(batch_size: int, num_devices: int) -> int:
  """Per-device batch size, or a one-line error when the batch does not divide evenly."""
  if batch_size % num_devices:
    raise ValueError(f"--batch_size={batch_size} does not split evenly over {num_devices} "
                     f"devices; use a multiple of {num_devices}")
  return batch_size // num_devices


def axis_size(axis_name) -> int:
  return 1 if axis_name is None else lax.axis_size(axis_name)


def pmean(tree, axis_name):
  return tree if axis_name is None else lax.pmean(tree, axis_name)


def draw(sample: Callable, key: jax.Array, local_shape: Sequence[int], axis_name, **kwargs):
  """`sample(key, shape)` for the global batch, then this device's slice of its leading axis."""
  n = axis_size(axis_name)
  local = local_shape[0]
  full = sample(key, (local * n, *local_shape[1:]), **kwargs)
  if axis_name is None:
    return full
  return lax.dynamic_slice_in_dim(full, lax.axis_index(axis_name) * local, local, axis=0)


def shard(batch: np.ndarray, num_devices: int, axis: int = 0) -> np.ndarray:
  """Split axis `axis` of a host batch over the devices: the device axis goes in front."""
  shape = batch.shape
  split = batch.reshape(*shape[:axis], num_devices, shape[axis] // num_devices, *shape[axis + 1:])
  return np.moveaxis(split, axis, 0)


def put_sharded(tree, devices: Sequence):
  """Places arrays whose leading axis is the device axis the way pmap lays out its outputs, so
  pmap takes them without another copy."""
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.asarray(devices), (AXIS,)),
                                        jax.sharding.PartitionSpec(AXIS))
  return jax.device_put(tree, sharding)


def replicate(tree, devices: Sequence):
  """One copy of every leaf per device, laid out as pmap expects."""
  n = len(devices)
  return put_sharded(jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), tree),
                     devices)


def unreplicate(tree):
  """The first device's copy of a replicated tree."""
  return jax.tree.map(lambda x: x[0], tree)


def first(tree):
  """The first device's copy of a replicated tree, copied to the host (numpy): a step's metrics,
  or a state to checkpoint."""
  return jax.device_get(unreplicate(tree))


def pmap_step(step: Callable, devices: Sequence, *, donate: bool = True):
  """`step(state, batch, key)` on every device: state replicated, batch split over the device axis
  (see `device_batches`), the same key on every device; the state is donated, so its buffers
  are reused for the next state. `step` must take axis_name=AXIS (bind it with partial).

  With JAX's NaN checking on (--debug_nans) the step is the same computation as one jitted
  program over a vmapped device axis: pmap's check names no operation, jit's re-runs the step
  op by op and names the first that makes a NaN."""
  if jax.config.jax_debug_nans:
    return jax.jit(jax.vmap(step, axis_name=AXIS, in_axes=(0, 0, None)))
  return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None),
                  donate_argnums=(0,) if donate else (), devices=devices)


def fused_steps(step: Callable) -> Callable:
  """Up to K consecutive calls of `step(state, batch, key)` as one function: `run(state, batches,
  key, count)` takes K batches stacked on a leading axis and runs the first `count` of them
  (1 <= count <= K, a traced value, so one compilation serves every count) in one XLA loop; it
  returns the final state and the last step's metrics. Each step computes what it computes
  alone."""

  def run(state, batches, key, count):
    shapes = jax.eval_shape(step, state, batches[0], key)[1]
    metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(carry):
      i, state, _ = carry
      state, metrics = step(state, lax.dynamic_index_in_dim(batches, i, keepdims=False), key)
      return i + 1, state, metrics

    _, state, metrics = lax.while_loop(lambda carry: carry[0] < count, body,
                                       (jnp.int32(0), state, metrics))
    return state, metrics

  return run


def pmap_steps(step: Callable, devices: Sequence, *, donate: bool = True):
  """`fused_steps(step)` on every device, as `pmap_step` runs one step: the K batches stacked
  on axis 1, after the device axis (see `chunk_batches`).

  For small steps (an MLP VAE's few milliseconds) this removes the per-step dispatch and host
  round trip. XLA:CPU runs convolutions inside loops far slower, so convolutional models keep
  `pmap_step`."""
  run = fused_steps(step)
  if jax.config.jax_debug_nans:
    return jax.jit(jax.vmap(run, axis_name=AXIS, in_axes=(0, 0, None, None)))
  return jax.pmap(run, axis_name=AXIS, in_axes=(0, 0, None, None),
                  donate_argnums=(0,) if donate else (), devices=devices)


def chunk_batches(make: Callable[[int], np.ndarray], chunks: Sequence, size: int,
                  devices: Sequence, *, batch_axis: int = 0, depth: int = 2):
  """The stream of stacked batches for `pmap_steps`: for each (first, count) of `chunks`, host
  batches make(first) ... make(first + count - 1) stacked on a new axis of `size` (zeros after
  the count-th), each split over the devices along its `batch_axis`, as `device_batches` streams
  single batches (which it does for these). Close it when done."""

  def stack(j):
    first, count = chunks[j]
    batch = make(first)
    stacked = np.zeros((size, *batch.shape), batch.dtype)
    stacked[0] = batch
    for i in range(1, count):
      stacked[i] = make(first + i)
    return stacked

  return device_batches(stack, devices, 0, batch_axis=1 + batch_axis, depth=depth)


def device_batches(make: Callable[[int], np.ndarray], devices: Sequence, start: int, *,
                   batch_axis: int = 0, depth: int = 2):
  """The stream of host batches make(start), make(start + 1), ..., each split over the devices
  along `batch_axis` and copied to them in a background thread, `depth` steps ahead, so host work
  and host-to-device copies overlap the running step. Close it when done."""
  from jaxgen.data import Prefetch

  n = len(devices)
  return Prefetch(lambda i: put_sharded(shard(make(i), n, axis=batch_axis), devices), start,
                  depth)
