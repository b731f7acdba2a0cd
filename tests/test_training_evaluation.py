"""Evaluations during training (--eval_every): rows that recompute from the checkpoint, training
left bit-identical, the classifier trained once and only when asked, resume with new settings."""

import dataclasses
import os

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from experiments import dcgan, realnvp, sample, vae
from jaxgen import blob_metrics, classifier, data, evaluation, metrics, training
from test_programs import latest, rows_of  # the run's checkpoint and metrics.jsonl rows

# program -> tiny settings on 8x8 blobs
TINY = {
    dcgan: dict(latent_dim=3, width=4, steps=4, sample_every=2, checkpoint_every=2),
    vae: dict(latent_dim=3, hidden_dims="4,8", steps=4, sample_every=2, checkpoint_every=2,
              eval_examples=10),
    realnvp: dict(width=4, num_blocks=1, num_scales=1, steps=4, sample_every=2, checkpoint_every=2,
                  eval_examples=6),
}


def tiny(program, path, **overrides):
  return program.Config(**{**dict(dataset="blobs1", image_size=8, batch_size=4, log_every=1,
                                  workdir=str(path)), **TINY[program], **overrides})


def generated_by_hand(config):
  """The evaluation's generated images, from the run's latest checkpoint (as experiments.sample
  rebuilds its generator) and the latents' stream, in the data's pixel range."""
  generate, latent_shape, settings, _ = sample.load_sampler(config.workdir)
  chunks = -(-config.eval_samples // evaluation.GENERATE_CHUNK)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), evaluation.DURING_TRAINING_STREAM)
  z = jax.random.normal(key, (chunks * evaluation.GENERATE_CHUNK, *latent_shape))
  images = np.asarray(generate(z))[:config.eval_samples]
  return data.from_model_range(images, settings["pixel_range"])


@pytest.mark.parametrize("program", [dcgan, vae, realnvp], ids=lambda p: p.MODEL)
def test_evaluations_score_the_checkpoint_and_leave_training_bit_identical(tmp_path, program):
  plain = tiny(program, tmp_path / "plain")
  program.train(plain)
  # 70 samples: two generator calls of 64, the second one cut short
  scored = tiny(program, tmp_path / "scored", eval_every=3, eval_samples=70)
  program.train(scored)
  strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_per_s")}
                        for r in rows if "eval" not in r]
  assert strip(rows_of(scored)) == strip(rows_of(plain))  # to the bit
  a, meta_a = latest(plain)
  b, meta_b = latest(scored)
  chex.assert_trees_all_equal(a, b)
  assert meta_a == meta_b
  evals = [r for r in rows_of(scored) if "eval" in r]
  assert [(r["step"], r["eval"]) for r in evals] == [(3, True), (4, True)]  # and the last
  # The last row, computed again from the checkpoint with blob_metrics directly.
  spec = evaluation.blob_spec({"dataset": "blobs1", "image_shape": [8, 8, 1]})
  reference, baseline, _ = evaluation.real_sets(
      {"dataset": "blobs1", "image_shape": [8, 8, 1], "pixel_range": [0.0, 1.0]}, 70)
  found = blob_metrics.detect(generated_by_hand(scored), spec)
  found_reference = blob_metrics.detect(reference, spec)
  summary = blob_metrics.summary(found, spec)
  difference = blob_metrics.difference(found, found_reference)
  for key in evaluation.BLOB_SUMMARY_KEYS:
    np.testing.assert_allclose(evals[-1][f"blob_{key}"], summary[key], rtol=1e-6, atol=1e-9)
  for key in evaluation.BLOB_DIFFERENCE_KEYS:
    np.testing.assert_allclose(evals[-1][f"blob_{key}"], difference[key], rtol=1e-6, atol=1e-9)
  # Beside each: real draws against the reference; one blob in every real image.
  assert evals[0]["baseline_blob_count_exact_fraction"] == 1.0
  assert evals[0]["baseline_blob_count_tv"] == 0.0
  assert all(r["baseline_blob_width_w1"] == evals[0]["baseline_blob_width_w1"] for r in evals)
  assert Image.open(os.path.join(scored.workdir, "eval_curves.png")).size[0] > 1000  # 6 panels


def test_the_step_is_traced_once_with_evaluations(tmp_path, monkeypatch):
  def counted(*args):
    step = dcgan.gan_training.gan_step(*args)

    def traced(state, real, key, *, axis_name):  # chex counts traces of a plain function
      return step(state, real, key, axis_name=axis_name)
    return chex.assert_max_traces(traced, n=1)

  monkeypatch.setattr(dcgan, "step", counted)
  config = tiny(dcgan, tmp_path / "run", steps=2, eval_every=1, eval_samples=10)
  dcgan.train(config)
  assert sum("eval" in r for r in rows_of(config)) == 2


