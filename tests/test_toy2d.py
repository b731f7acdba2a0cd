"""The 2-D toys: samplers against their stated geometry, the coverage rule on hand-made points,
the losses against closed forms, one update of each objective, the step, and the program."""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from experiments import toy2d as program
from jaxgen import parallel, toy2d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ring_and_grid_are_the_published_toy_geometry():
  ring = toy2d.mixture("ring8")
  np.testing.assert_allclose(np.linalg.norm(ring.centres, axis=1), 2 / 1.414)
  angles = np.sort(np.mod(np.arctan2(ring.centres[:, 1], ring.centres[:, 0]), 2 * np.pi))
  np.testing.assert_allclose(angles, np.arange(8) * np.pi / 4, atol=1e-12)
  assert ring.std == pytest.approx(0.02 / 1.414)
  grid = toy2d.mixture("grid25")
  assert grid.centres.shape == (25, 2) and grid.std == pytest.approx(0.05 / 2.828)
  for axis in (0, 1):
    np.testing.assert_allclose(np.unique(grid.centres[:, axis]), 2 * np.arange(-2, 3) / 2.828)
  np.testing.assert_array_equal(toy2d.mixture("bimodal1d").centres, [[-1.0], [1.0]])


@pytest.mark.parametrize("name", toy2d.DATASETS)
def test_sampler_statistics(name):
  data = toy2d.mixture(name)
  n = 40_000
  points = data.sample(np.random.default_rng(0), n)
  assert points.shape == (n, data.dim) and points.dtype == np.float32
  nearest = np.argmin(np.linalg.norm(points[:, None] - data.centres[None], axis=-1), axis=1)
  counts = np.bincount(nearest, minlength=len(data.centres))
  # equal weights: binomial counts within 5 standard deviations of n / modes
  p = 1 / len(data.centres)
  assert np.all(np.abs(counts - n * p) < 5 * np.sqrt(n * p * (1 - p))), counts
  for mode, centre in enumerate(data.centres):
    own = points[nearest == mode]
    # each mode's mean is its centre (5 standard errors) and its per-axis std the stated one
    np.testing.assert_array_less(np.abs(own.mean(0) - centre), 5 * data.std / np.sqrt(len(own)))
    np.testing.assert_allclose(own.std(0), data.std, rtol=0.1)
  # the explicit generator decides the points
  np.testing.assert_array_equal(points, data.sample(np.random.default_rng(0), n))
  assert not np.array_equal(points[:10], data.sample(np.random.default_rng(1), 10))


def test_unknown_dataset_is_a_one_line_error():
  with pytest.raises(ValueError, match=r"--dataset must be one of ring8, grid25, bimodal1d"):
    toy2d.mixture("grid26")


def test_coverage_of_hand_made_samples():
  data = toy2d.mixture("grid25")
  centres, std = data.centres, data.std
  every_mode = np.repeat(centres, 20, axis=0)
  c = toy2d.mode_coverage(every_mode, centres, std)
  assert (c["modes_covered"], c["modes"], c["high_quality_fraction"]) == (25, 25, 1.0)
  assert c["counts"] == [20] * 25
  # all 2500 samples on one mode: one mode covered, every sample of high quality
  one_mode = np.repeat(centres[7:8], 2500, axis=0) + 0.5 * std
  c = toy2d.mode_coverage(one_mode, centres, std)
  assert c["modes_covered"] == 1 and c["high_quality_fraction"] == 1.0 and c["counts"][7] == 2500
  # half-way between neighbouring modes: nothing covered, nothing of high quality
  spacing = 2 / 2.828
  between = centres[:20] + np.array([spacing / 2, 0.0])
  c = toy2d.mode_coverage(between, centres, std)
  assert c["modes_covered"] == 0 and c["high_quality_fraction"] == 0.0
  # the 3-std radius and the 20-sample threshold are the boundaries
  inside, outside = centres[0] + [2.99 * std, 0], centres[0] + [0, 3.01 * std]
  c = toy2d.mode_coverage(np.stack([inside] * 19 + [outside]), centres, std)
  assert c["modes_covered"] == 0 and c["counts"][0] == 19
  assert c["high_quality_fraction"] == pytest.approx(0.95)
  c = toy2d.mode_coverage(np.stack([inside] * 20 + [outside] * 30), centres, std)
  assert c["modes_covered"] == 1 and c["high_quality_fraction"] == pytest.approx(0.4)


