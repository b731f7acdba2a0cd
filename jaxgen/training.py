"""What every training program shares, as plain functions (in the spirit of big_vision's train.py
helpers): the common settings, the checks and setup before any compilation, resume, and JAX's
process-wide configuration. Each program in experiments/ is a short explicit loop over these and
its family's step function; there is no Trainer class.

    config, devices, source = training.setup(Config.from_flags(), "wgan_gp")
    state, start = training.resume(checkpoints, state, batches_per_step=config.n_critic)
    for step in range(start, config.steps): ...
"""

import contextlib
import dataclasses
import os
import signal
import sys
import threading

from jaxgen import data, parallel
from jaxgen.flags import setting
from jaxgen.layers import PRECISIONS

# Persistent compilation cache: a resumed or repeated run loads its compiled steps instead of
# compiling them again. JAXGEN_COMPILATION_CACHE= (empty) turns it off.
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jaxgen", "xla")


@dataclasses.dataclass(frozen=True)
class Settings:
  """The settings every program has; each program's frozen `Config` extends this class (and may
  give a field another default). A value of 0 in an automatic setting is resolved once, by
  `resolved()`, and saved resolved in config.json, so a later change of a default never changes
  a run that is resumed."""
  dataset: str = setting("blobs1", "blobs1 | blobs10 | an image dataset (docs/datasets.md)")
  image_size: int = setting(0, "image height and width; 0 picks 64 for celeba and imagenette, "
                               "32 otherwise")
  batch_size: int = setting(0, "global batch per update, split over the devices; 0 picks the "
                               "program's default")
  steps: int = setting(3000, "updates to train for")
  seed: int = setting(0, "seed of initialisation, noise and data order")
  workdir: str = setting("runs/run", "where the run's files go; an existing run is resumed")
  num_devices: int = setting(0, "devices to split each batch over with pmap; 0 means all")
  log_every: int = setting(50, "steps between metrics.jsonl rows and progress updates")
  sample_every: int = setting(500, "steps between sample grids")
  checkpoint_every: int = setting(500, "steps between checkpoints")
  keep_checkpoints: int = setting(3, "newest checkpoints kept")
  blob_width: float = setting(1.5, "blob PSF standard deviation in pixels")
  blob_amplitude: float = setting(1.0, "blob peak brightness")
  data_dir: str = setting("", "where image datasets are prepared and cached (default: TFDS's)")
  precision: str = setting("float32", "float32 | bfloat16: the networks' computation dtype; "
                                      "parameters, optimizer and losses stay float32")
  debug_nans: bool = setting(False, "run with JAX's NaN checking, which names the operation that "
                                    "first makes a NaN (slow: for finding the cause of a "
                                    "non-finite loss)")
  eval_every: int = setting(0, "steps between evaluations of eval_samples generated images "
                               "against real ones during training (metrics.jsonl rows with "
                               "\"eval\": true, eval_curves.png): blob metrics on the blobs, "
                               "classifier FID, KID, precision and recall on labelled greyscale "
                               "data; 0: none")
  eval_samples: int = setting(1000, "generated (and real) images of each evaluation during "
                                    "training")

  # Settings that must be positive, and automatic ones (0 = resolved by `automatic`).
  POSITIVE = ("steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints")
  AUTOMATIC = ("image_size", "batch_size", "num_devices")
  # The value an automatic setting added later had in runs saved before it existed.
  BEFORE = {}
  # Whether the program keeps host memory for reuse (`jaxgen.host_memory`): measured faster for
  # the GANs' and VAEs' steps, slower for RealNVP's (README: Performance), which sets False.
  KEEP_HOST_MEMORY = True

  def __post_init__(self):
    for name in self.POSITIVE:
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in self.AUTOMATIC:
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be 0 (automatic) or positive, got {getattr(self, name)}")
    if self.eval_every < 0 or self.eval_samples < 2:
      raise ValueError(f"--eval_every must be 0 (no evaluations) or positive and --eval_samples "
                       f"at least 2, got {self.eval_every} and {self.eval_samples}")
    if self.precision not in PRECISIONS:
      raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                       f"{self.precision!r}")
    if self.num_devices and self.batch_size:
      parallel.check_split(self.batch_size, self.num_devices)
    data.check_name(self.dataset)

  def automatic(self) -> dict:
    """The values the automatic settings take when given as 0 (programs extend this)."""
    return {"image_size": data.default_image_size(self.dataset), "batch_size": 64}

  def resolved(self, saved: dict = None):
    """This config with every automatic 0 replaced: by the value a saved run had (`saved`, its
    config.json), else by `automatic()`. num_devices stays 0 (all devices): it may change on
    resume."""
    saved = saved or {}
    auto = self.automatic()
    if saved:
      auto.update({k: v for k, v in self.BEFORE.items() if k not in saved})
    values = {k: saved.get(k) or v for k, v in auto.items()
              if k != "num_devices" and not getattr(self, k)}
    return dataclasses.replace(self, **values)


