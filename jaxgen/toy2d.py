"""Mode collapse on low-dimensional toys: mixtures of Gaussians, MLP GANs, WGANs and WGAN-GPs on
points, their training step, and the mode-coverage metrics.

Data: the toy sets of Gulrajani et al. 2017 ("Improved Training of Wasserstein GANs", section 3.1
and Figure 1), with the numbers of the paper's published toy code:
  ring8      8 Gaussians, centres 2 (cos k pi/4, sin k pi/4), std 0.02, then every point divided
             by 1.414: radius 1.414, std 0.01414.
  grid25     25 Gaussians, centres 2 (i, j) for i, j in -2..2, std 0.05, then divided by 2.828:
             spacing 0.7072, std 0.01768.
  bimodal1d  (ours) two Gaussians on the line at -1 and +1, std 0.1.
Modes are equally likely. Networks, also the paper's toys: MLPs of 3 hidden layers of 512 ReLU
units, 2-D standard normal noise in, batch 256.

Objectives, s(x) the discriminator's logit or the critic's score:
  gan (Goodfellow et al. 2014, eq. 1)   L_D = -E log sigmoid(s(x)) - E log sigmoid(-s(G(z)))
    gan_minimax                         L_G = E log(1 - D(G(z))) = E log sigmoid(-s(G(z)))
    gan_nonsaturating (ibid., sec. 3)   L_G = -E log sigmoid(s(G(z)))
    k = 1 discriminator step per generator step; Adam(1e-4, b1 = 0.5, b2 = 0.9), WGAN-GP's toy
    optimizer (our choice, so that the loss is what differs).
  wgan_clip (Arjovsky et al. 2017, Algorithm 1)  L_D = E s(G(z)) - E s(x), every critic weight
    clipped to [-c, c] after each critic update; L_G = -E s(G(z)); c = 0.01, n_critic = 5,
    RMSprop(5e-5).
  wgan_gp (Gulrajani et al. 2017, eq. 3)  L_D = E s(G(z)) - E s(x)
    + lambda E (||grad s(x_hat)|| - 1)^2, x_hat = e x + (1 - e) G(z), e ~ U[0, 1];
    L_G = -E s(G(z)); n_critic = 5, Adam(1e-4, b1 = 0.5, b2 = 0.9). lambda: the paper's text
    (section 4) uses 10 in all its experiments, its published toy code 0.1 ("smaller lambda seems
    to help for toy tasks"); we default to 0.1.

Metrics (the rule of VEEGAN, Srivastava et al. 2017, and PacGAN, Lin et al. 2018): of 2500
samples, one is of high quality when it lies within 3 standard deviations (Euclidean distance) of
the nearest mode's centre; a mode is covered when at least 20 samples lie within 3 std of it.
"""

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxgen.parallel import draw, pmean
from jaxgen.wgan_gp import gradient_penalty

DATASETS = ("ring8", "grid25", "bimodal1d")
OBJECTIVES = ("gan_minimax", "gan_nonsaturating", "wgan_clip", "wgan_gp")
EVAL_SAMPLES = 2500  # the count the coverage rule below is stated for
BATCH_SIZE, WIDTH, DEPTH, LATENT_DIM = 256, 512, 3, 2


# Data.

@dataclasses.dataclass(frozen=True, eq=False)
class Mixture:
  """An equal-weight mixture of isotropic Gaussians of one standard deviation."""
  name: str
  centres: np.ndarray  # (modes, dim)
  std: float

  @property
  def dim(self) -> int:
    return self.centres.shape[1]

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """n float32 points (n, dim), drawn with the caller's generator."""
    modes = rng.integers(len(self.centres), size=n)
    noise = rng.standard_normal((n, self.dim))
    return (self.centres[modes] + self.std * noise).astype(np.float32)


def mixture(name: str) -> Mixture:
  """The data set `name` (one of DATASETS), or a one-line error."""
  if name == "ring8":
    angles = np.arange(8) * np.pi / 4
    return Mixture(name, 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1) / 1.414,
                   0.02 / 1.414)
  if name == "grid25":
    ij = np.arange(-2, 3, dtype=np.float64)
    grid = np.stack(np.meshgrid(ij, ij, indexing="ij"), -1).reshape(-1, 2)
    return Mixture(name, 2.0 * grid / 2.828, 0.05 / 2.828)
  if name == "bimodal1d":
    return Mixture(name, np.array([[-1.0], [1.0]]), 0.1)
  raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {name!r}")