def test_gan_losses_closed_forms_and_saturation():
  zero = jnp.zeros(4)
  log2 = np.log(2.0)
  np.testing.assert_allclose(toy2d.gan_discriminator_loss(zero, zero), 2 * log2, rtol=1e-6)
  np.testing.assert_allclose(toy2d.gan_minimax_generator_loss(zero), -log2, rtol=1e-6)
  np.testing.assert_allclose(toy2d.gan_nonsaturating_generator_loss(zero), log2, rtol=1e-6)
  # From logits: finite where log(sigmoid(.)) of float32 underflows to -inf.
  far = jnp.full(3, 200.0)
  np.testing.assert_allclose(toy2d.gan_nonsaturating_generator_loss(-far), 200.0, rtol=1e-6)
  np.testing.assert_allclose(toy2d.gan_discriminator_loss(-far, far), 400.0, rtol=1e-6)
  with np.errstate(divide="ignore"):
    assert np.isinf(-np.log(np.asarray(jax.nn.sigmoid(-far)))).all()
  # d/ds of the minimax loss is -sigmoid(s): it vanishes where D rejects a sample (s << 0),
  # the non-saturating one's is -sigmoid(-s), near -1 there (Goodfellow et al. 2014, sec. 3).
  s = jnp.array([-10.0, 0.0, 3.0])
  grad = lambda f: jax.vmap(jax.grad(lambda v: f(v[None])))(s)
  np.testing.assert_allclose(grad(toy2d.gan_minimax_generator_loss), -jax.nn.sigmoid(s),
                             rtol=1e-5)
  np.testing.assert_allclose(grad(toy2d.gan_nonsaturating_generator_loss), -jax.nn.sigmoid(-s),
                             rtol=1e-5)
  np.testing.assert_allclose(toy2d.wasserstein_critic_loss(jnp.array([1.0, 3.0]),
                                                           jnp.array([0.5, 0.5])), -1.5)


def test_wgan_gp_penalty_of_the_toy_critic_by_hand():
  # the logged grad_norm is the mean of ||d s / d x|| at x_hat, here from finite differences
  critic = toy2d.Critic(width=8, depth=2)
  params = critic.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))["params"]
  real = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
  fake = jax.random.normal(jax.random.PRNGKey(2), (5, 2))
  eps = jax.random.uniform(jax.random.PRNGKey(3), (5, 1))
  loss, metrics = toy2d.discriminator_loss(params, real, fake, eps, critic=critic,
                                           objective="wgan_gp", gp_weight=10.0)
  x_hat = np.asarray(eps * real + (1 - eps) * fake, np.float64)
  f = lambda x: np.asarray(critic.apply({"params": params}, jnp.asarray(x, jnp.float32)),
                           np.float64)
  h = 1e-3
  grads = np.stack([(f(x_hat + h * e) - f(x_hat - h * e)) / (2 * h) for e in np.eye(2)], 1)
  norms = np.linalg.norm(grads, axis=1)
  np.testing.assert_allclose(metrics["grad_norm"], norms.mean(), rtol=2e-3)
  np.testing.assert_allclose(metrics["gradient_penalty"], np.mean((norms - 1) ** 2), rtol=5e-3,
                             atol=1e-5)
  np.testing.assert_allclose(loss, -metrics["wasserstein"] + 10.0 * metrics["gradient_penalty"],
                             rtol=1e-5)


WIDTH, BATCH = 32, 64


def _nets():
  return toy2d.Generator(2, width=WIDTH), toy2d.Critic(width=WIDTH)


