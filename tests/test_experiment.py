"""The WGAN-GP program end to end: files written, resume, failures that keep the user's data."""

import dataclasses
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from experiments import sample, wgan_gp
from jaxgen import checkpoint, data, gan, training
from jaxgen import wgan_gp as wgan_gp_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup(config):
  return training.setup(config, wgan_gp.MODEL)


def tiny(path, **overrides):
  settings = dict(dataset="blobs1", image_size=8, batch_size=4, steps=4, width=4, latent_dim=3,
                  n_critic=2, log_every=1, sample_every=2, checkpoint_every=2,
                  workdir=str(path))
  return wgan_gp.Config(**{**settings, **overrides})


def final_state(config):
  """The run's latest checkpoint, restored as a GANState."""
  config = config.resolved()
  generator, critic = wgan_gp.networks(config, 1)
  optimizer = wgan_gp_lib.optimizer(config.learning_rate)
  like = gan.init_state(jax.random.PRNGKey(0), generator=generator, discriminator=critic,
                        g_optimizer=optimizer, d_optimizer=optimizer,
                        image_shape=(config.image_size, config.image_size, 1))
  ckpts = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"))
  state, meta = ckpts.restore(like)
  ckpts.close()
  return state, meta


def test_tiny_run_writes_every_file(tmp_path):
  config = tiny(tmp_path / "run")
  last = wgan_gp.train(config)
  run = config.workdir
  saved = json.load(open(os.path.join(run, "config.json")))
  assert saved["model"] == "wgan_gp" and saved["batch_size"] == 4
  assert saved["image_shape"] == [8, 8, 1] and saved["pixel_range"] == [0.0, 1.0]
  rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for key in ("critic_loss", "generator_loss", "gradient_penalty", "wasserstein", "grad_norm",
              "steps_per_s", "images_per_s"):
    assert all(np.isfinite(r[key]) for r in rows)
  assert all(r["images_per_s"] == r["steps_per_s"] * 2 * 4 for r in rows)  # n_critic x batch
  assert rows[-1]["critic_loss"] == last["critic_loss"]  # full precision, not rounded
  for name in ("step_000002.png", "step_000004.png"):
    picture = np.asarray(Image.open(os.path.join(run, "samples", name)))
    # 64 images of 8x8 in an 8x8 grid with 1-pixel gaps, enlarged 16x for viewing
    assert picture.shape == (16 * 73, 16 * 73)
  # One batch of real images (4 here) on one row of the same 8 columns.
  assert np.asarray(Image.open(os.path.join(run, "samples", "real.png"))).shape == (160, 16 * 73)
  assert Image.open(os.path.join(run, "loss_curves.png")).size[0] > 300
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "4"]
  state, meta = final_state(config)
  assert int(state.step) == 4 and meta == {"data_position": 8}


