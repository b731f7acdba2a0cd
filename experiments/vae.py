"""Train a variational autoencoder (Kingma & Welling 2013) or a beta-VAE (Higgins et al. 2017).

    python -m experiments.vae                                   # conv VAE, one blob per image
    python -m experiments.vae --dataset=mnist --data_dir=~/tfds --workdir=runs/vae_mnist
    python -m experiments.vae --dataset=mnist --hidden_dims=256 --latent_dim=2 --batch_size=100 \
        --optimizer=rmsprop --epochs=50 --workdir=runs/vae_mnist_2d
    python -m experiments.vae --dataset=mnist --beta=10 --workdir=runs/beta10
    python -m experiments.vae --dataset=celeba --workdir=runs/vae_celeba       # conv, 64x64

Each epoch ends with one evaluation row per split in metrics.jsonl (`epoch`, `split`, `neg_elbo`,
`recon`, `kl` in nats per example, and `bits_per_dim` for Gaussian likelihoods): the test split
whole, the train split on its first 10,000 examples, both at the epoch's final parameters.
At the end of training: reconstructions, interpolations between encoded test images and between
latent points, latent sweeps, the 2-D manifold and the latent scatter by class, as PNGs;
`--iw_samples=K` adds the importance-sampled test log-likelihood. The same --workdir resumes.
"""

import dataclasses
import functools
import math

from jaxgen import training
from jaxgen.flags import setting
from jaxgen.layers import PRECISIONS

MODEL = "vae"
ARCHITECTURES = ("mlp", "conv")
DIGITS = ("mnist", "fashion_mnist")


@dataclasses.dataclass(frozen=True)
class Config(training.Settings):
  steps: int = setting(0, "updates to train for; 0 means --epochs whole epochs")
  epochs: int = setting(0, "epochs to train for (blobs: 10,000 images each); 0 picks 10, or 40 "
                           "for the blobs")
  workdir: str = setting("runs/vae", "where the run's files go; an existing run is resumed")
  architecture: str = setting("", "mlp | conv; empty picks mlp for mnist and fashion_mnist, conv "
                                  "otherwise")
  image_size: int = setting(0, "image height and width; 0 picks 28 for the MLP on digits, 64 for "
                               "celeba and imagenette, 32 otherwise")
  latent_dim: int = setting(0, "latent size; 0 picks 4 for blobs1, 40 for blobs10, 20 for the "
                               "MLP, 32 otherwise")
  hidden_dims: str = setting("", "MLP hidden widths, comma-separated (encoder order; the decoder "
                                 "mirrors them); conv: widths of the stride-2 layers; empty "
                                 "picks 400 (MLP) or 32,64,... (conv)")
  likelihood: str = setting("", "p(x|z): bernoulli (grey values as targets), "
                                "bernoulli_stochastic, bernoulli_threshold, gaussian (unit "
                                "scale), gaussian_channel or gaussian_scalar (learned scale); "
                                "empty picks bernoulli for digits, gaussian_channel otherwise")
  beta: float = setting(1.0, "weight of the KL term: 1 is the VAE, >1 a beta-VAE")
  optimizer: str = setting("adam", "adam | rmsprop")
  learning_rate: float = setting(1e-3, "learning rate")
  iw_samples: int = setting(0, "importance samples for the test log-likelihood at the end "
                               "(Burda et al. 2015; 100 or more); 0 skips it")
  manifold_dims: str = setting("0,1", "the two latent dimensions of the manifold picture")
  sample_every: int = setting(500, "steps between sample grids from the prior")
  eval_examples: int = setting(0, "examples of each split evaluated after every epoch; 0 means "
                                  "the whole test split and the first 10,000 training examples")
  steps_per_call: int = setting(0, "training steps run as one loop on the device per call from "
                                   "Python; 0 picks 50 for the MLP (its steps are so short that "
                                   "dispatching each costs a fifth to a quarter of the loop), 1 "
                                   "for conv (XLA:CPU runs convolutions inside loops far "
                                   "slower)")

  POSITIVE = ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints")
  AUTOMATIC = training.Settings.AUTOMATIC + ("steps", "epochs", "latent_dim", "steps_per_call")
  BEFORE = {**training.Settings.BEFORE, "steps_per_call": 1}

  def __post_init__(self):
    super().__post_init__()
    from jaxgen import vae
    if self.architecture and self.architecture not in ARCHITECTURES:
      raise ValueError(f"--architecture must be mlp or conv, got {self.architecture!r}")
    if self.likelihood:
      vae.check_likelihood(self.likelihood)
    vae.optimizer(self.optimizer)  # a one-line error for an unknown name
    if self.learning_rate <= 0 or min(self.beta, self.iw_samples, self.eval_examples) < 0:
      raise ValueError(f"--learning_rate must be positive and --beta, --iw_samples and "
                       f"--eval_examples non-negative, got {self.learning_rate}, {self.beta}, "
                       f"{self.iw_samples}, {self.eval_examples}")
    self.widths, self.manifold  # one-line errors for malformed lists

  def automatic(self) -> dict:
    digits = self.dataset.split("/")[0] in DIGITS
    blobs = self.dataset.startswith("blobs")
    architecture = self.architecture or ("mlp" if digits else "conv")
    auto = {**super().automatic(), "batch_size": 128, "epochs": 40 if blobs else 10,
            "architecture": architecture, "steps_per_call": 50 if architecture == "mlp" else 1,
            "likelihood": "bernoulli" if digits else "gaussian_channel",
            "latent_dim": {"blobs1": 4, "blobs10": 40}.get(
                self.dataset, 20 if architecture == "mlp" else 32)}
    if architecture == "mlp":
      auto["hidden_dims"] = "400"
      if digits:
        auto["image_size"] = 28  # the digits' own size: the studies' 784 inputs
    return auto

  @property
  def widths(self) -> tuple:
    return _integers(self.hidden_dims, "--hidden_dims")

  @property
  def manifold(self) -> tuple:
    dims = _integers(self.manifold_dims, "--manifold_dims")
    if len(dims) != 2 or dims[0] == dims[1] or (self.latent_dim and max(dims) >= self.latent_dim):
      raise ValueError(f"--manifold_dims must be two different latent dimensions below "
                       f"--latent_dim, got {self.manifold_dims!r}")
    return dims