@pytest.mark.parametrize("objective", toy2d.OBJECTIVES)
def test_one_update_of_each_objective_lowers_its_loss(objective):
  generator, critic = _nets()
  # Adam's first step is lr * sign(gradient): a descent step at the scale of each loss,
  # including the tiny one of a clipped critic
  optimizer = optax.adam(1e-4)
  state = toy2d.init_state(jax.random.PRNGKey(0), generator=generator, critic=critic,
                           g_optimizer=optimizer, d_optimizer=optimizer)
  d_params = state.d_params
  if objective == "wgan_clip":  # start inside the box, as every step after the first does
    d_params = toy2d.clip_weights(d_params, 0.01)
  real = jnp.asarray(toy2d.mixture("grid25").sample(np.random.default_rng(0), BATCH))
  z = jax.random.normal(jax.random.PRNGKey(1), (BATCH, 2))
  eps = jax.random.uniform(jax.random.PRNGKey(2), (BATCH, 1))
  kw = dict(critic=critic, objective=objective, gp_weight=0.1)
  fake = generator.apply({"params": state.g_params}, z)
  before, _ = toy2d.discriminator_loss(d_params, real, fake, eps, **kw)
  new_d, _, metrics = jax.jit(functools.partial(
      toy2d.critic_update, generator=generator, d_optimizer=optimizer, clip=0.01, **kw))(
          d_params, optimizer.init(d_params), state.g_params, real, z, eps)
  after, _ = toy2d.discriminator_loss(new_d, real, fake, eps, **kw)
  chex.assert_tree_all_finite((new_d, metrics))
  np.testing.assert_allclose(metrics["d_loss"], before, rtol=1e-5)  # logged: before the update
  assert after < before, (objective, before, after)
  if objective == "wgan_clip":
    assert max(float(jnp.abs(w).max()) for w in jax.tree.leaves(new_d)) <= 0.01
  g_kw = dict(generator=generator, critic=critic, objective=objective)
  g_before, _ = toy2d.generator_loss(state.g_params, new_d, z, **g_kw)
  new_g, _, g_metrics = toy2d.generator_update(state.g_params, optimizer.init(state.g_params),
                                               new_d, z, g_optimizer=optimizer, **g_kw)
  g_after, _ = toy2d.generator_loss(new_g, new_d, z, **g_kw)
  chex.assert_tree_all_finite((new_g, g_metrics))
  assert g_after < g_before, (objective, g_before, g_after)


def _step(objective, axis_name=None):
  generator, critic = _nets()
  g_opt, d_opt = toy2d.optimizers(objective, 1e-3)
  state = toy2d.init_state(jax.random.PRNGKey(0), generator=generator, critic=critic,
                           g_optimizer=g_opt, d_optimizer=d_opt)
  step = functools.partial(toy2d.train_step, generator=generator, critic=critic,
                           objective=objective, g_optimizer=g_opt, d_optimizer=d_opt,
                           axis_name=axis_name)
  return state, step


def _real(n_critic, steps=3):
  data = toy2d.mixture("ring8")
  return data.sample(np.random.default_rng(5), steps * n_critic * BATCH).reshape(
      steps, n_critic, BATCH, 2)


def test_step_traces_once_updates_both_networks_and_repeats():
  state, step_fn = _step("wgan_gp")
  def traced(state, real, key):
    return step_fn(state, real, key)
  step = jax.jit(chex.assert_max_traces(traced, n=1))
  real = _real(2)
  key = jax.random.PRNGKey(3)
  states = []
  for _ in range(2):
    s = state
    for i in range(3):
      s, metrics = step(s, real[i], key)
    states.append(s)
  assert int(states[0].step) == 3
  chex.assert_trees_all_equal(states[0], states[1])  # same keys and data: the same run
  for name in ("g_params", "d_params"):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), getattr(state, name),
                           getattr(states[0], name))
    if name == "d_params":
      # a Wasserstein critic is blind to a constant added to it: the output bias never moves
      assert not changed["Dense_3"].pop("bias")
    assert all(jax.tree.leaves(changed)), name
  assert set(metrics) == {"d_loss", "g_loss", "wasserstein", "gradient_penalty", "grad_norm"}
  # a different base key draws other noise
  other, _ = step(state, real[0], jax.random.PRNGKey(4))
  assert not np.array_equal(other.g_params["Dense_0"]["kernel"],
                            step(state, real[0], key)[0].g_params["Dense_0"]["kernel"])