def setup(config: Settings, model: str):
  """Every check that can fail on user input, before any compilation: resolves the automatic
  settings (keeping a resumed run's), picks the devices, opens the data and writes config.json
  (or refuses a work directory that holds another run, leaving it as it is).

  Returns (resolved config, devices, data source)."""
  from jaxgen import workdir

  config = config.resolved(workdir.saved_settings(config.workdir))
  devices = parallel.select_devices(config.num_devices)
  parallel.check_split(config.batch_size, len(devices))
  source = load_split(config)
  workdir.lock(config.workdir)  # before anything in it is written
  workdir.prepare(config, model, source)
  return config, devices, source


def load_split(config: Settings, split: str = "train"):
  """The data source of `split` ("train" or "test") of a resolved config's dataset."""
  return data.load(config.dataset, image_size=config.image_size, batch_size=config.batch_size,
                   seed=config.seed, blob_width=config.blob_width,
                   blob_amplitude=config.blob_amplitude, data_dir=config.data_dir or None,
                   split=split)


# The train split's evaluation at the end of an epoch: its first examples, in a fixed order.
TRAIN_EVAL_EXAMPLES = 10_000


def evaluate_epoch(writer, done: int, per_epoch: int, per_example, train, test, key,
                   limit: int = 0) -> dict:
  """The end-of-epoch rows of the likelihood models: `split_means` of per_example(images, key)
  on the train split's first TRAIN_EVAL_EXAMPLES (or `limit`) examples and on the whole test
  split (or its first `limit`), written as {"epoch", "split"} rows; returns the test row."""
  epoch = done / per_epoch
  epoch = int(epoch) if epoch == int(epoch) else round(epoch, 3)  # a run may end mid-epoch
  writer.evaluation(done, split_means(per_example, train, key, limit or TRAIN_EVAL_EXAMPLES),
                    epoch=epoch, split="train")
  return writer.evaluation(done, split_means(per_example, test, key, limit or None),
                           epoch=epoch, split="test")


def due(done: int, every: int, total: int) -> bool:
  """True at every `every`-th step and at the last one."""
  return done % every == 0 or done == total


