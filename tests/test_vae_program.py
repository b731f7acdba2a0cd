"""The VAE program end to end: epoch rows per split, the analyses' pictures, exact resume,
sampling from its run, automatic settings and one-line errors."""

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

from experiments import sample, vae
from jaxgen import checkpoint, data, training
from jaxgen import vae as vae_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(path, **overrides):
  settings = dict(dataset="blobs1", image_size=8, batch_size=4, steps=6, latent_dim=3,
                  hidden_dims="4,8", log_every=1, sample_every=3, checkpoint_every=3,
                  eval_examples=10, workdir=str(path))
  return vae.Config(**{**settings, **overrides})


def rows_of(config):
  return [json.loads(line) for line in open(os.path.join(config.workdir, "metrics.jsonl"))]


def latest(config):
  ckpts = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"))
  tree, meta = ckpts.restore_tree()
  ckpts.close()
  return tree, meta


def test_a_tiny_run_writes_epoch_rows_and_every_picture(tmp_path):
  config = tiny(tmp_path / "run", iw_samples=4)
  last = vae.train(config)
  rows = rows_of(config)
  steps = [r for r in rows if "split" not in r]
  assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r[k]) for r in steps for k in ("neg_elbo", "recon", "kl")), steps
  # each step's neg_elbo is its recon plus its kl (beta = 1: also the loss)
  for r in steps:
    assert r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"], rel=1e-6)
  evaluations = [r for r in rows if r.get("split") in ("train", "test") and "epoch" in r]
  # blobs1 at batch 4 has 2500 whole batches per (10,000-image) epoch: one evaluation, at the end
  assert [(r["split"], r["step"]) for r in evaluations] == [("train", 6), ("test", 6)]
  assert evaluations[1]["epoch"] == round(6 / 2500, 3)
  assert last["neg_elbo"] == evaluations[1]["neg_elbo"]
  # the importance-sampled bound is tighter than the ELBO (higher log-likelihood)
  assert -last["log_likelihood"] <= last["neg_elbo"] + 1e-3
  samples = os.path.join(config.workdir, "samples")
  assert sorted(os.listdir(samples)) == [
      "interpolation.png", "interpolation_encoded.png", "manifold.png", "real.png",
      "reconstructions.png", "step_000003.png", "step_000006.png", "sweep.png"]
  # the manifold: 15 x 15 images of 8x8 with 1-pixel gaps, enlarged 16x
  assert np.asarray(Image.open(os.path.join(samples, "manifold.png"))).shape == (16 * 136,) * 2
  # reconstructions: 4 pairs of rows (inputs, reconstructions) of 8
  assert np.asarray(Image.open(os.path.join(samples, "reconstructions.png"))).shape == \
      (16 * 73, 16 * 73)
  tree, meta = latest(config)
  assert int(tree["step"]) == 6 and meta == {"data_position": 6}


def test_the_evaluation_is_the_mean_over_the_split(tmp_path):
  """split_means pads the last batch: its figure equals the per-example terms computed at once."""
  config = tiny(tmp_path / "run")
  config, _, source = training.setup(config, vae.MODEL)
  model = vae.network(config, source.image_shape)
  state = vae_lib.init_state(jax.random.PRNGKey(0), model, vae_lib.optimizer("adam"),
                             source.image_shape, config.likelihood)
  eval_fn = jax.jit(lambda p, x, k: vae_lib.eval_batch(p, x, k, model=model,
                                                       likelihood=config.likelihood))
  key = jax.random.PRNGKey(3)
  figures = training.split_means(lambda x, k: eval_fn(state.params, x, k), source, key,
                                 limit=10)  # batches of 4, 4, 2
  expected = []
  for i in range(3):
    images = source.eval_batch(i)[0]
    padded = np.zeros((4, *images.shape[1:]), np.float32)
    padded[:len(images)] = images
    terms = eval_fn(state.params, padded, jax.random.fold_in(key, i))
    expected.append(np.asarray(terms["neg_elbo"])[:min(4, 10 - 4 * i)])
  np.testing.assert_allclose(figures["neg_elbo"], np.concatenate(expected).mean(), rtol=1e-6)


def test_resume_is_bit_identical(tmp_path):
  straight = tiny(tmp_path / "straight")
  vae.train(straight)
  interrupted = tiny(tmp_path / "resumed", steps=3)
  vae.train(interrupted)
  vae.train(dataclasses.replace(interrupted, steps=6))
  a, _ = latest(straight)
  b, _ = latest(interrupted)
  chex.assert_trees_all_equal(a, b)
  strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rows]
  # the interrupted run also evaluated at its end (step 3); otherwise its rows are the same
  resumed = [r for r in strip(rows_of(interrupted)) if not (r["step"] == 3 and "split" in r)]
  assert strip(rows_of(straight)) == resumed