# Networks.

def _mlp(x, width: int, depth: int, out: int):
  for _ in range(depth):
    x = nn.relu(nn.Dense(width)(x))
  return nn.Dense(out)(x)


class Generator(nn.Module):
  """z (B, latent_dim) -> points (B, data_dim): `depth` hidden ReLU layers, a linear output."""
  data_dim: int
  latent_dim: int = LATENT_DIM
  width: int = WIDTH
  depth: int = DEPTH

  @nn.compact
  def __call__(self, z):
    return _mlp(z, self.width, self.depth, self.data_dim)


class Critic(nn.Module):
  """points (B, dim) -> (B,) scores: a GAN discriminator's logits or a WGAN critic's values."""
  width: int = WIDTH
  depth: int = DEPTH

  @nn.compact
  def __call__(self, x):
    return _mlp(x, self.width, self.depth, 1)[:, 0]


@struct.dataclass
class ToyState:
  step: jax.Array  # generator updates done
  g_params: dict
  g_opt_state: optax.OptState
  d_params: dict  # discriminator or critic
  d_opt_state: optax.OptState


def init_state(key: jax.Array, *, generator: Generator, critic: Critic,
               g_optimizer: optax.GradientTransformation,
               d_optimizer: optax.GradientTransformation) -> ToyState:
  k_g, k_d = jax.random.split(key)
  g_params = generator.init(k_g, jnp.zeros((1, generator.latent_dim)))["params"]
  d_params = critic.init(k_d, jnp.zeros((1, generator.data_dim)))["params"]
  return ToyState(step=jnp.zeros((), jnp.int32), g_params=g_params,
                  g_opt_state=g_optimizer.init(g_params), d_params=d_params,
                  d_opt_state=d_optimizer.init(d_params))


def optimizers(objective: str, learning_rate: float = 0.0, generator_updates: int = 0,
               critic_updates: int = 0):
  """(generator's, critic's) optimizer of each objective's paper (module docstring): RMSprop
  for wgan_clip, Adam(b1 = 0.5, b2 = 0.9) otherwise; learning_rate 0 picks the paper's.

  With generator_updates and critic_updates (the updates each network will get) the rate decays
  linearly to 0 over them, as in the WGAN-GP paper's CIFAR-10 runs; 0 keeps it constant.
  """
  check_objective(objective)
  learning_rate = learning_rate or (5e-5 if objective == "wgan_clip" else 1e-4)

  def make(updates):
    rate = optax.linear_schedule(learning_rate, 0.0, updates) if updates else learning_rate
    if objective == "wgan_clip":
      return optax.rmsprop(rate)
    return optax.adam(rate, b1=0.5, b2=0.9)

  return make(generator_updates), make(critic_updates)


def check_objective(objective: str) -> None:
  if objective not in OBJECTIVES:
    raise ValueError(f"unknown model {objective!r}; choose from {', '.join(OBJECTIVES)}")


# Losses, from logits or scores.

def gan_discriminator_loss(real_logits, fake_logits):
  """-V(D, G) of Goodfellow et al. 2014, eq. 1: -E log D(x) - E log(1 - D(G(z)))."""
  return -jnp.mean(jax.nn.log_sigmoid(real_logits)) - jnp.mean(jax.nn.log_sigmoid(-fake_logits))


def gan_minimax_generator_loss(fake_logits):
  """E log(1 - D(G(z))) (eq. 1), which saturates where D rejects the samples."""
  return jnp.mean(jax.nn.log_sigmoid(-fake_logits))


def gan_nonsaturating_generator_loss(fake_logits):
  """-E log D(G(z)) (Goodfellow et al. 2014, section 3): the same fixed point, strong gradients
  early."""
  return -jnp.mean(jax.nn.log_sigmoid(fake_logits))


def wasserstein_critic_loss(real_scores, fake_scores):
  """E s(G(z)) - E s(x): minus the Kantorovich-Rubinstein estimate (Arjovsky et al. 2017, eq. 2)."""
  return jnp.mean(fake_scores) - jnp.mean(real_scores)


def clip_weights(params, clip: float):
  """Every parameter into [-clip, clip] (Arjovsky et al. 2017, Algorithm 1, line 7)."""
  return jax.tree.map(lambda w: jnp.clip(w, -clip, clip), params)