def test_a_run_takes_up_evaluations_on_resume(tmp_path):
  """Evaluation settings change what a run writes, not what it computes: they may change."""
  straight = tiny(dcgan, tmp_path / "straight", eval_every=2, eval_samples=20)
  dcgan.train(straight)
  first = tiny(dcgan, tmp_path / "resumed", steps=2)
  dcgan.train(first)
  dcgan.train(dataclasses.replace(first, steps=4, eval_every=2, eval_samples=20))
  strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rows]
  resumed = strip(rows_of(first))
  assert [r["step"] for r in resumed if "eval" in r] == [4]
  assert resumed == [r for r in strip(rows_of(straight)) if r["step"] != 2 or "eval" not in r]


def _bar_digits(path, n=420):
  """A labelled greyscale dataset in an .npz: horizontal bars (label 0) and vertical (label 1)."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, n)
  images = rng.integers(0, 40, (n, 32, 32, 1)).astype(np.uint8)
  images[labels == 0, 8:12, 4:28] = 250
  images[labels == 1, 4:28, 8:12] = 250
  np.savez(path, images=images, labels=labels)
  return f"npz:{path}"


@pytest.mark.filterwarnings("ignore:Frechet distance")  # 100 samples: dead units, singular
@pytest.mark.filterwarnings("ignore:only 100 samples")
def test_labelled_greyscale_data_get_classifier_scores(tmp_path):
  dataset = _bar_digits(tmp_path / "bars.npz")
  data_dir = str(tmp_path / "data")
  settings = dict(dataset=dataset, image_size=32, data_dir=data_dir, steps=2, sample_every=2,
                  checkpoint_every=2)
  plain = tiny(dcgan, tmp_path / "plain", **settings)
  dcgan.train(plain)
  run_settings = {"dataset": dataset, "image_shape": [32, 32, 1], "pixel_range": [0.0, 255.0]}
  directory = evaluation.classifier_directory(run_settings, data_dir)
  assert not os.path.exists(directory)  # no evaluations, no classifier
  scored = tiny(dcgan, tmp_path / "scored", eval_every=2, eval_samples=100, **settings)
  dcgan.train(scored)
  model, params, saved = classifier.load(directory)  # trained once, for the evaluations
  assert saved["epochs"] == evaluation.CLASSIFIER_EPOCHS and saved["train_images"] == 378
  (row,) = [r for r in rows_of(scored) if "eval" in r]
  # The FID of the saved classifier's features, recomputed: generated images rounded to the
  # data's 256 levels, against the training split's reference images.
  reference, baseline, _ = evaluation.real_sets(run_settings, 100, data_dir)
  generated = np.round(generated_by_hand(scored))
  features = lambda x: classifier.features(model, params, data.to_model_range(x, (0.0, 255.0)),
                                           evaluation.FEATURE_BATCH)
  assert row["fid"] == pytest.approx(metrics.fid_from_features(features(generated),
                                                               features(reference)), rel=1e-9)
  assert row["baseline_fid"] == pytest.approx(
      metrics.fid_from_features(features(baseline), features(reference)), rel=1e-9)
  assert row["baseline_fid"] < row["fid"]  # two steps of training are far from the data
  for name in ("precision", "recall", "baseline_precision", "baseline_recall"):
    assert 0.0 <= row[name] <= 1.0


def test_data_without_labels_are_not_scored_and_say_so_once(tmp_path, capsys):
  path = tmp_path / "noise.npz"
  np.savez(path, images=np.random.default_rng(0).integers(0, 255, (64, 8, 8, 1), np.uint8))
  config = tiny(dcgan, tmp_path / "run", dataset=f"npz:{path}", data_dir=str(tmp_path / "data"),
                eval_every=1, steps=2)
  dcgan.train(config)
  assert not any("eval" in r for r in rows_of(config))
  assert capsys.readouterr().err.count("--eval_every: nothing to score") == 1
  assert not os.path.exists(os.path.join(config.workdir, "eval_curves.png"))


@pytest.mark.parametrize("overrides, message", [
    (dict(eval_every=-1), "--eval_every must be 0"),
    (dict(eval_samples=1), "--eval_samples at least 2"),
])
def test_bad_evaluation_settings_are_clear_errors(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    tiny(dcgan, tmp_path / "run", **overrides)
  with pytest.raises(ValueError, match=message):
    training.Settings(**overrides)
