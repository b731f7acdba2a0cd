"""Mode collapse on 2-D toys: GAN (minimax and non-saturating), WGAN with clipping and WGAN-GP
trained side by side on the same data and seeds (jaxgen.toy2d has the losses and the rules).

    python -m experiments.toy2d --dataset=grid25 --steps=3000 --workdir=runs/toy2d_grid25
    python -m experiments.toy2d --dataset=ring8 --models=gan_nonsaturating,wgan_gp

Writes to --workdir: config.json, metrics.jsonl (one row per model and logged step, with the
coverage of 2500 fresh samples), results.json, report.md (the table it prints), samples.png (one
panel per model: samples over the data on the critic's contours) and coverage.png (modes covered
and high-quality fraction against the step). A rerun in the same --workdir starts afresh.
"""

import dataclasses
import functools
import os
import sys
import time

from absl import app

from jaxgen import toy2d
from jaxgen.flags import define_flags, from_flags, setting

SCORE_LABELS = {"gan_minimax": "D(x)", "gan_nonsaturating": "D(x)", "wgan_clip": "critic s(x)",
                "wgan_gp": "critic s(x)"}


@dataclasses.dataclass(frozen=True)
class Config:
  dataset: str = setting("grid25", "ring8 | grid25 | bimodal1d")
  steps: int = setting(3000, "generator updates per model")
  seed: int = setting(0, "seed of initialisation, noise and data: the same for every model")
  workdir: str = setting("runs/toy2d", "where the run's files go")
  models: str = setting(",".join(toy2d.OBJECTIVES), "comma-separated models to train, from "
                        + " | ".join(toy2d.OBJECTIVES))
  batch_size: int = setting(toy2d.BATCH_SIZE, "points per batch")
  width: int = setting(toy2d.WIDTH, "units per hidden layer of both networks")
  depth: int = setting(toy2d.DEPTH, "hidden layers of both networks")
  n_critic: int = setting(5, "critic updates per generator update (WGANs)")
  gan_d_steps: int = setting(1, "discriminator updates per generator update (GANs: k)")
  gp_weight: float = setting(0.1, "WGAN-GP's lambda (the paper's toy code: 0.1; its text: 10)")
  clip: float = setting(0.01, "WGAN's weight clipping bound c")
  adam_learning_rate: float = setting(1e-4, "Adam's learning rate (GANs and WGAN-GP)")
  rmsprop_learning_rate: float = setting(5e-5, "RMSprop's learning rate (WGAN with clipping)")
  lr_decay: bool = setting(False, "decay both learning rates linearly to 0 over the run (as "
                           "WGAN-GP's CIFAR-10 runs); sharper samples at the end")
  log_every: int = setting(250, "steps between metrics rows (each measures coverage)")

  def __post_init__(self):
    for name in ("steps", "batch_size", "width", "depth", "n_critic", "gan_d_steps",
                 "log_every"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    for name in ("adam_learning_rate", "rmsprop_learning_rate"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
    if self.gp_weight < 0 or self.clip <= 0:
      raise ValueError(f"--gp_weight must be non-negative and --clip positive, got "
                       f"{self.gp_weight} and {self.clip}")
    toy2d.mixture(self.dataset)
    if not self.model_list:
      raise ValueError("--models is empty; name at least one of " + ", ".join(toy2d.OBJECTIVES))
    for model in self.model_list:
      if model not in toy2d.OBJECTIVES:
        raise ValueError(f"--models names {model!r}; choose from {', '.join(toy2d.OBJECTIVES)}")
    if len(set(self.model_list)) != len(self.model_list):
      raise ValueError(f"--models names a model twice: {self.models}")

  @property
  def model_list(self) -> list:
    return [m.strip() for m in self.models.split(",") if m.strip()]

  def learning_rate(self, model: str) -> float:
    return self.rmsprop_learning_rate if model == "wgan_clip" else self.adam_learning_rate

  def critic_steps(self, model: str) -> int:
    return self.gan_d_steps if model.startswith("gan") else self.n_critic


def plot_limits(data: toy2d.Mixture) -> tuple:
  edge = float(abs(data.centres).max()) + 0.6
  return (-edge, edge)


def train_model(config: Config, model: str, log) -> dict:
  """Trains one model; returns its final coverage, losses, critic and samples."""
  import jax
  import numpy as np

  data = toy2d.mixture(config.dataset)
  generator = toy2d.Generator(data.dim, width=config.width, depth=config.depth)
  critic = toy2d.Critic(width=config.width, depth=config.depth)
  k = config.critic_steps(model)
  g_optimizer, d_optimizer = toy2d.optimizers(
      model, config.learning_rate(model), *((config.steps, config.steps * k)
                                             if config.lr_decay else (0, 0)))
  # Every model starts from the same keys and sees the same stream of data.
  init_key, train_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  rng = np.random.default_rng(config.seed)
  state = toy2d.init_state(init_key, generator=generator, critic=critic,
                           g_optimizer=g_optimizer, d_optimizer=d_optimizer)
  step_fn = jax.jit(functools.partial(
      toy2d.train_step, generator=generator, critic=critic, objective=model,
      g_optimizer=g_optimizer, d_optimizer=d_optimizer, gp_weight=config.gp_weight,
      clip=config.clip), donate_argnums=0)
  sample_fn = jax.jit(lambda params, z: generator.apply({"params": params}, z))
  eval_z = jax.random.normal(eval_key, (toy2d.EVAL_SAMPLES, generator.latent_dim))

  def evaluate(state):
    samples = np.asarray(sample_fn(state.g_params, eval_z))
    return samples, toy2d.mode_coverage(samples, data.centres, data.std)

  start, pending, last = time.perf_counter(), [], {}
  for step in range(config.steps):
    real = data.sample(rng, k * config.batch_size).reshape(k, config.batch_size, data.dim)
    state, metrics = step_fn(state, real, train_key)
    pending.append(metrics)
    done = step + 1
    if done % config.log_every == 0 or done == config.steps:
      # losses averaged over the steps since the last row: single steps are noisy
      rows = jax.device_get(pending)
      last = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
      pending = []
      if not all(np.isfinite(v) for v in last.values()):
        raise FloatingPointError(f"{model}: non-finite loss at step {done}: {last}")
      _, coverage = evaluate(state)
      log({"model": model, "step": done, **last, "modes_covered": coverage["modes_covered"],
           "high_quality_fraction": coverage["high_quality_fraction"],
           "seconds": time.perf_counter() - start})
  samples, coverage = evaluate(state)
  axis, values = toy2d.critic_on_grid(critic, state.d_params, plot_limits(data), data.dim)
  if model.startswith("gan"):
    values = 1.0 / (1.0 + np.exp(-values))  # D(x) = sigmoid(logit)
  return {"coverage": coverage, "losses": last, "seconds": time.perf_counter() - start,
          "samples": samples, "axis": axis, "values": values}


def table(config: Config, results: dict) -> str:
  lines = [f"Dataset {config.dataset}, {config.steps} generator steps, seed {config.seed}, "
           f"batch {config.batch_size}, MLPs {config.depth}x{config.width}; coverage of "
           f"{toy2d.EVAL_SAMPLES} samples (a mode is covered by >= 20 samples within 3 std); "
           f"losses: means over the last {config.log_every} steps. "
           f"Adam {config.adam_learning_rate:g} (GANs, WGAN-GP), "
           f"RMSprop {config.rmsprop_learning_rate:g} (WGAN), "
           + ("decayed linearly to 0" if config.lr_decay else "constant")
           + f"; k = {config.gan_d_steps}, n_critic = {config.n_critic}, c = {config.clip:g}, "
           f"lambda = {config.gp_weight:g}.",
           "",
           "| model | modes covered | high-quality fraction | final D/critic loss "
           "| final G loss | wall time (s) |",
           "|---|---|---|---|---|---|"]
  for model, r in results.items():
    c = r["coverage"]
    lines.append(f"| {model} | {c['modes_covered']} / {c['modes']} | "
                 f"{c['high_quality_fraction']:.3f} | {r['losses']['d_loss']:.4g} | "
                 f"{r['losses']['g_loss']:.4g} | {r['seconds']:.0f} |")
  return "\n".join(lines) + "\n"


def train(config: Config) -> dict:
  """Trains every model of `config`; writes the run's files; returns results per model."""
  import json

  import numpy as np
  from jaxgen import report

  os.makedirs(config.workdir, exist_ok=True)
  report.write_json(os.path.join(config.workdir, "config.json"),
                    {"program": "toy2d", **dataclasses.asdict(config)})
  metrics_path = os.path.join(config.workdir, "metrics.jsonl")
  open(metrics_path, "w").close()

  def log(row):
    with open(metrics_path, "a") as f:
      f.write(json.dumps(row) + "\n")
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in row.items()), file=sys.stderr)

  results = {model: train_model(config, model, log) for model in config.model_list}
  data = toy2d.mixture(config.dataset)
  real = data.sample(np.random.default_rng(config.seed + 1), toy2d.EVAL_SAMPLES)
  panels = [{"name": model, "samples": r["samples"], "axis": r["axis"], "values": r["values"],
             "value_label": SCORE_LABELS[model],
             "subtitle": f"{r['coverage']['modes_covered']}/{r['coverage']['modes']} modes, "
                         f"{r['coverage']['high_quality_fraction']:.0%} high quality"}
            for model, r in results.items()]
  toy2d.plot_panels(os.path.join(config.workdir, "samples.png"), data, real, panels,
                    plot_limits(data), f"{config.dataset} after {config.steps} generator steps "
                    f"(black: data, green: samples)")
  plot_coverage(os.path.join(config.workdir, "coverage.png"), report.read_metrics(metrics_path),
                config)
  summary = {model: {"coverage": r["coverage"], "final_losses": r["losses"],
                     "seconds": r["seconds"]} for model, r in results.items()}
  report.write_json(os.path.join(config.workdir, "results.json"), summary)
  text = table(config, results)
  with open(os.path.join(config.workdir, "report.md"), "w") as f:
    f.write(text)
  print(text)
  return summary


def plot_coverage(path: str, rows: list, config: Config) -> None:
  """Modes covered and high-quality fraction against the step, one line per model."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(8, 3))
  for model in config.model_list:
    mine = [r for r in rows if r["model"] == model]
    steps = [r["step"] for r in mine]
    axes[0].plot(steps, [r["modes_covered"] for r in mine], label=model, lw=1.2)
    axes[1].plot(steps, [r["high_quality_fraction"] for r in mine], label=model, lw=1.2)
  for ax, name in zip(axes, ("modes covered", "high-quality fraction")):
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("generator step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7)
  fig.suptitle(f"{config.dataset}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; settings are --flags (see --help)")
  try:
    config = from_flags(Config)
  except ValueError as e:
    sys.exit(f"error: {e}")
  train(config)


if __name__ == "__main__":
  define_flags(Config)
  app.run(main)