def discriminator_loss(d_params, real, fake, eps, *, critic: Critic, objective: str,
                       gp_weight: float):
  """The discriminator's or critic's loss of `objective` on one batch, and its metrics."""
  critic_fn = lambda x: critic.apply({"params": d_params}, x)
  s_real, s_fake = critic_fn(real), critic_fn(fake)
  if objective.startswith("gan"):
    loss = gan_discriminator_loss(s_real, s_fake)
    return loss, {"d_loss": loss, "d_real": jnp.mean(jax.nn.sigmoid(s_real)),
                  "d_fake": jnp.mean(jax.nn.sigmoid(s_fake))}
  loss = wasserstein_critic_loss(s_real, s_fake)
  metrics = {"wasserstein": -loss}
  if objective == "wgan_gp":
    penalty, norms = gradient_penalty(critic_fn, eps * real + (1.0 - eps) * fake)
    loss = loss + gp_weight * penalty
    metrics.update(gradient_penalty=penalty, grad_norm=jnp.mean(norms))
  return loss, {"d_loss": loss, **metrics}


def generator_loss(g_params, d_params, z, *, generator: Generator, critic: Critic,
                   objective: str):
  """The generator's loss of `objective` on latents z, and its metrics."""
  scores = critic.apply({"params": d_params}, generator.apply({"params": g_params}, z))
  if objective == "gan_minimax":
    loss = gan_minimax_generator_loss(scores)
  elif objective == "gan_nonsaturating":
    loss = gan_nonsaturating_generator_loss(scores)
  else:
    loss = -jnp.mean(scores)  # WGAN and WGAN-GP: L_G = -E s(G(z))
  return loss, {"g_loss": loss}


# The step.

def critic_update(d_params, d_opt_state, g_params, real, z, eps, *, generator: Generator,
                  critic: Critic, objective: str, d_optimizer: optax.GradientTransformation,
                  gp_weight: float, clip: float, axis_name=None):
  """One discriminator or critic update on real points and latents z (eps: WGAN-GP's
  interpolation weights, (B, 1)); returns the new parameters, optimizer state and metrics (of
  the parameters before the update)."""
  fake = generator.apply({"params": g_params}, z)
  grads, metrics = jax.grad(discriminator_loss, has_aux=True)(
      d_params, real, fake, eps, critic=critic, objective=objective, gp_weight=gp_weight)
  updates, d_opt_state = d_optimizer.update(pmean(grads, axis_name), d_opt_state, d_params)
  d_params = optax.apply_updates(d_params, updates)
  if objective == "wgan_clip":
    d_params = clip_weights(d_params, clip)
  return d_params, d_opt_state, metrics


def generator_update(g_params, g_opt_state, d_params, z, *, generator: Generator,
                     critic: Critic, objective: str, g_optimizer: optax.GradientTransformation,
                     axis_name=None):
  """One generator update on latents z; returns parameters, optimizer state and metrics."""
  grads, metrics = jax.grad(generator_loss, has_aux=True)(
      g_params, d_params, z, generator=generator, critic=critic, objective=objective)
  updates, g_opt_state = g_optimizer.update(pmean(grads, axis_name), g_opt_state, g_params)
  return optax.apply_updates(g_params, updates), g_opt_state, metrics


def train_step(state: ToyState, real: jax.Array, key: jax.Array, *, generator: Generator,
               critic: Critic, objective: str, g_optimizer: optax.GradientTransformation,
               d_optimizer: optax.GradientTransformation, gp_weight: float = 0.1,
               clip: float = 0.01, axis_name=None):
  """real.shape[0] critic (or discriminator) updates, then one generator update.

  real: (n_critic, batch, dim) points, one batch per critic update (n_critic = 1 for a GAN's k = 1).
  key: the run's base key; this step draws from fold_in(key, state.step).
  Returns the new state and metrics (critic metrics averaged over its updates).
  """
  check_objective(objective)
  n_critic, batch = real.shape[:2]
  key = jax.random.fold_in(key, state.step)
  latent = (batch, generator.latent_dim)
  d_params, d_opt_state, history = state.d_params, state.d_opt_state, []
  for i in range(n_critic):
    k_z, k_eps = jax.random.split(jax.random.fold_in(key, i))
    z = draw(jax.random.normal, k_z, latent, axis_name)
    eps = draw(jax.random.uniform, k_eps, (batch, 1), axis_name)
    d_params, d_opt_state, metrics = critic_update(
        d_params, d_opt_state, state.g_params, real[i], z, eps, generator=generator,
        critic=critic, objective=objective, d_optimizer=d_optimizer, gp_weight=gp_weight,
        clip=clip, axis_name=axis_name)
    history.append(metrics)
  z = draw(jax.random.normal, jax.random.fold_in(key, n_critic), latent, axis_name)
  g_params, g_opt_state, g_metrics = generator_update(
      state.g_params, state.g_opt_state, d_params, z, generator=generator, critic=critic,
      objective=objective, g_optimizer=g_optimizer, axis_name=axis_name)
  metrics = {**jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *history), **g_metrics}
  new_state = state.replace(step=state.step + 1, g_params=g_params, g_opt_state=g_opt_state,
                            d_params=d_params, d_opt_state=d_opt_state)
  return new_state, pmean(metrics, axis_name)


