"""Checkpoints of a whole training state with orbax-checkpoint.

Orbax writes each checkpoint into a temporary folder and renames it only when complete, so a
process killed during a save leaves the previous checkpoint as the latest restorable one; the
partial folder it leaves is removed when the run is opened again. A numeric folder that is not a
complete checkpoint (empty, or copied in by hand) is never restored: it is moved aside with a
warning. Saves are synchronous, so a process never exits with one in flight and a failed save
(a full disk) is reported at the step that failed, naming the last good one.
Nothing non-finite is ever written: `save` checks the state first.
"""

import contextlib
import dataclasses
import errno
import io
import logging
import os
import shutil
import sys
import time
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


class SaveError(RuntimeError):
  """A checkpoint could not be written (a full disk, a failing device); the message is one line
  naming the last good checkpoint, which is left as it was."""


class MismatchError(ValueError):
  """A checkpoint that is not this run's (another model, other sizes, another data position)."""


# What orbax leaves of a save that did not finish (it renames the folder when the save is whole).
PARTIAL_MARK = ".orbax-checkpoint-tmp"
# The files every complete checkpoint of `Checkpoints` has.
COMPLETE_FILES = (os.path.join("state", "_METADATA"), os.path.join("meta", "metadata"))


def is_complete(folder: str) -> bool:
  return all(os.path.isfile(os.path.join(folder, name)) for name in COMPLETE_FILES)


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr)


class _FailedSaveRemains(logging.Filter):
  """Drops the error records that a failed save's own writes log after `save` has reported it:
  asyncio's "Task exception was never retrieved" for each concurrent write that also failed,
  logged whenever the garbage collector reaches the task (often after the one-line error, or at
  exit), and orbax's per-write errors. A record is dropped only when it names the partial folder
  of a save that failed; anything else is passed on."""

  def __init__(self):
    super().__init__()
    self.folders = set()

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or not self.folders:
      return True
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    return not any(folder in text for folder in self.folders)


_REMAINS = _FailedSaveRemains()
for _name in ("asyncio", "absl"):
  logging.getLogger(_name).addFilter(_REMAINS)


@contextlib.contextmanager
def _orbax_errors_unlogged(partial: str):
  """Orbax logs each failed write's traceback from its threads, and tensorstore's callbacks print
  more into an event loop orbax has closed (some thirty for one full disk); `save` reports the
  failure itself, in one line. What a save that succeeds prints is passed on. Of a failed save
  (its partial folder is `partial`), what is logged later is dropped by `_REMAINS`."""
  quiet = logging.Filter()
  quiet.filter = lambda record: record.levelno < logging.ERROR
  logger = logging.getLogger("absl")
  logger.addFilter(quiet)
  stderr, sys.stderr = sys.stderr, io.StringIO()
  failed = True
  try:
    yield
    failed = False
  finally:
    if failed:
      _REMAINS.folders.add(partial)
      time.sleep(1.0)  # the writes still in flight fail within milliseconds, and print then
    captured, sys.stderr = sys.stderr.getvalue(), stderr
    logger.removeFilter(quiet)
    if not failed:
      stderr.write(captured)


