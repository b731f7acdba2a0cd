"""Checkpoints of a whole training state with orbax-checkpoint.

Orbax writes each checkpoint into a temporary folder and renames it only when complete, so a
process killed during a save leaves the previous checkpoint as the latest restorable one.
Nothing non-finite is ever written: `save` checks the state first.
"""

import dataclasses
import os
from typing import Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


@jax.jit
def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def is_finite(tree) -> bool:
  """True when every floating-point leaf of `tree` is finite."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
  return bool(_all_finite(leaves)) if leaves else True


class Checkpoints:
  """The checkpoints of one run, in `directory`, keeping the newest `keep`."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    """Saves `state` (a pytree of arrays) and `meta` (JSON: data position and the like)."""
    if not is_finite(state):
      raise FloatingPointError(
          f"training state became non-finite by step {step}; not saving it. The last good "
          f"checkpoint in {self.directory} is kept: lower --learning_rate and resume from it")
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore(self, like, step: Optional[int] = None):
    """(state, meta) of checkpoint `step` (default: the latest); `like` gives the tree's shape.

    A state field that `like` has and the checkpoint lacks is taken from `like` when it is empty
    (a field added to a state class later, such as a GAN critic's BatchNorm statistics, which
    has none): runs saved before it existed still resume."""
    step = self.latest_step() if step is None else step
    target = like
    if dataclasses.is_dataclass(like):
      saved = set(self._manager.item_metadata(step)["state"].keys())
      fields = {f.name: getattr(like, f.name) for f in dataclasses.fields(like)}
      missing = [name for name in fields if name not in saved]
      if any(jax.tree.leaves(fields[name]) for name in missing):
        raise ValueError(f"the checkpoint of step {step} in {self.directory} has no "
                         f"{', '.join(missing)}: it belongs to another model; choose a new "
                         f"--workdir")
      target = {name: value for name, value in fields.items() if name in saved}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state = restored.state if target is like else like.replace(**restored.state)
    return state, restored.meta

  def restore_tree(self, step: Optional[int] = None):
    """(state as saved, in plain dicts of arrays, meta) of checkpoint `step` (default: the
    latest), for readers that need part of a state and not the program that made it."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train the run first")
    # Onto this process's first device, whatever devices the run that saved it had.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            self._manager.item_metadata(step)["state"])
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def close(self) -> None:
    """Waits for saves in flight to finish."""
    self._manager.wait_until_finished()
    self._manager.close()
