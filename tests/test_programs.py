"""Every training program end to end on tiny settings: the files it writes, exact resume, sampling
from its run, and one-line errors. Program-specific behaviour is tested beside each program."""

import dataclasses
import importlib
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from experiments import sample
from jaxgen import checkpoint, data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# program -> (tiny settings, metrics it logs, data batches per step)
TINY = dict(dataset="blobs1", image_size=8, batch_size=4, steps=4, log_every=1, sample_every=2,
            checkpoint_every=2)
PROGRAMS = {
    "gan": (dict(latent_dim=3, d_steps=2, real_label="0.7,0.9"),
            ["d_loss", "g_loss", "combined_loss", "d_accuracy_real", "d_accuracy_fake", "d_real",
             "d_fake"], 2),
    "dcgan": (dict(latent_dim=3, width=4),
              ["d_loss", "g_loss", "combined_loss", "d_accuracy_real", "d_accuracy_fake"], 1),
    "wgan": (dict(latent_dim=3, width=4, n_critic=2),
             ["critic_loss", "generator_loss", "wasserstein", "combined_loss"], 2),
    "wgan_gp": (dict(latent_dim=3, width=4, n_critic=2),
                ["critic_loss", "generator_loss", "wasserstein", "gradient_penalty"], 2),
}


def tiny(name, path, **overrides):
  program = importlib.import_module(f"experiments.{name}")
  return program, program.Config(**{**TINY, **PROGRAMS[name][0], "workdir": str(path),
                                     **overrides})


def latest(config):
  ckpts = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"))
  tree, meta = ckpts.restore_tree()
  ckpts.close()
  return tree, meta


def rows_of(config):
  return [json.loads(line) for line in open(os.path.join(config.workdir, "metrics.jsonl"))]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_a_tiny_run_writes_every_file(tmp_path, name):
  program, config = tiny(name, tmp_path / "run")
  last = program.train(config)
  _, keys, per_step = PROGRAMS[name]
  saved = json.load(open(os.path.join(config.workdir, "config.json")))
  assert saved["model"] == name and saved["image_shape"] == [8, 8, 1]
  rows = rows_of(config)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for key in keys + ["steps_per_s", "images_per_s"]:
    assert all(np.isfinite(r[key]) for r in rows), key
  assert all(r["images_per_s"] == r["steps_per_s"] * per_step * 4 for r in rows)
  assert rows[-1][keys[0]] == last[keys[0]]
  samples = os.path.join(config.workdir, "samples")
  assert sorted(os.listdir(samples)) == ["interpolation.png", "real.png", "step_000002.png",
                                         "step_000004.png", "sweep.png"]
  # 8 rows of 8 images of 8x8 pixels with 1-pixel gaps, enlarged 16x; the sweep: one row per
  # latent dimension (3 here).
  assert np.asarray(Image.open(os.path.join(samples, "interpolation.png"))).shape == \
      (16 * 73, 16 * 73)
  assert np.asarray(Image.open(os.path.join(samples, "sweep.png"))).shape == (16 * 28, 16 * 73)
  assert Image.open(os.path.join(config.workdir, "loss_curves.png")).size[0] > 300
  tree, meta = latest(config)
  assert int(tree["step"]) == 4 and meta == {"data_position": 4 * per_step}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_resume_is_bit_identical(tmp_path, name):
  program, straight = tiny(name, tmp_path / "straight")
  program.train(straight)
  _, interrupted = tiny(name, tmp_path / "resumed", steps=2)
  program.train(interrupted)
  program.train(dataclasses.replace(interrupted, steps=4))
  a, meta_a = latest(straight)
  b, meta_b = latest(interrupted)
  chex.assert_trees_all_equal(a, b)
  assert meta_a == meta_b
  strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rows]
  assert strip(rows_of(straight)) == strip(rows_of(interrupted))


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_samples_come_from_any_run(tmp_path, name):
  program, config = tiny(name, tmp_path / "run", steps=2)
  program.train(config)
  images, settings, step = sample.draw_samples(config.workdir, 3, seed=1, chunk=2)
  assert images.shape == (3, 8, 8, 1) and step == 2 and settings["model"] == name
  # The generator of the checkpoint applied by hand to the same latents.
  tree, _ = latest(config)
  latent_shape, generate = program.sampler(config, (8, 8, 1))
  z = jax.random.normal(jax.random.split(jax.random.PRNGKey(1), 2)[0], (2, *latent_shape))
  np.testing.assert_allclose(images[:2], data.from_model_range(generate(tree, z), (0.0, 1.0)),
                             rtol=1e-5, atol=1e-6)
  out = str(tmp_path / "sweep.png")
  assert "sweep grid of 24 images" in sample.write_samples(config.workdir, 0, out, grid="sweep")


def test_weight_clipping_holds_after_training(tmp_path):
  program, config = tiny("wgan", tmp_path / "run", clip=0.003)
  program.train(config)
  tree, _ = latest(config)
  weights = np.concatenate([np.ravel(w) for w in jax.tree.leaves(tree["d_params"])])
  assert np.abs(weights).max() <= 0.003 and np.abs(weights).max() > 0.002


@pytest.mark.parametrize("name", ["dcgan", "wgan", "wgan_gp"])
def test_the_convolutional_programs_share_their_network_settings(name):
  config = importlib.import_module(f"experiments.{name}").Config
  resolved = lambda **kw: config(**kw).resolved()
  assert (resolved().width, resolved().latent_dim) == (32, 32)
  assert (resolved(dataset="blobs10").latent_dim, resolved(dataset="celeba").width) == (64, 64)
  assert (resolved(dataset="mnist", width=16).width, resolved(dataset="mnist").latent_dim) == \
      (16, 100)
  with pytest.raises(ValueError, match="power of two"):
    config(image_size=48)
  with pytest.raises(ValueError, match="--width must be 0"):
    config(width=-1)


def test_the_mlp_gan_takes_its_preset_optimizer_unless_told():
  from experiments import gan
  resolved = lambda **kw: gan.Config(**kw).resolved()
  assert (resolved().learning_rate, resolved().b1) == (2e-4, 0.5)
  assert (resolved(preset="deep_batchnorm").learning_rate,
          resolved(preset="deep_batchnorm").b1) == (1e-5, 0.9)
  assert resolved(preset="deep_batchnorm", b1=0.5).b1 == 0.5
  with pytest.raises(ValueError, match="--b1 must be in"):
    gan.Config(b1=1.0)


@pytest.mark.parametrize("name, flag, message", [
    ("gan", "--preset=huge", "--preset must be one of one_hidden_layer, deep_batchnorm"),
    ("gan", "--real_label=0.9,0.7", "--real_label must be a value or low,high within [0, 1]"),
    ("dcgan", "--loss=wasserstein", "--loss must be one of non_saturating, minimax"),
    ("dcgan", "--d_steps=0", "--d_steps must be positive"),
    ("wgan", "--clip=0", "--learning_rate and --clip must be positive"),
    ("wgan_gp", "--image_size=48", "power of two"),
])
def test_bad_flags_fail_in_one_line_before_any_work(tmp_path, name, flag, message):
  run = tmp_path / "run"
  result = subprocess.run([sys.executable, "-m", f"experiments.{name}", flag, f"--workdir={run}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), lines
  assert message in lines[0]
  assert not run.exists()