def test_steps_fused_per_call_train_as_single_steps_and_resume_exactly(tmp_path):
  """--steps_per_call=3 (calls (0,3) (3,1) (4,1) (5,3): each ends where a log row or checkpoint is
  due) trains what single steps train, writes the same rows, and resumes to the bit after an
  interruption that splits the calls differently ((0,2), then (2,2) (4,1) (5,3))."""
  mlp = dict(architecture="mlp", hidden_dims="8", steps=8, log_every=4, checkpoint_every=5,
             sample_every=8)
  single = tiny(tmp_path / "single", **mlp, steps_per_call=1)
  fused = tiny(tmp_path / "fused", **mlp, steps_per_call=3)
  interrupted = tiny(tmp_path / "resumed", **{**mlp, "steps": 2}, steps_per_call=3)
  for config in (single, fused, interrupted):
    vae.train(config)
  vae.train(dataclasses.replace(interrupted, steps=8))
  (a, _), (b, _), (c, _) = latest(single), latest(fused), latest(interrupted)
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)  # equal to the bit on the CPUs here
  chex.assert_trees_all_equal(b, c)
  strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rows]
  assert [r["step"] for r in rows_of(fused)] == [r["step"] for r in rows_of(single)] == \
      [4, 8, 8, 8]  # two log rows, the train and test evaluations
  for x, y in zip(strip(rows_of(single)), strip(rows_of(fused))):
    assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], rel=1e-5) for k in x)
  # the interrupted run also logged and evaluated at its end (step 2)
  assert strip(rows_of(fused)) == [r for r in strip(rows_of(interrupted)) if r["step"] != 2]


def test_steps_per_call_defaults_and_a_run_from_before_it(tmp_path):
  assert vae.Config(dataset="mnist").resolved().steps_per_call == 50
  assert vae.Config(dataset="mnist", architecture="conv").resolved().steps_per_call == 1
  assert vae.Config(dataset="blobs1").resolved().steps_per_call == 1
  config = tiny(tmp_path / "old", architecture="mlp", hidden_dims="8", steps=1)
  vae.train(config)
  path = os.path.join(config.workdir, "config.json")
  saved = json.load(open(path))
  assert saved["steps_per_call"] == 50
  del saved["steps_per_call"]  # a run written before the setting existed stepped one at a time
  json.dump(saved, open(path, "w"))
  vae.train(dataclasses.replace(config, steps=2))
  assert json.load(open(path))["steps_per_call"] == 1


def test_samples_come_from_a_vae_run(tmp_path):
  config = tiny(tmp_path / "run", steps=3)
  vae.train(config)
  images, settings, step = sample.draw_samples(config.workdir, 3, seed=1, chunk=2)
  assert images.shape == (3, 8, 8, 1) and step == 3 and settings["likelihood"] == \
      "gaussian_channel"
  tree, _ = latest(config)
  model = vae.network(dataclasses.replace(config, likelihood="gaussian_channel"), (8, 8, 1))
  z = jax.random.normal(jax.random.split(jax.random.PRNGKey(1), 2)[0], (2, 3))
  by_hand = vae_lib.generate(tree["params"], z, model=model, likelihood="gaussian_channel")
  np.testing.assert_allclose(images[:2], data.from_model_range(by_hand, (0.0, 1.0)), rtol=1e-5,
                             atol=1e-6)


def _automatic(**settings):
  c = vae.Config(**settings).resolved()
  return c.architecture, c.image_size, c.latent_dim, c.likelihood, c.hidden_dims, c.epochs


def test_automatic_settings_follow_the_dataset():
  assert _automatic(dataset="mnist") == ("mlp", 28, 20, "bernoulli", "400", 10)
  assert _automatic(dataset="mnist", architecture="conv") == (
      "conv", 32, 32, "bernoulli", "", 10)
  assert _automatic() == ("conv", 32, 4, "gaussian_channel", "", 40)
  assert _automatic(dataset="blobs10")[2] == 40
  assert _automatic(dataset="celeba") == ("conv", 64, 32, "gaussian_channel", "", 10)


@pytest.mark.parametrize("flag, message", [
    ("--architecture=resnet", "--architecture must be mlp or conv"),
    ("--likelihood=poisson", "likelihood='poisson'; use one of bernoulli"),
    ("--optimizer=sgd", "optimizer='sgd'; use 'adam' or 'rmsprop'"),
    ("--hidden_dims=400,x", "--hidden_dims must be comma-separated non-negative integers"),
    ("--manifold_dims=0", "--manifold_dims must be two different latent dimensions"),
    ("--beta=-1", "--beta, --iw_samples and --eval_examples non-negative"),
    ("--steps_per_call=-2", "--steps_per_call must be 0 (automatic) or positive"),
])
def test_bad_flags_fail_in_one_line_before_any_work(tmp_path, flag, message):
  run = tmp_path / "run"
  result = subprocess.run([sys.executable, "-m", "experiments.vae", flag, f"--workdir={run}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), lines
  assert message in lines[0]
  assert not run.exists()