def test_two_devices_equal_one_device():
  devices = jax.local_devices()
  assert len(devices) == 2, "conftest emulates 2 CPU devices"
  objective = "wgan_gp"  # the GANs' step is the same code with one critic update
  real = _real(2, steps=2)
  key = jax.random.PRNGKey(7)
  results = []
  for n in (1, 2):
    state, step = _step(objective, axis_name=parallel.AXIS)
    step = jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None), devices=devices[:n])
    replicated = parallel.replicate(state, devices[:n])
    for i in range(2):
      replicated, metrics = step(replicated, parallel.shard(real[i], n, axis=1), key)
    results.append((parallel.unreplicate(replicated), parallel.unreplicate(metrics)))
  (one, m1), (two, m2) = results
  chex.assert_trees_all_close(one, two, rtol=2e-4, atol=2e-5)
  chex.assert_trees_all_close(m1, m2, rtol=2e-4, atol=2e-5)


def _tiny(path, **overrides):
  settings = dict(dataset="ring8", steps=4, batch_size=16, width=8, depth=2, n_critic=2,
                  log_every=2, workdir=str(path))
  return program.Config(**{**settings, **overrides})


def test_tiny_run_writes_report_results_and_figures(tmp_path):
  config = _tiny(tmp_path / "run")
  summary = program.train(config)
  run = config.workdir
  assert list(summary) == list(toy2d.OBJECTIVES)
  results = json.load(open(os.path.join(run, "results.json")))
  report = open(os.path.join(run, "report.md")).read()
  rows = [line for line in report.splitlines() if line.startswith("| ") and "/ 8 |" in line]
  assert [r.split(" | ")[0][2:] for r in rows] == list(toy2d.OBJECTIVES)
  for model, row in zip(toy2d.OBJECTIVES, rows):
    c = results[model]["coverage"]
    assert f"| {c['modes_covered']} / 8 | {c['high_quality_fraction']:.3f} |" in row
    assert 0 <= c["modes_covered"] <= 8 and sum(c["counts"]) <= toy2d.EVAL_SAMPLES
    assert np.isfinite(results[model]["final_losses"]["d_loss"])
  metrics = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
  assert [(r["model"], r["step"]) for r in metrics] == [
      (m, s) for m in toy2d.OBJECTIVES for s in (2, 4)]
  # the final row's losses are the report's
  last = {r["model"]: r for r in metrics if r["step"] == 4}
  assert all(results[m]["final_losses"]["g_loss"] == last[m]["g_loss"] for m in last)
  width, _ = Image.open(os.path.join(run, "samples.png")).size
  assert width > 4 * 300  # one panel per model
  assert Image.open(os.path.join(run, "coverage.png")).size[0] > 500
  assert json.load(open(os.path.join(run, "config.json")))["dataset"] == "ring8"


def test_one_dimensional_run_with_two_models(tmp_path):
  config = _tiny(tmp_path / "run1d", dataset="bimodal1d", models="gan_minimax, gan_nonsaturating")
  summary = program.train(config)
  assert list(summary) == ["gan_minimax", "gan_nonsaturating"]
  assert all(r["coverage"]["modes"] == 2 for r in summary.values())
  assert os.path.exists(os.path.join(config.workdir, "samples.png"))


@pytest.mark.parametrize("overrides, message", [
    (dict(models="gan"), "--models names 'gan'"),
    (dict(models=" , "), "--models is empty"),
    (dict(models="wgan_gp,wgan_gp"), "names a model twice"),
    (dict(dataset="moons"), "--dataset must be one of"),
    (dict(steps=0), "--steps must be positive"),
    (dict(clip=0.0), "--clip positive"),
])
def test_bad_settings_are_one_line_errors(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    _tiny(tmp_path, **overrides)


def test_bad_flag_fails_in_one_line_before_training(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.toy2d", "--models=wgan", f"--workdir={tmp_path}/x"],
      cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
      timeout=60)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      "error: --models names 'wgan'; choose from gan_minimax, gan_nonsaturating, wgan_clip, "
      "wgan_gp"]
  assert not os.path.exists(f"{tmp_path}/x")