def _integers(text: str, flag: str) -> tuple:
  try:
    values = tuple(int(v) for v in text.split(",")) if text else ()
  except ValueError:
    values = (-1,)
  if any(v < 0 for v in values):
    raise ValueError(f"{flag} must be comma-separated non-negative integers, got {text!r}")
  return values


def network(config: Config, image_shape):
  from jaxgen import vae
  dtype = PRECISIONS[config.precision]
  if config.architecture == "mlp":
    return vae.mlp_vae(image_shape, config.widths, config.latent_dim, dtype=dtype)
  return vae.conv_vae(image_shape[0], image_shape[-1], config.latent_dim,
                      config.widths or None, dtype=dtype)


def sampler(config: Config, image_shape):
  """(latent shape, generate(checkpointed state as a dict, z) -> mean images in [-1, 1])."""
  from jaxgen import vae
  model = network(config, image_shape)
  return (config.latent_dim,), lambda tree, z: vae.generate(
      tree["params"], z, model=model, likelihood=config.likelihood)


def train(config: Config, devices=None, source=None) -> dict:
  """Trains (or resumes) the run of `config`; returns the last test-split evaluation."""
  import os

  import jax
  from jaxgen import checkpoint, evaluation, parallel, report, vae

  if devices is None:
    config, devices, source = training.setup(config, MODEL)
  test = training.load_split(config, "test")
  model = network(config, source.image_shape)
  optimizer = vae.optimizer(config.optimizer, config.learning_rate)
  init_key, train_key, sample_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed), 4)
  state = vae.init_state(init_key, model, optimizer, source.image_shape, config.likelihood)
  checkpoints = checkpoint.Checkpoints(os.path.join(config.workdir, "checkpoints"),
                                       config.keep_checkpoints)
  state, start = training.resume(checkpoints, state, batches_per_step=1)
  per_epoch = max(1, source.num_examples // config.batch_size)  # whole batches per epoch
  total = config.steps or config.epochs * per_epoch

  eval_fn = jax.jit(functools.partial(vae.eval_batch, model=model, beta=config.beta,
                                      likelihood=config.likelihood))
  generate = jax.jit(functools.partial(vae.generate, model=model, likelihood=config.likelihood))
  fixed_z = jax.random.normal(sample_key, (64, config.latent_dim))

  title = f"VAE (beta={config.beta:g})"
  score = evaluation.during_training(config, source, (config.latent_dim,), title)
  writer = report.Writer(config.workdir, total, start, config.image_size)
  writer.grid("real.png", source.batch(0)[:64])
  step = functools.partial(vae.train_step, model=model, optimizer=optimizer, beta=config.beta,
                           likelihood=config.likelihood, axis_name=parallel.AXIS)
  plan, step_fn, batches = training.step_calls(
      step, source.batch, devices, start, total, config.steps_per_call, config.log_every,
      per_epoch, config.eval_every if score else 0, config.sample_every, config.checkpoint_every)
  state = parallel.replicate(state, devices)
  last = {}
  with training.guarded(config, start, checkpoints, batches, writer) as stop:
    for first, count in plan:
      state, metrics = step_fn(state, next(batches), train_key, count)
      done = first + count
      if training.due(done, config.log_every, total):
        writer.metrics(done, parallel.first(metrics), config.batch_size)
      if done % per_epoch == 0 or done == total:
        evaluate = functools.partial(eval_fn, parallel.unreplicate(state).params)
        last = training.evaluate_epoch(writer, done, per_epoch, evaluate, source, test,
                                       jax.random.fold_in(eval_key, done), config.eval_examples)
      if score and training.due(done, config.eval_every, total):
        score(writer, done, functools.partial(generate, parallel.unreplicate(state).params))
      if training.due(done, config.sample_every, total):
        writer.grid(f"step_{done:06d}.png", generate(parallel.unreplicate(state).params, fixed_z))
        writer.curves(["neg_elbo", "recon", "kl"], f"{title} on {config.dataset}")
      if (training.due(done, config.checkpoint_every, total) or done % per_epoch == 0
          or stop.requested):
        checkpoints.save(done, parallel.first(state), {"data_position": done})
      stop.check(done)
    params = parallel.unreplicate(state).params
    if start < total:
      analyses(config, writer, model, params, test, sample_key)
    if config.iw_samples and start < total:
      last["log_likelihood"] = importance_log_likelihood(config, model, params, test, eval_key)
      writer.evaluation(total, {"log_likelihood": last["log_likelihood"]},
                        split="test", iw_samples=config.iw_samples)
  return last


def importance_log_likelihood(config, model, params, test, key) -> float:
  """Mean over the test split of the importance-sampled log p(x), in nats."""
  import jax
  from jaxgen import vae

  chunk = math.gcd(config.iw_samples, 50)
  estimate = jax.jit(functools.partial(vae.importance_log_likelihood, model=model,
                                       likelihood=config.likelihood,
                                       num_samples=config.iw_samples, samples_per_chunk=chunk))
  per_example = lambda x, k: {"log_likelihood": estimate(params, x, k)}
  return training.split_means(per_example, test, key, config.eval_examples or None)[
      "log_likelihood"]


def analyses(config: Config, writer, model, params, test, key) -> None:
  """The latent-space pictures of the studies, from the final parameters."""
  import jax
  import numpy as np
  from jaxgen import gan_training, latent, vae

  generate = jax.jit(functools.partial(vae.generate, model=model, likelihood=config.likelihood))
  images = training.first_examples(test, 32)
  recon = np.asarray(vae.reconstruct(params, images, model=model, likelihood=config.likelihood))
  # rows of 8: inputs, then their reconstructions beneath
  pairs = np.stack([images.reshape(4, 8, *images.shape[1:]),
                    recon.reshape(4, 8, *images.shape[1:])], 1).reshape(-1, *images.shape[1:])
  writer.grid("reconstructions.png", pairs)
  means = np.asarray(vae.posterior(params, images[:16], model=model)[0])
  encoded = np.concatenate([latent.interpolation_latents(means[2 * r], means[2 * r + 1], 8)
                            for r in range(8)])
  writer.grid("interpolation_encoded.png", generate(params, encoded))
  interpolation, sweep = gan_training.latent_grids(functools.partial(generate, params),
                                                   config.latent_dim, key)
  writer.grid("interpolation.png", interpolation)
  writer.grid("sweep.png", sweep)
  if config.latent_dim >= 2:
    grid = latent.manifold_latents(15, config.manifold, latent_dim=config.latent_dim)
    writer.grid("manifold.png", generate(params, grid), columns=15)
  scatter(config, writer, model, params, test)


def scatter(config, writer, model, params, test, limit=5000) -> None:
  """Test-set posterior means in the manifold's two dimensions, coloured by class, where the
  dataset has classes."""
  import os

  import numpy as np
  from jaxgen import latent, vae

  points, labels = [], []
  for i in range(test.batches_per_epoch):
    images, y = test.eval_batch(i)
    if y is None or config.latent_dim < 2:
      return
    points.append(np.asarray(vae.posterior(params, images, model=model)[0])[:, config.manifold])
    labels.append(np.asarray(y))
    if sum(map(len, labels)) >= limit:
      break
  latent.scatter_by_class(np.concatenate(points), np.concatenate(labels),
                          os.path.join(config.workdir, "latent_scatter.png"),
                          getattr(test, "class_names", None),
                          f"posterior means z[{config.manifold[0]}], z[{config.manifold[1]}]")


if __name__ == "__main__":
  training.run_program(Config, MODEL, train)