def disk_full(error: BaseException) -> bool:
  """True for the errors a full disk raises: OSError ENOSPC (Python's own writes) and orbax's
  ValueError with tensorstore's RESOURCE_EXHAUSTED status."""
  text = str(error)
  return (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or (
      "RESOURCE_EXHAUSTED" in text or "No space left on device" in text)


def latest_step(directory: str) -> Optional[int]:
  """The step of the latest complete checkpoint in `directory`, read only; None when there is
  none, or no such folder."""
  if not os.path.isdir(directory):
    return None
  reader = Checkpoints(directory, read_only=True)
  try:
    return reader.latest_step()
  finally:
    reader.close()


class Checkpoints:
  """The checkpoints of one run, in `directory`, keeping the newest `keep`.

  A writer (the default) first tidies the folder: it deletes what interrupted saves left and
  moves a numeric folder that is not a complete checkpoint to `<step>.ignored-<time>`, with a
  warning; only the run holding the work directory's lock should be one. A reader
  (`read_only=True`: sampling, evaluation) changes nothing and skips such folders."""

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    if not read_only:
      self._tidy()
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(  # (orbax's read_only warns thrice)
            max_to_keep=keep, create=not read_only, enable_async_checkpointing=False),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def _tidy(self) -> None:
    if not os.path.isdir(self.directory):
      return
    for name in sorted(os.listdir(self.directory)):
      path = os.path.join(self.directory, name)
      if PARTIAL_MARK in name:
        _warn(f"removing {path}, the remains of a save that was interrupted")
        shutil.rmtree(path, ignore_errors=True)
      elif name.isdigit() and not is_complete(path):
        aside = f"{path}.ignored-{int(time.time())}"
        _warn(f"{path} is not a complete checkpoint (no {' or '.join(COMPLETE_FILES)}); it is "
              f"ignored and moved to {aside}")
        os.replace(path, aside)

  def steps(self) -> list:
    """The steps of the complete checkpoints, oldest first."""
    steps = []
    for step in self._manager.all_steps():
      if is_complete(os.path.join(self.directory, str(step))):
        steps.append(step)
      else:  # only a reader sees these: a writer moved them aside
        _warn(f"{os.path.join(self.directory, str(step))} is not a complete checkpoint; "
              f"ignored")
    return sorted(steps)

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, meta: dict) -> None:
    """Saves `state` (a pytree of arrays) and `meta` (JSON: data position and the like), and
    returns when it is on disk. A failed write raises `SaveError`; the folder is left with its
    last good checkpoint and no remains of the failed one."""
    if self.read_only:
      raise ValueError(f"{self.directory} was opened for reading; not saving step {step}")
    if not is_finite(state):
      raise FloatingPointError(
          f"training state became non-finite by step {step}; not saving it. The last good "
          f"checkpoint in {self.directory} is kept: lower --learning_rate and resume from it")
    last = self.latest_step()
    try:
      with _orbax_errors_unlogged(os.path.join(self.directory, f"{step}{PARTIAL_MARK}")):
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()
    except (OSError, ValueError) as error:
      for name in os.listdir(self.directory):
        if name.startswith(f"{step}{PARTIAL_MARK}"):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      cause = "the disk is full" if disk_full(error) else str(error).splitlines()[0][:200]
      good = (f"the last good checkpoint is step {last}, which resumes"
              if last is not None else "there is no earlier checkpoint")
      raise SaveError(f"could not save step {step} in {self.directory}: {cause}; {good}: free "
                      f"space and run the same command again") from error

  def restore(self, like, step: Optional[int] = None):
    """(state, meta) of checkpoint `step` (default: the latest); `like` gives the tree's shape.

    A state field that `like` has and the checkpoint lacks is taken from `like` when it is empty
    (a field added to a state class later, such as a GAN critic's BatchNorm statistics, which
    has none): runs saved before it existed still resume."""
    step = self.latest_step() if step is None else step
    target = like
    metadata = self._manager.item_metadata(step)["state"]
    if dataclasses.is_dataclass(like):
      saved = set(metadata.keys())
      fields = {f.name: getattr(like, f.name) for f in dataclasses.fields(like)}
      missing = [name for name in fields if name not in saved]
      if any(jax.tree.leaves(fields[name]) for name in missing):
        raise MismatchError(f"the checkpoint of step {step} in {self.directory} has no "
                         f"{', '.join(missing)}: it belongs to another model; choose a new "
                         f"--workdir")
      target = {name: value for name, value in fields.items() if name in saved}
    _check_shapes(target, metadata, f"the checkpoint of step {step} in {self.directory}")
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


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _check_shapes(target, metadata, what: str) -> None:
  """A one-line error when the saved arrays are not those of `target` (another model, or the
  same model with other sizes), naming the first array that differs."""
  wanted = {_path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(target)[0]}
  # Parameters first: the optimizer's state differs wherever they do, and says less.
  wanted = dict(sorted(wanted.items(), key=lambda item: "opt" in item[0]))
  saved = {_path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(metadata)[0]}
  hint = ("it was saved by a run with other settings (its config.json has them); resume with "
          "those or choose a new --workdir")
  for name, value in wanted.items():
    if name not in saved:
      raise MismatchError(f"{what} has no array {name}: {hint}")
    shape, own = tuple(getattr(saved[name], "shape", ())), tuple(jnp.shape(value))
    if shape != own:
      raise MismatchError(f"{what} has {name} of shape {shape}, this run's is {own}: {hint}")
  extra = sorted(set(saved) - set(wanted))
  if extra:
    raise MismatchError(f"{what} has arrays this run does not, such as {extra[0]}: {hint}")
