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


def device_batches(make: Callable[[int], np.ndarray], devices: Sequence, start: int, *,
                   batch_axis: int = 0, depth: int = 2):
  """The stream of host batches make(start), make(start + 1), ..., each split over the devices
  along `batch_axis` and copied to them in a background thread, `depth` steps ahead, so host work
  and host-to-device copies overlap the running step. Close it when done."""
  from jaxgen.data import Prefetch

  n = len(devices)
  return Prefetch(lambda i: put_sharded(shard(make(i), n, axis=batch_axis), devices), start,
                  depth)
