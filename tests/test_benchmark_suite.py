"""The seeded benchmark suite: the same case twice gives the same quality numbers, to the bit."""

import io
import json

import pytest

from experiments import benchmark


def test_a_suite_case_repeats_its_quality_numbers_exactly(tmp_path):
  runs = []
  for name in ("first", "second"):
    out = io.StringIO()
    (result,) = benchmark.run_suite(["dcgan_blobs1"], str(tmp_path / name), scale=0.005,
                                    num_samples=60, out=out)
    assert json.loads(out.getvalue())["case"] == "dcgan_blobs1"  # one JSON line per case
    runs.append(result)
  quality = [{k: v for k, v in r.items() if k not in benchmark.SPEED_KEYS} for r in runs]
  assert quality[0]["steps"] == 2 and quality[0]["seed"] == benchmark.SUITE_SEED
  assert "blob_count_exact_fraction" in quality[0] and "blob_width_w1" in quality[0]
  assert repr(quality[0]) == repr(quality[1])  # repr: NaN (no blob fitted) equals NaN too
  assert all(r["images_per_s"] > 0 and r["train_s"] > 0 for r in runs)
  table = benchmark.suite_table(runs)
  assert table.count("| dcgan_blobs1 | 2 |") == 2 and "blob_count_tv" in table


def test_the_suite_refuses_what_it_cannot_run_in_one_line(tmp_path):
  with pytest.raises(ValueError, match="unknown suite case 'gan_blobs'; choose from"):
    benchmark.run_suite(["gan_blobs"], str(tmp_path))
  (tmp_path / "dcgan_blobs1").mkdir()
  with pytest.raises(ValueError, match="exists: the suite trains from scratch"):
    benchmark.run_suite(["dcgan_blobs1"], str(tmp_path), out=io.StringIO())
  (skipped,) = benchmark.run_suite(["dcgan_mnist"], str(tmp_path), out=io.StringIO())
  assert skipped == {"case": "dcgan_mnist",
                     "skipped": "needs --data_dir with the dataset prepared"}


def test_the_step_flop_count_is_xla_s_count_of_the_compiled_program():
  import jax
  import jax.numpy as jnp
  a, b = jnp.ones((64, 96)), jnp.ones((96, 32))
  compiled = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
  assert benchmark.compiled_gflop(compiled) == pytest.approx(2 * 64 * 96 * 32 / 1e9, rel=1e-6)