def chunks(start: int, total: int, size: int, *intervals: int) -> list:
  """(first step, count) pairs that cover steps start .. total - 1 in calls of at most `size`
  steps, each ending where any of `intervals` (0: none) is due, so that what a loop does every
  so many steps (metrics, evaluations, grids, checkpoints) happens after the same steps as in a
  loop of single steps."""
  plan, first = [], start
  while first < total:
    end = min(total, first + size)
    for every in intervals:
      if every:
        end = min(end, (first // every + 1) * every)
    plan.append((first, end - first))
    first = end
  return plan


def step_calls(step, make, devices, start: int, total: int, size: int, *intervals: int,
               batch_axis: int = 0):
  """A training loop's calls, `size` steps each (see `chunks` and `parallel.pmap_steps`):
  (the (first step, count) plan, call(state, batches, key, count) -> (state, last step's
  metrics), the stream of batches for each call, to close when done). size 1 is the plain loop:
  one pmapped step per call.

      plan, call, batches = training.step_calls(step, source.batch, devices, start, total, k,
                                                config.log_every, ...)
      for first, count in plan:
        state, metrics = call(state, next(batches), key, count)
        done = first + count
  """
  plan = chunks(start, total, size, *intervals)
  if size == 1:
    single = parallel.pmap_step(step, devices)
    return (plan, lambda state, batch, key, count: single(state, batch, key),
            parallel.device_batches(make, devices, start, batch_axis=batch_axis))
  return plan, parallel.pmap_steps(step, devices), parallel.chunk_batches(
      make, plan, size, devices, batch_axis=batch_axis)


def resume(checkpoints, state, *, batches_per_step: int):
  """(state, first step) from the latest checkpoint, or (state, 0) for a new run.

  The checkpoint's data position must be the one its step implies: a mismatch means the
  checkpoint was written by a different program or setting, and is an error, not a guess."""
  from jaxgen import checkpoint

  if checkpoints.latest_step() is None:
    return state, 0
  state, meta = checkpoints.restore(state)
  start = int(state.step)
  if meta.get("data_position") != start * batches_per_step:
    raise checkpoint.MismatchError(
        f"the checkpoint of step {start} in {checkpoints.directory} was taken at data position "
        f"{meta.get('data_position')}, not {start * batches_per_step}: it belongs to a run with "
        f"other settings; choose a new --workdir")
  print(f"resuming {os.path.dirname(checkpoints.directory)} from step {start}", file=sys.stderr)
  return state, start


def split_means(per_example, source, key, limit: int = None) -> dict:
  """Means over a split of `source` (its first `limit` examples, in its fixed order) of
  per_example(images, key) -> {name: values (B,)}; batch i draws from fold_in(key, i). The short
  last batch is padded to the batch shape (one trace) and the padding dropped; `loss` is skipped."""
  import jax
  import numpy as np

  sums, count = {}, 0
  total = source.num_examples if limit is None else min(limit, source.num_examples)
  for i in range(source.batches_per_epoch):
    images = source.eval_batch(i)[0][:total - count]
    n = len(images)
    if n == 0:
      break
    padded = np.zeros((source.batch_size, *images.shape[1:]), np.float32)
    padded[:n] = images
    for name, values in per_example(padded, jax.random.fold_in(key, i)).items():
      if name != "loss":
        sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(values)[:n], dtype=np.float64))
    count += n
  return {name: value / count for name, value in sums.items()}