def test_samples_from_a_run(tmp_path):
  config = tiny(tmp_path / "run", steps=2)
  wgan_gp.train(config)
  out = str(tmp_path / "s.npz")
  assert "5 samples of step 2" in sample.write_samples(config.workdir, 5, out, chunk=2)
  images = np.load(out)["images"]
  assert images.shape == (5, 8, 8, 1) and images.dtype == np.float32
  assert images.min() >= 0.0 and images.max() <= 1.0  # blobs1's own pixel range
  # The same as the generator applied by hand to the same latents, mapped back.
  state, _ = final_state(config)
  generator, _ = wgan_gp.networks(config.resolved(), 1)
  z = jax.random.normal(jax.random.split(jax.random.PRNGKey(0), 3)[0], (2, 3))
  by_hand = data.from_model_range(gan.generate(generator, state, z), (0.0, 1.0))
  np.testing.assert_allclose(images[:2], by_hand, rtol=1e-5, atol=1e-6)
  sample.write_samples(config.workdir, 4, str(tmp_path / "g.png"))
  assert Image.open(tmp_path / "g.png").size == (16 * 19, 16 * 19)
  with pytest.raises(ValueError, match=".npz"):
    sample.write_samples(config.workdir, 4, str(tmp_path / "x.jpg"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    sample.write_samples(str(tmp_path / "nothing"), 4, out)


def test_resume_is_bit_identical(tmp_path):
  straight = tiny(tmp_path / "straight")
  wgan_gp.train(straight)
  interrupted = tiny(tmp_path / "resumed", steps=2)
  wgan_gp.train(interrupted)
  wgan_gp.train(dataclasses.replace(interrupted, steps=4))  # same workdir: resumes at step 2
  a, meta_a = final_state(straight)
  b, meta_b = final_state(interrupted)
  chex.assert_trees_all_equal(a, b)
  assert meta_a == meta_b
  rows = [[{k: v for k, v in json.loads(line).items() if not k.endswith("_per_s")}
           for line in open(os.path.join(c.workdir, "metrics.jsonl"))]
          for c in (straight, interrupted)]
  assert rows[0] == rows[1]


def test_a_killed_save_leaves_the_last_checkpoint(tmp_path):
  config = tiny(tmp_path / "run")
  wgan_gp.train(config)
  # What a process killed while saving step 6 leaves: orbax's unfinished temporary folder.
  partial = os.path.join(config.workdir, "checkpoints", "6.orbax-checkpoint-tmp-1700000000")
  os.makedirs(os.path.join(partial, "state"))
  open(os.path.join(partial, "state", "manifest.ocdbt"), "wb").write(b"\0" * 10)
  ckpts = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"))
  assert ckpts.latest_step() == 4
  ckpts.close()
  wgan_gp.train(dataclasses.replace(config, steps=6))  # resumes from 4 and finishes
  state, _ = final_state(config)
  assert int(state.step) == 6


class _PoisonedSource:
  """Blob batches that turn to NaN from batch `bad` on, as a diverging run's data would."""

  def __init__(self, source, bad):
    self.source, self.bad = source, bad
    self.image_shape, self.pixel_range = source.image_shape, source.pixel_range

  def batch(self, index):
    x = self.source.batch(index)
    return x * np.nan if index >= self.bad else x


def test_non_finite_loss_stops_before_saving(tmp_path):
  config = tiny(tmp_path / "run", checkpoint_every=2)
  config, devices, source = training.setup(config, wgan_gp.MODEL)
  with pytest.raises(FloatingPointError, match="non-finite loss at step 3"):
    wgan_gp.train(config, devices, _PoisonedSource(source, bad=4))  # step 3 reads batch 4
  assert os.listdir(os.path.join(config.workdir, "checkpoints")) == ["2"]
  state, _ = final_state(config)
  chex.assert_tree_all_finite(state)


def test_checkpoints_refuse_a_non_finite_state(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path / "c"))
  with pytest.raises(FloatingPointError, match="non-finite"):
    ckpts.save(1, {"w": np.array([1.0, np.inf])}, {"data_position": 0})
  assert ckpts.latest_step() is None
  ckpts.close()


def test_a_workdir_of_another_run_is_refused_and_kept(tmp_path):
  config = tiny(tmp_path / "run", steps=2)
  wgan_gp.train(config)
  before = open(os.path.join(config.workdir, "config.json")).read()
  with pytest.raises(ValueError, match="holds a run with image_size=8, not 16"):
    setup(dataclasses.replace(config, image_size=16))
  assert open(os.path.join(config.workdir, "config.json")).read() == before
  assert os.listdir(os.path.join(config.workdir, "checkpoints")) == ["2"]


def test_a_run_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
  config = tiny(tmp_path / "run")
  setup(config)
  path = os.path.join(config.workdir, "config.json")
  with open(path) as f:
    saved = json.load(f)
  del saved["precision"]  # as written by a jaxgen without that setting
  with open(path, "w") as f:
    json.dump(saved, f)
  setup(config)  # the default it had implicitly: same run
  with pytest.raises(ValueError, match="holds a run with precision='float32', not 'bfloat16'"):
    setup(dataclasses.replace(config, precision="bfloat16"))


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=-2), "--batch_size must be 0 \\(automatic\\) or positive"),
    (dict(steps=0), "--steps must be positive"),
    (dict(image_size=48), "power of two"),
    (dict(num_devices=2, batch_size=63), "multiple of 2"),
    (dict(learning_rate=-1.0), "--learning_rate must be 0 \\(automatic\\) or positive"),
    (dict(gp_weight=-1.0), "--gp_weight must be non-negative"),
    (dict(dataset="blobz1"), "unknown --dataset='blobz1'"),
    (dict(precision="float16"), "--precision must be one of float32, bfloat16, got 'float16'"),
    (dict(critic_head="mlp"), "--critic_head must be linear, hidden or global, got 'mlp'"),
])
def test_bad_settings_are_clear_errors(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    tiny(tmp_path / "run", **overrides)


def _automatic(config):
  c = config.resolved()
  return c.image_size, c.batch_size, c.width, c.latent_dim


def test_automatic_settings_follow_the_dataset(tmp_path):
  assert wgan_gp.Config().resolved().learning_rate == 1e-3  # the blob study's
  assert wgan_gp.Config(dataset="celeba").resolved().learning_rate == 1e-4  # the paper's
  assert _automatic(wgan_gp.Config(workdir=str(tmp_path))) == (32, 32, 32, 32)
  assert _automatic(wgan_gp.Config(dataset="blobs10"))[3] == 64
  assert _automatic(wgan_gp.Config(dataset="celeba")) == (64, 64, 64, 100)
  assert _automatic(wgan_gp.Config(dataset="mnist", width=16, latent_dim=8)) == (32, 64, 16, 8)


def test_automatic_settings_are_saved_resolved_and_kept_on_resume(tmp_path):
  config, _, _ = setup(wgan_gp.Config(workdir=str(tmp_path / "run")))
  saved = json.load(open(tmp_path / "run" / "config.json"))
  assert (saved["image_size"], saved["batch_size"], saved["width"], saved["latent_dim"]) == \
      (32, 32, 32, 32) == _automatic(config)
  # A run saved when the automatic batch was 16: resuming keeps 16, whatever the default now.
  saved["batch_size"] = 16
  with open(tmp_path / "run" / "config.json", "w") as f:
    json.dump(saved, f)
  resumed, _, source = setup(wgan_gp.Config(workdir=str(tmp_path / "run")))
  assert resumed.batch_size == 16 and source.batch(0).shape[0] == 16
  # Given explicitly, a different value is another run, refused.
  with pytest.raises(ValueError, match="holds a run with batch_size=16, not 32"):
    setup(wgan_gp.Config(workdir=str(tmp_path / "run"), batch_size=32))


def test_a_run_saved_with_unresolved_automatic_settings_resumes(tmp_path):
  """config.json files written before automatic settings were saved resolved held 0s."""
  config = tiny(tmp_path / "run", width=0)
  setup(config)
  path = os.path.join(config.workdir, "config.json")
  saved = json.load(open(path))
  saved["width"] = 0
  json.dump(saved, open(path, "w"))
  assert setup(config)[0].width == 32


def test_upsampling_is_resize_for_the_blobs_and_a_run_from_before_it_keeps_transpose(tmp_path):
  assert setup(wgan_gp.Config(workdir=str(tmp_path / "new")))[0].upsampling == "resize"
  assert wgan_gp.Config(dataset="celeba").resolved().upsampling == "transpose"
  with pytest.raises(ValueError, match="--upsampling must be one of transpose, resize"):
    wgan_gp.Config(upsampling="bilinear")
  # A run written before the setting existed: its config.json has no "upsampling", and its
  # checkpoint holds transposed-convolution kernels (4x4), not resize ones (3x3).
  _a_run_from_before_the_setting_keeps(tmp_path, "upsampling", "transpose", "resize")


def _a_run_from_before_the_setting_keeps(tmp_path, name: str, old: str, new: str):
  """A run trained with `name`=`old`, its config.json then stripped of `name` (as written before
  the setting existed), resumes and samples with `old`, and refuses `new`."""
  config = tiny(tmp_path / "old", steps=1, **{name: old})
  wgan_gp.train(config)
  path = os.path.join(config.workdir, "config.json")

  def forget():
    saved = json.load(open(path))
    del saved[name]
    json.dump(saved, open(path, "w"))

  forget()
  resumed = dataclasses.replace(config, steps=2, **{name: ""})
  assert getattr(setup(resumed)[0], name) == old
  wgan_gp.train(resumed)
  assert json.load(open(path))[name] == old
  with pytest.raises(ValueError, match=f"holds a run with {name}='{old}', not '{new}'"):
    setup(dataclasses.replace(config, **{name: new}))
  forget()  # sampled from as it was: no setting, the old layers
  images, _, step = sample.draw_samples(config.workdir, 4)
  assert step == 2 and images.shape == (4, 8, 8, 1)


def test_the_mapping_mlp_is_on_for_the_blobs_and_a_run_from_before_it_has_none(tmp_path):
  assert setup(wgan_gp.Config(workdir=str(tmp_path / "new")))[0].mapping == "2x256"
  assert wgan_gp.Config(dataset="celeba").resolved().mapping == "none"
  assert wgan_gp.Config(mapping="3x64").mapping_shape == (3, 64)
  for bad in ("2", "0x256", "2x", "mlp"):
    with pytest.raises(ValueError, match="--mapping must be none or LxW"):
      wgan_gp.Config(mapping=bad)
  # A run written before the setting existed: no "mapping" in config.json, no mapping layers in
  # its checkpoint.
  _a_run_from_before_the_setting_keeps(tmp_path, "mapping", "none", "2x256")


def test_the_critic_sees_the_whole_image_on_one_blob_and_a_run_from_before_keeps_linear(
    tmp_path):
  assert setup(wgan_gp.Config(workdir=str(tmp_path / "new")))[0].critic_head == "global"
  assert wgan_gp.Config(dataset="celeba").resolved().critic_head == "linear"
  assert wgan_gp.Config(dataset="blobs10").resolved().critic_head == "linear"
  _, critic = wgan_gp.networks(wgan_gp.Config().resolved(), 1)
  assert critic.global_view and not critic.hidden
  # A run written before the setting existed: no "critic_head" in config.json, the 4x4 head.
  _a_run_from_before_the_setting_keeps(tmp_path, "critic_head", "linear", "global")


@pytest.mark.parametrize("name, old, new, bad, choices", [
    ("generator_norm", "batch", "instance", "layer", "batch, instance"),
    ("latent", "normal", "uniform", "gaussian", "normal, uniform"),
])
def test_a_generator_choice_and_a_run_from_before_it(tmp_path, name, old, new, bad, choices):
  """Each choice of the generator (its normalisation, its latent prior) defaults to DCGAN's,
  refuses a bad value in one line, and a run written before it existed (no such key in
  config.json) resumes and samples with DCGAN's."""
  assert getattr(wgan_gp.Config(dataset="celeba").resolved(), name) == old
  assert getattr(wgan_gp.Config().resolved(), name) == old
  with pytest.raises(ValueError, match=f"--{name} must be one of {choices} .*got '{bad}'"):
    wgan_gp.Config(**{name: bad})
  _a_run_from_before_the_setting_keeps(tmp_path, name, old, new)


def test_a_checkpoint_at_the_wrong_data_position_is_an_error(tmp_path):
  config = tiny(tmp_path / "run", steps=2)
  wgan_gp.train(config)
  ckpts = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"))
  state, _ = final_state(config)
  ckpts.save(3, state.replace(step=state.step + 1), {"data_position": 5})
  ckpts.close()
  with pytest.raises(ValueError, match="taken at data position 5, not 6"):
    wgan_gp.train(dataclasses.replace(config, steps=4))


def test_bad_flag_fails_in_one_line_before_any_work(tmp_path):
  run = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.wgan_gp", "--batch_size=63", "--num_devices=2",
       f"--workdir={run}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines == ["error: --batch_size=63 does not split evenly over 2 devices; use a "
                   "multiple of 2"]
  assert not run.exists()


