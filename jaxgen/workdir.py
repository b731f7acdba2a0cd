"""A run's work directory: its config.json, and the guards that keep one run per directory."""

import atexit
import dataclasses
import fcntl
import json
import os

from jaxgen.report import write_json

# Settings that may differ when a run is resumed: they change how long it runs and what it
# writes, not what it computes.
RESUMABLE = ("steps", "workdir", "num_devices", "log_every", "sample_every", "checkpoint_every",
             "keep_checkpoints", "data_dir", "debug_nans", "eval_every", "eval_samples")


def saved_settings(workdir: str) -> dict:
  """The config.json of the run in `workdir`, or {} when there is none yet."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def prepare(config, model: str, source) -> dict:
  """Creates the work directory and writes config.json (the resolved settings, the model's name
  and the data's image shape and pixel range, which sampling needs); a one-line error, and
  nothing written, when the directory holds another model's run or one with settings that
  differ."""
  settings = {"model": model, **dataclasses.asdict(config),
              "image_shape": list(source.image_shape),
              "pixel_range": [float(v) for v in source.pixel_range]}
  os.makedirs(config.workdir, exist_ok=True)
  path = os.path.join(config.workdir, "config.json")
  saved = saved_settings(config.workdir)
  if saved:
    # The user's own settings first, in flag order, then what is derived from them.
    keys = list(settings) + [k for k in saved if k not in settings]
    # A setting newer than the saved run had its default value there, and an automatic one
    # saved unresolved (0, by jaxgen before 0.2) had the value the same rule gives now.
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    defaults.update(getattr(config, "BEFORE", {}))
    automatic = config.automatic() if hasattr(config, "automatic") else {}

    def saved_value(k):
      value = saved.get(k, defaults.get(k))
      return automatic.get(k, value) if value == 0 and k in automatic else value

    differ = [k for k in keys if k not in RESUMABLE and saved_value(k) != settings.get(k)]
    if differ:
      k = differ[0]
      raise ValueError(
          f"--workdir={config.workdir} holds a run with {k}={saved_value(k)!r}, not "
          f"{settings.get(k)!r}; pass the same settings to resume it or choose a new --workdir")
  write_json(path, settings)
  return settings


def load_config(workdir: str) -> dict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config.json in --workdir={workdir}; point it at a training run's "
                            f"work directory")
  with open(path) as f:
    return json.load(f)


# The open lock files of the work directories this process trains in, by real path.
_LOCKS = {}
LOCK_FILE = ".lock"


def lock(workdir: str) -> None:
  """Makes this process the only one training in `workdir` until it exits (or `unlock`), or
  raises a one-line error naming the process that holds it. The lock is the kernel's (flock):
  a killed process never leaves it stuck. Taking it again in the same process is a no-op."""
  os.makedirs(workdir, exist_ok=True)
  key = os.path.realpath(workdir)
  if key in _LOCKS:
    return
  path = os.path.join(workdir, LOCK_FILE)
  handle = open(path, "a+")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or "unknown"
    handle.close()
    raise ValueError(f"--workdir={workdir} is in use by another run (process {holder}); wait for "
                     f"it to end, or stop it, or choose another --workdir") from None
  handle.seek(0)
  handle.truncate()
  handle.write(f"{os.getpid()}\n")
  handle.flush()
  _LOCKS[key] = handle


def unlock(workdir: str) -> None:
  """Lets other processes train in `workdir` again."""
  handle = _LOCKS.pop(os.path.realpath(workdir), None)
  if handle is not None:
    handle.close()  # closing the last descriptor releases the flock


@atexit.register
def _unlock_all() -> None:
  for path in list(_LOCKS):
    unlock(path)
