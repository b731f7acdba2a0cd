"""What a run shows a person: metrics.jsonl, a progress line, PNG sample grids and loss plots."""

import json
import math
import os
import sys
import time

import numpy as np
from PIL import Image


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (a reader never sees half a file)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


class MetricsLog:
  """Appends one JSON object per logged step to `path`; floats keep full precision."""

  def __init__(self, path: str, resume_step: int = 0):
    self.path = path
    if resume_step and os.path.exists(path):
      # Drop lines from beyond the checkpoint being resumed: they will be logged again. A line
      # cut short by a kill mid-write is dropped too. Rewritten atomically: a kill now loses
      # nothing.
      with open(path) as f:
        rows = [line for line in f if _row_step(line) <= resume_step]
      tmp = f"{path}.tmp"
      with open(tmp, "w") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for line in rows)
      os.replace(tmp, path)
    elif not resume_step:
      open(path, "w").close()

  def write(self, step: int, metrics: dict, labels: dict = None) -> None:
    """One row: `step`, any `labels` (e.g. epoch and split) as they are, metrics as floats."""
    row = {"step": int(step), **(labels or {}), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


def _row_step(line: str) -> float:
  """The step of a metrics.jsonl line; infinity for a line that is not a whole row."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return math.inf


def read_metrics(path: str) -> list:
  """The rows of a metrics.jsonl (a last line cut short by a kill is left out)."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip() and _row_step(line) < math.inf]


class Progress:
  """A one-line progress bar on stderr: step, steps/s and the latest losses."""

  def __init__(self, total: int, start: int = 0, stream=sys.stderr):
    self.total, self.stream = total, stream
    self.tty = stream.isatty()
    self._last_step, self._last_time = start, time.perf_counter()
    self.steps_per_s = 0.0

  def update(self, step: int, metrics: dict) -> None:
    now = time.perf_counter()
    if step > self._last_step:
      self.steps_per_s = (step - self._last_step) / (now - self._last_time)
    self._last_step, self._last_time = step, now
    done = int(30 * step / max(self.total, 1))
    values = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    line = (f"[{'#' * done}{'.' * (30 - done)}] {step}/{self.total} "
            f"{self.steps_per_s:.2f} steps/s {values}")
    self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
    self.stream.flush()

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` spent on something other than steps (an evaluation) out of the next
    rate."""
    self._last_time += seconds

  def close(self) -> None:
    if self.tty:
      self.stream.write("\n")


def sample_grid(images: np.ndarray, columns: int = 0, pad: int = 1) -> np.ndarray:
  """Tiles images (N, H, W, C) with values in [0, 1] into one uint8 picture (rows, cols, C).

  Single-channel images give a (rows, cols) greyscale picture; `columns` defaults to a square.
  """
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, col = divmod(i, columns)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  grid = (grid * 255.0 + 0.5).astype(np.uint8)
  return grid[..., 0] if c == 1 else grid


def save_png(path: str, picture: np.ndarray, scale: int = 1) -> None:
  """Writes a uint8 picture; `scale` enlarges small images with nearest-neighbour pixels."""
  if scale > 1:
    picture = np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)
  Image.fromarray(picture).save(path)


def plot_curves(rows: list, keys: list, path: str, title: str = "", columns: int = 8) -> None:
  """One panel per metric against the step, from metrics.jsonl rows, saved as a PNG (at most
  `columns` panels a row); a metric's `baseline_<key>` values, where rows have them, are drawn
  dashed in its panel."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = [k for k in keys if any(k in r for r in rows)]
  ncols = min(len(keys), columns)
  nrows = -(-len(keys) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False)
  for ax in axes.ravel()[len(keys):]:
    ax.set_visible(False)
  for ax, key in zip(axes.ravel(), keys):
    steps = [r["step"] for r in rows if key in r]
    ax.plot(steps, [r[key] for r in rows if key in r], lw=1.2)
    baseline = [(r["step"], r[f"baseline_{key}"]) for r in rows if f"baseline_{key}" in r]
    if baseline:
      ax.plot(*zip(*baseline), lw=1.0, ls="--", color="0.4")
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("generator step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


class Writer:
  """Everything a run shows a person, written one way for every program: metrics.jsonl rows (with
  steps/s and images/s of the interval just logged), the progress line, PNG sample grids in
  samples/ and plots of the logged metrics."""

  def __init__(self, workdir: str, total_steps: int, start: int, image_size: int):
    self.workdir = workdir
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self.sample_dir = os.path.join(workdir, "samples")
    os.makedirs(self.sample_dir, exist_ok=True)
    self.scale = max(1, 128 // image_size)  # small images enlarged for viewing
    self.log = MetricsLog(self.metrics_path, resume_step=start)
    self.progress = Progress(total_steps, start)

  def metrics(self, step: int, metrics: dict, images_per_step: int = 0) -> dict:
    """Writes one row of host metrics (floats, or 0-d arrays) and updates the progress line;
    a non-finite value stops the run before anything of this step is saved."""
    row = {k: float(v) for k, v in metrics.items()}
    bad = [k for k, v in row.items() if not math.isfinite(v)]
    if bad:
      raise FloatingPointError(
          f"non-finite loss at step {step} ({', '.join(f'{k}={row[k]}' for k in bad)}); nothing "
          f"from this step was saved. Lower --learning_rate, or resume from the last checkpoint "
          f"in {self.workdir}")
    self.progress.update(step, row)
    rate = self.progress.steps_per_s  # since the previous logged step (the first: since start)
    extra = {"steps_per_s": rate}
    if images_per_step:
      extra["images_per_s"] = rate * images_per_step
    self.log.write(step, {**row, **extra})
    return row

  def evaluation(self, step: int, metrics: dict, **labels) -> dict:
    """A row of an evaluation (labels such as epoch=3, split="test"), not a progress update."""
    row = {k: float(v) for k, v in metrics.items()}
    self.log.write(step, row, labels)
    return row

  def grid(self, name: str, images, columns: int = 8) -> str:
    """Saves images in the model's range [-1, 1] (N, H, W, C) as samples/<name>."""
    path = os.path.join(self.sample_dir, name)
    save_png(path, sample_grid((np.asarray(images, np.float32) + 1.0) / 2.0, columns), self.scale)
    return path

  def curves(self, keys: list, title: str, name: str = "loss_curves.png") -> None:
    """One panel per logged metric in `keys` against the step."""
    plot_curves(read_metrics(self.metrics_path), keys, os.path.join(self.workdir, name), title)

  def close(self) -> None:
    self.progress.close()
