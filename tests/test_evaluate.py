"""experiments/evaluate.py end to end on stand-in samples: blob metrics of a blob run, and the
classifier features of a labelled image dataset (the classifier trained once, then reused)."""

import json
import os

import numpy as np
import pytest

from experiments import evaluate, sample
from jaxgen import classifier, data, evaluation, metrics
from jaxgen.blobs import BlobSpec, blob_images


def _fake_run(path, dataset, image_shape, pixel_range, **extra):
  path.mkdir()
  settings = {"model": "wgan_gp", "dataset": dataset, "seed": 0, "image_shape": image_shape,
              "pixel_range": pixel_range, "blob_width": 1.5, "blob_amplitude": 1.0,
              "data_dir": "", **extra}
  with open(path / "config.json", "w") as f:
    json.dump(settings, f)
  return settings


def _stand_in_generator(monkeypatch, images, settings):
  """draw_samples as the lead's program gives it, from fixed images instead of a checkpoint."""
  def draw(workdir, num_samples, seed=0):
    assert len(images) >= num_samples
    return images[:num_samples], settings, 1234
  monkeypatch.setattr(sample, "draw_samples", draw)


def test_blob_run_gets_blob_metrics_beside_the_real_baseline(tmp_path, monkeypatch):
  run = tmp_path / "run"
  settings = _fake_run(run, "blobs1", [32, 32, 1], [0.0, 1.0])
  wider, _ = blob_images(np.random.default_rng(7), 300, BlobSpec(32, 1, 2.0, 1.0))
  _stand_in_generator(monkeypatch, wider, settings)
  result = evaluate.evaluate(str(run), num_samples=300, features="auto")
  assert result["features"]["kind"] == "none" and "scores" not in result
  assert result["step"] == 1234 and "seed 1000001" in result["reference"]
  blobs = result["blobs"]
  assert blobs["baseline"]["count_exact_fraction"] == 1.0
  assert blobs["baseline_vs_reference"]["width_w1"] < 1e-5
  assert blobs["generated"]["width_mean"] == pytest.approx(2.0, rel=1e-5)
  assert blobs["generated_vs_reference"]["width_w1"] == pytest.approx(0.5, rel=1e-4)
  with open(run / "evaluation.json") as f:
    assert json.load(f) == json.loads(json.dumps(result))
  assert os.path.getsize(run / "blob_histograms.png") > 1000
  text = evaluate.table(result)
  assert "blob width_mean" in text and "real baseline" in text


def _bar_images(rng, n):
  labels = rng.integers(0, 2, n)
  images = rng.integers(0, 40, (n, 32, 32, 1)).astype(np.uint8)
  images[labels == 0, 8:12, 4:28] = 250
  images[labels == 1, 4:28, 8:12] = 250
  return images, labels


@pytest.mark.filterwarnings("ignore:Frechet distance")  # 150 samples: dead units, singular
def test_labelled_images_get_classifier_scores(tmp_path, monkeypatch):
  images, labels = _bar_images(np.random.default_rng(0), 420)
  archive = tmp_path / "bars.npz"
  np.savez(archive, images=images, labels=labels)
  data_dir = str(tmp_path / "data")
  run = tmp_path / "run"
  settings = _fake_run(run, f"npz:{archive}", [32, 32, 1], [0.0, 255.0], data_dir=data_dir)
  generated = images[::-1].astype(np.float32)
  _stand_in_generator(monkeypatch, generated, settings)
  options = dict(num_samples=150, features="auto", classifier_epochs=1, kid_subsets=5,
                 kid_subset_size=50, batch_size=64)
  result = evaluate.evaluate(str(run), **options)
  features = result["features"]
  assert features["kind"] == "classifier" and features["dim"] == 128
  assert "disjoint" in result["baseline"]
  model, params, config = classifier.load(features["directory"])
  assert config["test_accuracy"] == features["test_accuracy"] and config["train_images"] == 378
  # The FID is the Frechet distance of the saved classifier's features, recomputed here.
  reference, _, _ = evaluation.real_sets(settings, 150, data_dir)
  to_features = lambda x: classifier.features(model, params,
                                              data.to_model_range(x, (0.0, 255.0)), 64)
  expected = metrics.fid_from_features(to_features(generated[:150]), to_features(reference))
  assert result["scores"]["fid"]["generated"] == pytest.approx(expected, rel=1e-9)
  for name in ("precision", "recall"):
    assert 0.0 <= result["scores"][name]["generated"] <= 1.0
  assert os.path.getsize(run / "feature_scatter.png") > 1000
  # A second evaluation reuses the saved classifier (its files are not rewritten).
  stamp = os.path.getmtime(os.path.join(features["directory"], classifier.CONFIG_FILE))
  evaluate.evaluate(str(run), **{**options, "features": "classifier"})
  assert os.path.getmtime(os.path.join(features["directory"], classifier.CONFIG_FILE)) == stamp


def test_bad_options_are_one_line_errors(tmp_path, monkeypatch):
  run = tmp_path / "run"
  settings = _fake_run(run, "blobs1", [32, 32, 1], [0.0, 1.0])
  _stand_in_generator(monkeypatch, np.zeros((10, 32, 32, 1), np.float32), settings)
  monkeypatch.delenv("JAXGEN_FID_WEIGHTS", raising=False)
  cases = [(dict(features="inception"), "no FID Inception weights given"),
           (dict(features="classifier"), "needs a labelled dataset"),
           (dict(features="pixels"), "--features must be one of"),
           (dict(num_samples=1), "at least 2"),
           (dict(num_sample=5), "unknown evaluation option")]
  for options, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      evaluate.evaluate(str(run), **options)
    assert "\n" not in str(error.value)
  with pytest.raises(FileNotFoundError, match="no config.json"):
    evaluate.evaluate(str(tmp_path / "absent"))
