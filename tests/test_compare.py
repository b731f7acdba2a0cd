"""experiments.compare: models trained to the same number of generator updates, scored, and the
report's table equal to each run's own evaluation."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from experiments import compare

# eval_examples: the VAE's own end-of-run likelihood rows on 8 examples, not 10,000 (a GAN has
# no such setting and is left alone).
GAN_TINY = dict(image_size=16, batch_size=4)
TINY = dict(GAN_TINY, eval_examples=8)


def same(a: dict, b: dict) -> bool:
  """Equal, NaN equal to NaN (an untrained model's images can have no fitted blob)."""
  return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_two_models_at_equal_updates_and_a_report_of_their_own_scores(tmp_path):
  root = str(tmp_path / "cmp")
  summaries = compare.run(["wgan_gp", "vae"], "blobs1", updates=3, num_samples=40, seed=1,
                          root=root, **TINY)
  folder = os.path.join(root, "blobs1")
  for model, latent in (("wgan_gp", 32), ("vae", 4)):  # the study's latent sizes
    saved = json.load(open(os.path.join(folder, model, "config.json")))
    assert (saved["steps"], saved["latent_dim"], saved["seed"]) == (3, latent, 1)
    scored = json.load(open(os.path.join(folder, model, "evaluation.json")))
    assert scored["step"] == 3 and same(scored["blobs"]["generated"], summaries[model])
    assert same(scored["blobs"]["reference"], summaries["real"])
  assert summaries["real"]["count_exact_fraction"] == 1.0  # the truth: one blob in every image
  rows = [line for line in open(os.path.join(folder, "report.md")) if line.startswith("| ")]
  assert [r.split("|")[1].strip() for r in rows[1:]] == ["real", "wgan_gp", "vae"]
  for row, name in zip(rows[1:], ["real", "wgan_gp", "vae"]):
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert cells[0] == f"{summaries[name]['count_exact_fraction']:.1%}"
    assert cells[3] == f"{summaries[name]['width_median']:.2f}"
  picture = np.asarray(Image.open(os.path.join(folder, "samples.png")))
  one = 8 * (16 + 1) + 1  # an 8x8 grid of 16-pixel images with 1-pixel gaps
  assert picture.shape[:2] == (2 * one, 2 * (3 * one + 2 * 4))  # three grids, two gaps, scale 2

  # Run again: the runs are loaded (at 3 updates already), not trained again.
  mtime = os.path.getmtime(os.path.join(folder, "wgan_gp", "checkpoints", "3"))
  again = compare.run(["wgan_gp"], "blobs1", updates=3, num_samples=40, seed=1, root=root,
                      **GAN_TINY)
  assert same(again["wgan_gp"], summaries["wgan_gp"])
  assert os.path.getmtime(os.path.join(folder, "wgan_gp", "checkpoints", "3")) == mtime
  with pytest.raises(ValueError, match="trained to 3 updates, beyond --updates=2"):
    compare.run(["wgan_gp"], "blobs1", updates=2, num_samples=40, seed=1, root=root, **GAN_TINY)
  with pytest.raises(ValueError, match="no compared model has the setting 'eval_examples'"):
    compare.run(["wgan_gp"], "blobs1", updates=3, num_samples=40, seed=1, root=root, **TINY)


@pytest.mark.parametrize("models,updates,message", [
    (["wgan_gp", "flow"], 10, "flow is not one of"),
    (["vae", "vae"], 10, "names a model twice"),
    (["vae"], 0, "--updates must be positive")])
def test_bad_arguments_are_one_line_errors(models, updates, message):
  with pytest.raises(ValueError, match=message):
    compare.check(models, updates, 100)