# Metrics.

def mode_coverage(samples: np.ndarray, centres: np.ndarray, std: float, *,
                  radius_in_std: float = 3.0, min_count: int = 20) -> dict:
  """Modes covered and the fraction of high-quality samples (module docstring's rule).

  samples (n, dim), centres (modes, dim). A sample counts for its nearest centre, and only when
  within radius_in_std * std of it; a mode is covered when it gets at least min_count samples
  (20 is the rule for 2500 samples). Returns modes_covered, modes, high_quality_fraction and the
  per-mode counts.
  """
  samples = np.asarray(samples, np.float64)
  dist = np.linalg.norm(samples[:, None, :] - centres[None, :, :], axis=-1)
  nearest = np.argmin(dist, axis=1)
  near = dist[np.arange(len(samples)), nearest] <= radius_in_std * std
  counts = np.bincount(nearest[near], minlength=len(centres))
  return {"modes_covered": int(np.sum(counts >= min_count)), "modes": len(centres),
          "high_quality_fraction": float(np.mean(near)), "counts": counts.tolist()}


def critic_on_grid(critic: Critic, d_params, limits: Sequence[float], dim: int, n: int = 120):
  """The critic's scores on an n (x n) grid over [lo, hi] per axis: (axes, values)."""
  axis = np.linspace(limits[0], limits[1], n, dtype=np.float32)
  if dim == 1:
    points = axis[:, None]
  else:
    xx, yy = np.meshgrid(axis, axis)
    points = np.stack([xx.ravel(), yy.ravel()], 1)
  values = np.asarray(jax.jit(critic.apply)({"params": d_params}, points))
  return axis, values.reshape((n,) * dim)


def plot_panels(path: str, data: Mixture, real: np.ndarray, panels: Sequence[dict],
                limits: Sequence[float], title: str = "") -> None:
  """One panel per model: its samples over the real points, on its critic's contours (2-D) or
  with its critic's curve on a second axis (1-D). Each panel: name, samples, axis, values
  (from critic_on_grid), value_label, subtitle."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(panels), figsize=(max(3.6 * len(panels), 6), 3.9),
                           squeeze=False)
  for ax, panel in zip(axes[0], panels):
    if data.dim == 2:
      contour = ax.contourf(panel["axis"], panel["axis"], panel["values"], levels=20,
                            cmap="coolwarm", alpha=0.75)
      fig.colorbar(contour, ax=ax, fraction=0.046, pad=0.02).set_label(panel["value_label"],
                                                                        fontsize=7)
      ax.scatter(real[:, 0], real[:, 1], s=2, c="black", alpha=0.5, label="data")
      ax.scatter(panel["samples"][:, 0], panel["samples"][:, 1], s=2, c="limegreen",
                 alpha=0.6, label="samples")
      ax.set_ylim(*limits)
      ax.set_aspect("equal")
    else:
      bins = np.linspace(limits[0], limits[1], 121)
      ax.hist(real[:, 0], bins, density=True, color="black", alpha=0.4, label="data")
      ax.hist(panel["samples"][:, 0], bins, density=True, color="limegreen", alpha=0.6,
              label="samples")
      curve = ax.twinx()
      curve.plot(panel["axis"], panel["values"], color="crimson", lw=1.2)
      curve.set_ylabel(panel["value_label"], fontsize=7, color="crimson")
      curve.tick_params(labelsize=6)
    ax.set_xlim(*limits)
    ax.set_title(f"{panel['name']}\n{panel['subtitle']}", fontsize=8)
    ax.tick_params(labelsize=6)
  axes[0][0].legend(fontsize=6, loc="lower left", markerscale=3)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
