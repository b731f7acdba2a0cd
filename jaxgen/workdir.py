"""A run's work directory: its config.json, and the guard that keeps one run per directory."""

import dataclasses
import json
import os

from jaxgen.report import write_json

# Settings that may differ when a run is resumed: they change how long it runs and what it
# writes, not what it computes.
RESUMABLE = ("steps", "workdir", "num_devices", "log_every", "sample_every", "checkpoint_every",
             "keep_checkpoints", "data_dir", "eval_every", "eval_samples")


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