def test_the_command_line_trains(tmp_path):
  run = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.wgan_gp", "--steps=2", "--image_size=8", "--width=4",
       "--batch_size=4", "--n_critic=1", "--log_every=1", "--latent_dim=2",
       f"--workdir={run}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAXGEN_COMPILATION_CACHE": str(tmp_path / "cache")})
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  # The compiled step went into the persistent cache, for the next run of the same program.
  assert any(name.startswith("jit_") or name.startswith("pmap_")
             for name in os.listdir(tmp_path / "cache")), os.listdir(tmp_path / "cache")
  saved = json.load(open(run / "config.json"))
  assert (saved["n_critic"], saved["latent_dim"], saved["dataset"]) == (1, 2, "blobs1")
  assert "2/2" in result.stderr  # the progress line


def test_help_lists_every_setting():
  result = subprocess.run([sys.executable, "-m", "experiments.wgan_gp", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  for field in dataclasses.fields(wgan_gp.Config):
    flag = f"--[no]{field.name}:" if field.type is bool else f"--{field.name}:"  # absl's form
    assert flag in result.stdout, field.name
  assert "gradient penalty weight lambda" in result.stdout


def _loop_before_the_shared_pieces(config, num_devices):
  """The training loop of experiments/wgan_gp.py as it was before it moved onto jaxgen.training,
  written with JAX directly: metrics of every logged step and the final state."""
  import functools
  from jaxgen import parallel

  devices = jax.local_devices()[:num_devices]
  config = config.resolved()
  source = data.load(config.dataset, image_size=config.image_size, batch_size=config.batch_size,
                     seed=config.seed)
  generator, critic = wgan_gp.networks(config, 1, axis_name=parallel.AXIS)
  optimizer = wgan_gp_lib.optimizer(config.learning_rate)
  init_key, train_key, _ = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  state = gan.init_state(init_key, generator=generator, discriminator=critic,
                         g_optimizer=optimizer, d_optimizer=optimizer,
                         image_shape=source.image_shape)
  step_fn = jax.pmap(functools.partial(
      wgan_gp_lib.train_step, generator=generator, critic=critic, optimizer=optimizer,
      gp_weight=config.gp_weight, axis_name=parallel.AXIS), axis_name=parallel.AXIS,
      in_axes=(0, 0, None), devices=devices)
  replicated = jax.tree.map(lambda x: np.stack([x] * num_devices), state)
  rows = []
  for step in range(config.steps):
    real = np.stack([source.batch(step * config.n_critic + i) for i in range(config.n_critic)])
    real = real.reshape(config.n_critic, num_devices, -1, *real.shape[2:]).swapaxes(0, 1)
    replicated, metrics = step_fn(replicated, real, train_key)
    rows.append({"step": step + 1, **{k: float(v[0]) for k, v in metrics.items()}})
  return rows, jax.tree.map(lambda x: np.asarray(x[0]), replicated)


@pytest.mark.parametrize("num_devices", [1, 2])
def test_the_shared_loop_computes_what_the_loop_before_it_did(tmp_path, num_devices):
  config = tiny(tmp_path / "run", num_devices=num_devices)
  wgan_gp.train(config)
  rows = [{k: v for k, v in json.loads(line).items() if not k.endswith("_per_s")}
          for line in open(os.path.join(config.workdir, "metrics.jsonl"))]
  expected_rows, expected_state = _loop_before_the_shared_pieces(config, num_devices)
  assert rows == expected_rows  # to the bit: JSON floats round-trip exactly
  state, _ = final_state(config)
  chex.assert_trees_all_equal(jax.device_get(state), expected_state)


def test_importing_the_layers_leaves_xla_flags_alone():
  code = ("import os; os.environ['XLA_FLAGS'] = '--xla_dump_to=/nonexistent'; "
          "import jaxgen.layers as l, experiments.wgan_gp; "
          "print(os.environ['XLA_FLAGS']); print(l.configure_cpu()); "
          "print(os.environ['XLA_FLAGS'])")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  before, in_force, after = result.stdout.split("\n")[:3]
  assert before == "--xla_dump_to=/nonexistent"
  if jax.__version__ == "0.10.2":
    assert in_force == "True" and after == before + " " + "--xla_cpu_experimental_ynn_fusion_" \
        "type=-individual_convolution"
  else:
    assert in_force == "False" and after == before


def test_a_checkpoint_from_before_a_state_field_existed_restores(tmp_path):
  """GANState gained d_batch_stats (empty for WGAN-GP's critic); older checkpoints lack it."""
  config = tiny(tmp_path / "run", steps=2)
  wgan_gp.train(config)
  state, _ = final_state(config)
  old = {k: v for k, v in vars(state).items() if k != "d_batch_stats"}  # as an older jaxgen saved
  ckpts = checkpoint.Checkpoints(str(tmp_path / "old"))
  ckpts.save(2, old, {"data_position": 4})
  ckpts.close()
  ckpts = checkpoint.Checkpoints(str(tmp_path / "old"))
  restored, meta = ckpts.restore(state)
  chex.assert_trees_all_equal(restored, state)
  # A missing field that is not empty means another model's checkpoint: one clear error.
  with pytest.raises(ValueError, match="has no d_batch_stats: it belongs to another model"):
    ckpts.restore(state.replace(d_batch_stats={"BatchNorm_0": {"mean": np.zeros(2)}}))
  ckpts.close()


def test_chunks_end_where_the_loop_has_work():
  """training.chunks: calls of at most `size` steps that end at every multiple of each interval
  (so logs, grids and checkpoints fall after the same steps as in a loop of single steps), cover
  start .. total - 1 once, in order; size 1 is one step per call."""
  plan = training.chunks(3, 23, 5, 10, 0, 7)
  assert plan == [(3, 4), (7, 3), (10, 4), (14, 5), (19, 1), (20, 1), (21, 2)]
  for start, total, size, every in [(0, 100, 7, 9), (5, 6, 50, 3), (0, 1000, 50, 469)]:
    plan = training.chunks(start, total, size, every)
    steps = [first + i for first, count in plan for i in range(count)]
    assert steps == list(range(start, total))
    assert all(1 <= count <= size for _, count in plan)
    ends = {first + count for first, count in plan}
    assert {d for d in range(start + 1, total + 1) if d % every == 0} <= ends
  assert training.chunks(4, 7, 1) == [(4, 1), (5, 1), (6, 1)]
  assert training.chunks(7, 7, 5) == []