def first_examples(source, n: int):
  """The first `n` examples of a split of `source`, in its fixed order."""
  import numpy as np
  batches = [source.eval_batch(i)[0] for i in range(-(-n // source.batch_size))]
  return np.concatenate(batches)[:n]


def configure_jax(cache_dir: str = None, debug_nans: bool = False,
                  keep_host_memory: bool = True) -> None:
  """Process-wide JAX settings every program makes first in `main`, before JAX starts a backend:
  the XLA:CPU convolution setting jaxgen's layers are tuned for, host memory kept for reuse
  (`jaxgen.host_memory`, unless `keep_host_memory` is False), the persistent compilation cache
  (`cache_dir`, default $JAXGEN_COMPILATION_CACHE or ~/.cache/jaxgen/xla; "" disables), and JAX's
  NaN checking when asked for."""
  import jax
  from jaxgen import host_memory, layers

  layers.configure_cpu()
  if keep_host_memory:
    host_memory.keep_freed_memory()
  jax.config.update("jax_debug_nans", debug_nans)
  if cache_dir is None:
    cache_dir = os.environ.get("JAXGEN_COMPILATION_CACHE", DEFAULT_CACHE)
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    # Every step function is worth caching; tiny helper programs are not.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# Exit codes of a run stopped by a signal, after it saved its step: SIGTERM (preemption) gives
# sysexits' EX_TEMPFAIL ("try again later": run the same command to resume), Ctrl-C the shell's
# usual 130.
PREEMPTED_EXIT = 75
INTERRUPTED_EXIT = 130


class Stopped(Exception):
  """Raised at a step boundary after a SIGTERM or Ctrl-C, once that step is saved."""

  def __init__(self, signum: int, step: int):
    self.signum, self.step = signum, step
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    super().__init__(f"stopped by {name} at step {step}, which is saved; run the same command "
                     f"to resume")

  @property
  def exit_code(self) -> int:
    return PREEMPTED_EXIT if self.signum == signal.SIGTERM else INTERRUPTED_EXIT


class StopRequest:
  """What the loop asks at every step boundary: `requested` (then it saves the step), and
  `check(step)`, which raises `Stopped` once a request was seen by `requested`: a signal that
  comes after the step's save decision waits for the next step's. A second Ctrl-C does not wait
  for the step: it interrupts at once."""

  def __init__(self, start: int):
    self.signum = None
    self.seen = False
    self.done = start  # the last step the loop finished

  @property
  def requested(self) -> bool:
    self.seen = self.seen or self.signum is not None
    return self.seen

  def handle(self, signum, frame) -> None:
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    print("\nstopping: saving at the end of this step (Ctrl-C again to stop without saving)",
          file=sys.stderr)

  def check(self, step: int) -> None:
    self.done = step
    if self.seen:
      raise Stopped(self.signum, step)


@contextlib.contextmanager
def guarded(config: Settings, start: int, checkpoints, *resources):
  """The guards around a program's loop: SIGTERM and Ctrl-C become a `StopRequest` (the loop
  saves its step, then stops, raising `Stopped`); at the end, however it ends, the `resources`
  (prefetching, the writer) and `checkpoints` are closed, after any save in flight, and the work
  directory is unlocked. `failure` turns how a run can end early into one line.

      with training.guarded(config, start, checkpoints, batches, writer) as stop:
        for i in range(start, total):
          ...
          if training.due(done, config.checkpoint_every, total) or stop.requested:
            checkpoints.save(done, ...)
          stop.check(done)
  """
  from jaxgen import workdir

  stop = StopRequest(start)
  previous = {}
  if threading.current_thread() is threading.main_thread():
    previous = {s: signal.signal(s, stop.handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield stop
  except FloatingPointError as error:
    if config.debug_nans and "non-finite loss" not in str(error):  # JAX's check, in a step
      raise FloatingPointError(f"step {stop.done + 1}: {str(error).splitlines()[0]}") from error
    raise
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    for resource in resources:
      resource.close()
    checkpoints.close()
    workdir.unlock(config.workdir)


def out_of_memory(error: BaseException) -> bool:
  import jax
  return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def failure(error: BaseException, config: Settings):
  """(one line for the user, exit code) for how a run's training can end early, or None for an
  error that is a bug (its traceback is what helps then)."""
  from jaxgen import checkpoint

  if isinstance(error, Stopped):
    return str(error), error.exit_code
  if isinstance(error, (checkpoint.SaveError, checkpoint.MismatchError, data.DatasetError)):
    return f"error: {error}", 1  # data: what the evaluations during training find of it
  if isinstance(error, OSError) and checkpoint.disk_full(error):
    last = checkpoint.latest_step(os.path.join(config.workdir, "checkpoints"))
    return (f"error: the disk is full (writing {error.filename or 'a file of the run'}); the "
            f"last good checkpoint is step {last}, which resumes: free space and run the same "
            f"command again"), 1
  if isinstance(error, FloatingPointError):  # the loop's own check, or --debug_nans's
    hint = "" if config.debug_nans else "; --debug_nans names the operation that made it"
    return f"error: {str(error).splitlines()[0]}{hint}", 1
  if out_of_memory(error):
    return (f"error: out of device memory with --batch_size={config.batch_size}; pass a smaller "
            f"--batch_size (or --precision=bfloat16)"), 1
  return None


def run_program(config_cls, model: str, train) -> None:
  """The `__main__` of a training program: flags from `config_cls`'s fields, then in order the
  settings' checks, JAX's configuration, `setup` and `train(config, devices, source)`. Bad input
  ends in one line on stderr, before anything is compiled or written."""
  from absl import app, logging
  from jaxgen.flags import define_flags, from_flags

  def main(argv):
    if len(argv) > 1:
      sys.exit(f"error: unexpected arguments {argv[1:]}; settings are --flags (see --help)")
    logging.set_verbosity(logging.WARNING)  # orbax reports every save step at INFO
    try:
      config = from_flags(config_cls)
    except ValueError as e:
      sys.exit(f"error: {e}")
    try:
      # before `setup` starts JAX's backend
      configure_jax(debug_nans=config.debug_nans, keep_host_memory=config.KEEP_HOST_MEMORY)
      config, devices, source = setup(config, model)
    except (ValueError, FileNotFoundError) as e:
      sys.exit(f"error: {e}")
    except OSError as error:  # a full disk while caching the data or writing config.json
      answer = failure(error, config)
      if answer is None:
        raise
      sys.exit(answer[0])
    try:
      train(config, devices, source)
    except Exception as error:
      answer = failure(error, config)
      if answer is None:
        raise
      print(answer[0], file=sys.stderr)
      sys.exit(answer[1])

  define_flags(config_cls)
  app.run(main)
