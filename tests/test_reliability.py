"""A run survives kills, preemption, Ctrl-C, a second run on its directory, a full disk, stray
folders, checkpoints of other runs and damaged caches; and each ends in one line, not a traceback.

Behaviours about processes run the real programs as processes and send them real signals."""

import dataclasses
import errno
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from experiments import dcgan, gan, sample, wgan_gp
from jaxgen import checkpoint, data, image_cache, report, training, workdir
from jaxgen.tfds_prepare import DatasetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--image_size=8", "--batch_size=4", "--log_every=1", "--sample_every=1000"]
# program -> its tiny flags
FLAGS = {
    "gan": ["--latent_dim=3", "--d_steps=2", "--real_label=0.7,0.9"],
    "dcgan": ["--latent_dim=3", "--width=4"],
    "wgan": ["--latent_dim=3", "--width=4", "--n_critic=2"],
    "wgan_gp": ["--latent_dim=3", "--width=4", "--n_critic=2"],
    "vae": ["--latent_dim=3", "--hidden_dims=4,8", "--eval_examples=8"],
    "realnvp": ["--width=4", "--num_blocks=1", "--num_scales=1", "--eval_examples=8"],
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """The programs' environment: one CPU device, a compilation cache shared by this module's
  runs (the same compiled steps, so the same numbers), quick compiles."""
  cache = tmp_path_factory.mktemp("xla-cache")
  return {**os.environ, "JAXGEN_COMPILATION_CACHE": str(cache), "JAX_PLATFORMS": "cpu",
          "JAX_DISABLE_MOST_OPTIMIZATIONS": "true", "XLA_FLAGS": ""}


def command(program, run, *extra):
  return [sys.executable, "-m", f"experiments.{program}", *COMMON, *FLAGS[program],
          f"--workdir={run}", *extra]


def run_to_end(program, run, env, *extra, timeout=300):
  result = subprocess.run(command(program, run, *extra), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
  return result


def start(program, run, env, *extra):
  return subprocess.Popen(command(program, run, *extra), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def logged_steps(run) -> int:
  path = os.path.join(run, "metrics.jsonl")
  return len(report.read_metrics(path)) if os.path.exists(path) else 0


def wait_for(condition, process, timeout=240.0, may_end=False):
  """Until `condition()`; or, with `may_end`, until the process ends well."""
  deadline = time.monotonic() + timeout
  while not condition():
    if process.poll() is not None:
      if may_end and process.returncode == 0:
        return
      raise AssertionError(f"the run ended early: {process.stderr.read()[-2000:]}")
    if time.monotonic() > deadline:
      process.kill()
      raise AssertionError("the run made no progress")
    time.sleep(0.02)


def final_tree(run):
  ckpts = checkpoint.Checkpoints(os.path.join(run, "checkpoints"), read_only=True)
  tree, meta = ckpts.restore_tree()
  step = ckpts.latest_step()
  ckpts.close()
  return tree, meta, step


def latest_step_of(run):
  """The latest checkpoint's step, or None."""
  return checkpoint.latest_step(os.path.join(run, "checkpoints"))


def losses(run) -> list:
  """The metrics rows without their timings."""
  return [{k: v for k, v in row.items() if not k.endswith("_per_s")}
          for row in report.read_metrics(os.path.join(run, "metrics.jsonl"))]


# ---------------------------------------------------------------------------------------------
# SIGKILL at any moment, and the negative control that shows the comparison can fail.


def mnist_like(tmp_path, monkeypatch):
  """A named TFDS dataset (mnist) prepared under tfds.testing.mock_data into a data_dir, which
  the programs then read from its cache as they read the real one."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.testing import mocking
  from jaxgen import tfds_prepare

  data_dir = str(tmp_path / "tfds")
  monkeypatch.setattr(mocking, "_getitems", lambda record_keys, generator, serialized=False:
                      [generator[key] for key in record_keys])  # see test_image_datasets
  monkeypatch.setattr(tfds_prepare, "network_available", lambda url, timeout=5.0: True)
  with tfds.testing.mock_data(num_examples=40):
    data.load("mnist", image_size=8, batch_size=4, seed=0, data_dir=data_dir)
    data.load("mnist", image_size=8, batch_size=4, seed=0, data_dir=data_dir, split="test")
  return ["--dataset=mnist", f"--data_dir={data_dir}"]


# Every family's loop (the four GAN programs share one: the MLP GAN's and WGAN-GP's k critic
# batches per step), on blobs and on a TFDS dataset.
CASES = [("gan", "blobs1"), ("wgan_gp", "blobs1"), ("vae", "blobs1"), ("realnvp", "blobs1"),
         ("wgan_gp", "mnist")]


@pytest.mark.parametrize("program,dataset", CASES)
def test_killed_at_random_moments_a_run_resumes_to_the_same_bits(tmp_path, monkeypatch, env,
                                                                  program, dataset):
  extra = ["--steps=12", "--checkpoint_every=1", "--seed=3"]  # a save every step: kills hit saves
  if dataset == "mnist":
    extra += mnist_like(tmp_path, monkeypatch)
  straight = tmp_path / "straight"  # beside the killed runs (two cores): the same bits either way
  straight_run = start(program, straight, env, *extra)

  killed = tmp_path / "killed"
  rng = random.Random(f"{program}-{dataset}")
  kills = 0
  for _ in range(2):
    process = start(program, killed, env, *extra)
    before = logged_steps(killed)
    wait_for(lambda: logged_steps(killed) > before, process, may_end=True)  # training
    time.sleep(rng.uniform(0.0, 0.3))
    if process.poll() is None:
      process.send_signal(signal.SIGKILL)
      kills += 1
    process.wait()
    process.stderr.close()
  assert kills >= 1
  result = run_to_end(program, killed, env, *extra)
  assert result.returncode == 0, result.stderr[-2000:]
  _, errors = straight_run.communicate(timeout=300)
  assert straight_run.returncode == 0, errors[-2000:]

  tree, meta, step = final_tree(killed)
  expected, expected_meta, expected_step = final_tree(straight)
  assert step == expected_step == 12 and meta == expected_meta
  chex.assert_trees_all_equal(tree, expected)  # to the bit
  assert losses(killed) == losses(straight)
  leftovers = [n for n in os.listdir(killed / "checkpoints") if not n.isdigit()]
  assert leftovers == []  # no partial save left behind


def _tiny_gp(path, **overrides):
  settings = dict(dataset="blobs1", image_size=8, batch_size=4, steps=4, latent_dim=3, width=4,
                  n_critic=2, log_every=1, sample_every=100, checkpoint_every=2,
                  workdir=str(path))
  return wgan_gp.Config(**{**settings, **overrides})


def _params(config):
  tree, _, _ = final_tree(config.workdir)
  return tree


def test_resuming_without_the_data_position_or_the_key_gives_other_bits(tmp_path, monkeypatch):
  """The negative control of the exactness test: it can fail."""
  from jaxgen import parallel

  straight = _tiny_gp(tmp_path / "straight")
  wgan_gp.train(straight)
  resumed = _tiny_gp(tmp_path / "resumed", steps=2)
  wgan_gp.train(resumed)
  wgan_gp.train(dataclasses.replace(resumed, steps=4))
  chex.assert_trees_all_equal(_params(resumed), _params(straight))  # the positive case

  # The data from its start again, instead of from the checkpoint's data position.
  no_position = _tiny_gp(tmp_path / "no_position", steps=2)
  wgan_gp.train(no_position)
  stream = parallel.device_batches
  monkeypatch.setattr(parallel, "device_batches",
                      lambda make, devices, start, **kw: stream(make, devices, 0, **kw))
  wgan_gp.train(dataclasses.replace(no_position, steps=4))
  monkeypatch.setattr(parallel, "device_batches", stream)

  # A fresh key for the resumed steps, instead of the run's.
  no_key = _tiny_gp(tmp_path / "no_key", steps=2)
  wgan_gp.train(no_key)
  wrap = parallel.pmap_step
  monkeypatch.setattr(parallel, "pmap_step", lambda step, devices, **kw: (
      lambda state, batch, key: wrap(step, devices, **kw)(state, batch,
                                                           jax.random.fold_in(key, 1))))
  wgan_gp.train(dataclasses.replace(no_key, steps=4))

  for wrong in (no_position, no_key):
    with pytest.raises(AssertionError):
      chex.assert_trees_all_equal(_params(wrong), _params(straight))


# ---------------------------------------------------------------------------------------------
# SIGTERM and Ctrl-C: save the step, stop, resume there.


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, training.PREEMPTED_EXIT),
                                         (signal.SIGINT, training.INTERRUPTED_EXIT)])
def test_sigterm_and_ctrl_c_save_the_step_and_the_next_run_resumes_there(tmp_path, env, signum,
                                                                        code):
  run = tmp_path / "run"
  process = start("dcgan", run, env, "--steps=100000", "--checkpoint_every=100000")
  wait_for(lambda: logged_steps(run) >= 3, process)
  process.send_signal(signum)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == code, stderr[-2000:]
  _, meta, step = final_tree(run)
  name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
  assert stderr.splitlines()[-1] == (f"stopped by {name} at step {step}, which is saved; run "
                                     f"the same command to resume")
  assert 3 <= step < 100000 and meta == {"data_position": step}
  assert [r["step"] for r in report.read_metrics(run / "metrics.jsonl")][-1] == step

  result = run_to_end("dcgan", run, env, f"--steps={step + 2}", "--checkpoint_every=100000")
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"from step {step}" in result.stderr
  assert final_tree(run)[2] == step + 2


# ---------------------------------------------------------------------------------------------
# One run per work directory.


def test_a_second_run_on_a_busy_workdir_is_refused_and_a_killed_run_leaves_no_lock(tmp_path,
                                                                                   env):
  run = tmp_path / "run"
  first = start("wgan_gp", run, env, "--steps=100000", "--checkpoint_every=2")
  wait_for(lambda: os.path.isdir(run / "checkpoints" / "2"), first)
  config_before = (run / "config.json").read_text()
  second = run_to_end("wgan_gp", run, env, "--steps=3", timeout=120)
  assert second.returncode == 1
  assert [line for line in second.stderr.splitlines() if line.strip()] == [
      f"error: --workdir={run} is in use by another run (process {first.pid}); wait for it to "
      f"end, or stop it, or choose another --workdir"]
  assert (run / "config.json").read_text() == config_before
  assert first.poll() is None  # the first run is untouched

  first.send_signal(signal.SIGKILL)
  first.wait()
  first.stderr.close()
  last = final_tree(run)[2]
  again = run_to_end("wgan_gp", run, env, f"--steps={last + 1}", "--checkpoint_every=2")
  assert again.returncode == 0, again.stderr[-2000:]
  assert final_tree(run)[2] == last + 1


def test_the_lock_is_per_process(tmp_path):
  run = str(tmp_path / "run")
  workdir.lock(run)
  workdir.lock(run)  # this process again: no-op
  code = f"from jaxgen import workdir; workdir.lock({run!r})"
  other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
  assert other.returncode != 0 and f"in use by another run (process {os.getpid()})" in other.stderr
  workdir.unlock(run)
  other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
  assert other.returncode == 0, other.stderr


# ---------------------------------------------------------------------------------------------
# Stray, empty and partial step folders.


def test_partial_and_empty_step_folders_are_never_restored(tmp_path, capsys):
  straight = _tiny_gp(tmp_path / "straight")
  wgan_gp.train(straight)
  config = _tiny_gp(tmp_path / "run", steps=2)
  wgan_gp.train(config)
  folder = tmp_path / "run" / "checkpoints"
  os.makedirs(folder / "7")  # empty: orbax alone would take it as the latest step
  os.makedirs(folder / "9")
  (folder / "9" / "notes.txt").write_text("a user's file")
  os.makedirs(folder / f"3{checkpoint.PARTIAL_MARK}-1234" / "state")  # a kill mid-save
  capsys.readouterr()

  # A reader skips them and changes nothing.
  _, _, _, step = sample.load_sampler(str(tmp_path / "run"))
  assert step == 2 and sorted(os.listdir(folder))[-1] == "9"

  wgan_gp.train(dataclasses.replace(config, steps=4))
  err = capsys.readouterr().err
  assert f"{folder / '7'} is not a complete checkpoint" in err
  assert "the remains of a save that was interrupted" in err
  names = sorted(os.listdir(folder))
  assert [n for n in names if n.isdigit()] == ["2", "4"]
  assert [n.split(".")[0] for n in names if ".ignored-" in n] == ["7", "9"]
  assert not any(checkpoint.PARTIAL_MARK in n for n in names)
  ignored = next(n for n in names if n.startswith("9.ignored-"))
  assert (folder / ignored / "notes.txt").read_text() == "a user's file"  # moved, not deleted
  chex.assert_trees_all_equal(_params(config), _params(straight))


# ---------------------------------------------------------------------------------------------
# A full disk.

MEASURED_DISK_FULL = (  # what orbax-checkpoint 0.12.8 raised on a full tmpfs here
    'RESOURCE_EXHAUSTED: Error writing "g_params/0" in OCDBT database at local file "{path}": '
    'Failed to write 233813 bytes to file 7: No space left on device [os_error_code=\'28\']')


def test_disk_full_while_saving_names_the_last_good_step_which_restores(tmp_path,
                                                                        monkeypatch):
  import orbax.checkpoint as ocp

  config = _tiny_gp(tmp_path / "run", steps=6)
  save = ocp.CheckpointManager.save

  def failing(self, step, *args, **kwargs):
    if step == 4:  # writes a partial folder, as a real full disk does, then fails
      os.makedirs(os.path.join(self.directory, f"4{checkpoint.PARTIAL_MARK}", "state"))
      raise ValueError(MEASURED_DISK_FULL.format(path=self.directory))
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing)
  with pytest.raises(checkpoint.SaveError) as caught:
    wgan_gp.train(config)
  folder = os.path.join(config.workdir, "checkpoints")
  assert str(caught.value) == (
      f"could not save step 4 in {folder}: the disk is full; the last good checkpoint is step 2, "
      f"which resumes: free space and run the same command again")
  assert os.listdir(folder) == ["2"]  # the failed save's remains are gone
  assert training.failure(caught.value, config) == (f"error: {caught.value}", 1)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  reference = _tiny_gp(tmp_path / "reference", steps=2)
  wgan_gp.train(reference)
  chex.assert_trees_all_equal(_params(config), _params(reference))  # step 2 restores
  wgan_gp.train(config)  # and resumes once there is space
  assert final_tree(config.workdir)[2] == 6


def test_a_failed_saves_late_errors_are_dropped_others_kept(tmp_path, monkeypatch, caplog):
  """Orbax writes a checkpoint's arrays as concurrent asyncio tasks; on a full disk several fail,
  and asyncio logs each one nobody awaited ("Task exception was never retrieved", with its
  traceback) whenever the garbage collector reaches it: after the run's one-line error, seen
  here on a real full disk. Those name the failed save's partial folder and are dropped; the
  same record about anything else is still logged."""
  import asyncio
  import gc
  import orbax.checkpoint as ocp

  ckpts = checkpoint.Checkpoints(str(tmp_path / "c"))
  partial = os.path.join(ckpts.directory, f"5{checkpoint.PARTIAL_MARK}")

  def failing(self, step, *args, **kwargs):
    raise ValueError(MEASURED_DISK_FULL.format(path=partial))

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing)
  with pytest.raises(checkpoint.SaveError, match="the disk is full"):
    ckpts.save(5, {"w": np.ones(3, np.float32)}, {})

  def unretrieved(path):  # a task that fails and is never awaited, then collected
    async def write():
      raise ValueError(MEASURED_DISK_FULL.format(path=path))

    loop = asyncio.new_event_loop()
    task = loop.create_task(write())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    del task
    gc.collect()

  caplog.clear()
  with caplog.at_level(logging.ERROR):
    unretrieved(os.path.join(partial, "state"))
    assert [r for r in caplog.records if "never retrieved" in r.getMessage()] == []
    unretrieved(str(tmp_path / "elsewhere"))  # the control: asyncio's own record, passed on
    late = [r for r in caplog.records if "never retrieved" in r.getMessage()]
  assert len(late) == 1 and str(tmp_path / "elsewhere") in str(late[0].exc_info[1])


@pytest.fixture
def small_filesystem(tmp_path):
  """A 16 MiB tmpfs (room for a tiny run's kept checkpoints and one being written, about 1 MiB
  each), where this machine lets the tests mount one (root in a container that allows it); the
  injected-error test above runs everywhere."""
  mount = tmp_path / "small"
  mount.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if done.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected disk-full "
                f"test covers the behaviour")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_really_full_disk_stops_the_run_in_one_line(small_filesystem, env):
  run = small_filesystem / "run"
  first = run_to_end("wgan_gp", run, env, "--steps=2", "--checkpoint_every=2")
  assert first.returncode == 0, first.stderr[-2000:]
  free = os.statvfs(small_filesystem)
  with open(small_filesystem / "filler", "wb") as f:  # leave two pages
    f.write(b"\0" * ((free.f_bavail - 2) * free.f_frsize))
  full = run_to_end("wgan_gp", run, env, "--steps=6", "--checkpoint_every=1")
  lines = [line for line in full.stderr.splitlines() if line.startswith(("error", "Traceback"))]
  assert full.returncode == 1 and len(lines) == 1, full.stderr[-3000:]
  assert "the disk is full" in lines[0] and "the last good checkpoint is step" in lines[0]
  last = int(lines[0].split("the last good checkpoint is step ")[1].split(",")[0])
  assert final_tree(run)[2] == last >= 2
  os.remove(small_filesystem / "filler")
  again = run_to_end("wgan_gp", run, env, "--steps=6", "--checkpoint_every=1")
  assert again.returncode == 0, again.stderr[-2000:]
  assert f"from step {last}" in again.stderr and final_tree(run)[2] == 6


def test_disk_full_outside_a_save_names_the_last_good_step(tmp_path):
  config = _tiny_gp(tmp_path / "run", steps=2)
  wgan_gp.train(config)
  error = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "metrics.jsonl"))
  assert training.failure(error, config) == (
      f"error: the disk is full (writing {tmp_path / 'run' / 'metrics.jsonl'}); the last good "
      f"checkpoint is step 2, which resumes: free space and run the same command again", 1)


# ---------------------------------------------------------------------------------------------
# Non-finite losses, other runs' checkpoints, out of memory.


def test_debug_nans_names_the_operation_and_the_step(tmp_path, env):
  flags = ["--steps=5", "--learning_rate=1e30"]  # diverges within a step or two
  plain = run_to_end("dcgan", tmp_path / "plain", env, *flags)
  assert plain.returncode == 1
  line = plain.stderr.splitlines()[-1]
  assert line.startswith("error: non-finite loss at step 1 (") and line.endswith(
      "; --debug_nans names the operation that made it")
  assert not os.path.exists(tmp_path / "plain" / "checkpoints" / "1")
  checked = run_to_end("dcgan", tmp_path / "checked", env, *flags, "--debug_nans")
  assert checked.returncode == 1
  assert checked.stderr.splitlines()[-1] == (
      "error: step 1: invalid value (nan) encountered in dot_general")


def test_a_checkpoint_of_other_shapes_is_named_in_one_line(tmp_path):
  config = dcgan.Config(dataset="blobs1", image_size=8, batch_size=4, steps=2, latent_dim=3,
                        width=4, log_every=1, sample_every=100, checkpoint_every=2,
                        workdir=str(tmp_path / "run"))
  dcgan.train(config)
  os.remove(tmp_path / "run" / "config.json")  # the guard before it, gone: the checkpoint's own
  with pytest.raises(checkpoint.MismatchError) as caught:
    dcgan.train(dataclasses.replace(config, latent_dim=5, steps=4))
  message = str(caught.value)
  # the latent is the generator's first input: its first layer's kernel names the difference
  assert re.search(r"has g_params/\w+_0/kernel of shape \([\d, ]*3\), this run's is "
                   r"\([\d, ]*5\): it was saved by a run with other settings", message), message
  assert "\n" not in message and training.failure(caught.value, config)[1] == 1

  other = gan.Config(dataset="blobs1", image_size=8, batch_size=4, steps=4, latent_dim=3,
                     log_every=1, sample_every=100, checkpoint_every=2,
                     workdir=str(tmp_path / "run"))
  os.remove(tmp_path / "run" / "config.json")
  with pytest.raises(checkpoint.MismatchError, match="saved by a run with other settings"):
    gan.train(other)
  assert final_tree(tmp_path / "run")[2] == 2  # the checkpoint is kept


def test_out_of_device_memory_suggests_a_smaller_batch(tmp_path):
  config = _tiny_gp(tmp_path / "run", batch_size=4096)
  error = jax.errors.JaxRuntimeError(
      "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12884901888 bytes.")
  assert training.failure(error, config) == (
      "error: out of device memory with --batch_size=4096; pass a smaller --batch_size (or "
      "--precision=bfloat16)", 1)
  assert training.failure(RuntimeError("a bug"), config) is None  # a bug keeps its traceback


# ---------------------------------------------------------------------------------------------
# Damaged dataset caches and broken image files.


def test_a_truncated_dataset_cache_is_named_and_rebuilt(tmp_path, capsys):
  images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
  archive = tmp_path / "digits.npz"
  np.savez(archive, images=images, labels=np.arange(20) % 10)
  data_dir = str(tmp_path / "data")
  first, labels, _ = image_cache.cached_images(f"npz:{archive}", image_size=8,
                                               data_dir=data_dir)
  first = np.array(first)
  (folder,) = os.listdir(os.path.join(data_dir, image_cache.CACHE_FOLDER))
  path = os.path.join(data_dir, image_cache.CACHE_FOLDER, folder, "images.npy")
  with open(path, "r+b") as f:  # truncated, as by a full disk or an interrupted copy
    f.truncate(os.path.getsize(path) // 2)
  again, labels_again, _ = image_cache.cached_images(f"npz:{archive}", image_size=8,
                                                     data_dir=data_dir)
  assert f"the dataset cache {path} is damaged" in capsys.readouterr().err
  np.testing.assert_array_equal(again, first)
  np.testing.assert_array_equal(labels_again, labels)
  np.testing.assert_array_equal(first, images)


def test_a_cache_of_other_shape_than_its_record_is_rebuilt(tmp_path, capsys):
  archive = tmp_path / "a.npy"
  np.save(archive, np.full((6, 8, 8), 7, np.uint8))
  data_dir = str(tmp_path / "data")
  image_cache.cached_images(f"npy:{archive}", image_size=8, data_dir=data_dir)
  (folder,) = os.listdir(os.path.join(data_dir, image_cache.CACHE_FOLDER))
  path = os.path.join(data_dir, image_cache.CACHE_FOLDER, folder, "images.npy")
  np.save(path, np.zeros((5, 8, 8, 1), np.uint8))  # whole, but not what meta.json records
  images, _, meta = image_cache.cached_images(f"npy:{archive}", image_size=8, data_dir=data_dir)
  assert f"{path} has shape (5, 8, 8, 1), not (6, 8, 8, 1)" in capsys.readouterr().err
  assert images.shape == (6, 8, 8, 1) and int(images.min()) == 7


def test_a_broken_image_file_and_non_finite_arrays_are_named_before_training(tmp_path, env):
  from PIL import Image

  folder = tmp_path / "faces"
  folder.mkdir()
  for i in range(3):
    Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
  (folder / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  result = run_to_end("dcgan", tmp_path / "run", env, f"--dataset=folder:{folder}",
                      f"--data_dir={tmp_path / 'data'}", "--steps=2", timeout=120)
  assert result.returncode == 1
  assert [line for line in result.stderr.splitlines() if line.strip()] == [
      f"error: --dataset=folder:{folder}: cannot read {folder / '3.png'} (Truncated File Read); "
      f"remove or replace it"]
  assert not (tmp_path / "run").exists()

  bad = tmp_path / "bad.npy"
  np.save(bad, np.array([[[0.5, np.nan]]] * 4, np.float32))
  with pytest.raises(DatasetError, match="the images array has NaN or infinite values"):
    image_cache.cached_images(f"npy:{bad}", image_size=2, data_dir=str(tmp_path / "data"))
