"""The RealNVP program end to end: epoch rows in bits/dim, pictures, exact resume, sampling."""

import dataclasses
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from experiments import realnvp, sample
from jaxgen import checkpoint, data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(path, **overrides):
  settings = dict(dataset="blobs1", image_size=8, batch_size=4, steps=4, width=4, num_blocks=1,
                  log_every=1, sample_every=2, checkpoint_every=2, eval_examples=6,
                  workdir=str(path))
  return realnvp.Config(**{**settings, **overrides})


def latest(config):
  ckpts = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"))
  tree, meta = ckpts.restore_tree()
  ckpts.close()
  return tree, meta


def rows_of(config):
  return [json.loads(line) for line in open(os.path.join(config.workdir, "metrics.jsonl"))]


def test_a_tiny_run_writes_bits_per_dim_rows_and_pictures(tmp_path):
  config = tiny(tmp_path / "run")
  last = realnvp.train(config)
  rows = rows_of(config)
  steps = [r for r in rows if "split" not in r]
  assert [r["step"] for r in steps] == [1, 2, 3, 4]
  # bits/dim is the nll in nats per image over D log 2 (D = 64 pixels here)
  for r in steps:
    assert r["bits_per_dim"] == pytest.approx(r["nll"] / (64 * np.log(2.0)), rel=1e-5)
  evaluations = [(r["split"], r["step"]) for r in rows if "split" in r]
  assert evaluations == [("train", 4), ("test", 4)]
  assert 0 < last["bits_per_dim"] < 8 + 1  # at most a little above the uniform 8 bits
  assert sorted(os.listdir(os.path.join(config.workdir, "samples"))) == [
      "interpolation.png", "real.png", "step_000002.png", "step_000004.png"]
  saved = json.load(open(os.path.join(config.workdir, "config.json")))
  assert (saved["preset"], saved["num_scales"], saved["width"]) == ("mnist_cpu", 2, 4)


def test_resume_is_bit_identical(tmp_path):
  straight = tiny(tmp_path / "straight")
  realnvp.train(straight)
  interrupted = tiny(tmp_path / "resumed", steps=2)
  realnvp.train(interrupted)
  realnvp.train(dataclasses.replace(interrupted, steps=4))
  chex.assert_trees_all_equal(latest(straight)[0], latest(interrupted)[0])


def test_samples_come_from_a_realnvp_run(tmp_path):
  config = tiny(tmp_path / "run", steps=2)
  realnvp.train(config)
  images, settings, step = sample.draw_samples(config.workdir, 3, seed=1, chunk=2)
  assert images.shape == (3, 8, 8, 1) and step == 2
  # on the pixel grid: k / 255 of the blobs' [0, 1] range
  np.testing.assert_allclose(images * 255, np.round(images * 255), atol=1e-3)
  tree, _ = latest(config)
  latent_shape, generate = realnvp.sampler(dataclasses.replace(config, preset="mnist_cpu",
                                                               num_scales=2), (8, 8, 1))
  z = jax.random.normal(jax.random.split(jax.random.PRNGKey(1), 2)[0], (2, *latent_shape))
  np.testing.assert_allclose(images[:2], data.from_model_range(generate(tree, z), (0.0, 1.0)),
                             atol=1e-6)


def test_bad_flags_fail_in_one_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "experiments.realnvp", "--preset=glow",
                           f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode != 0 and lines == [
      "error: --preset must be one of mnist_cpu, mnist, cifar10, celeba64, got 'glow'"]
  assert not (tmp_path / "run").exists()
