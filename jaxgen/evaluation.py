"""Scoring generated images against real ones, shared by `experiments.evaluate` (a finished run)
and the evaluations during training (`--eval_every`, `during_training`).

Two sets of real images stand beside the generated set: the *reference* every set is scored
against, and a *baseline* of other real images, whose scores are what a perfect generator
would get at the same sample size (FID and KID are biased upwards at finite N). Scores: FID,
KID, precision and recall on the features of a feature network (`jaxgen.classifier`'s for
labelled greyscale data, or the FID Inception), and on the blob datasets the blob metrics of
`jaxgen.blob_metrics`.
"""

import dataclasses
import os
import sys
import time

# Real blob images come from the generator itself: seeds no training run uses by default.
BLOB_REFERENCE_SEED, BLOB_BASELINE_SEED = 1_000_001, 1_000_002
# The latents of the evaluations during training: a stream of their own, the train key's
# stream untouched (`jax.random.fold_in` of the run's seed key).
DURING_TRAINING_STREAM = 1_000_003
# The blob numbers of a summary (one image set) and of a difference (against the reference)
# that a table or a training curve shows.
BLOB_SUMMARY_KEYS = ("count_exact_fraction", "count_mean", "width_mean", "amplitude_mean",
                     "elongation_mean", "streak_fraction", "centre_ks", "background_mean")
BLOB_DIFFERENCE_KEYS = ("count_tv", "width_w1", "amplitude_w1")
FEATURE_KEYS = ("fid", "kid", "kid_std", "precision", "recall")
# The blob numbers of eval_curves.png (every one is in metrics.jsonl): six panels draw quickly.
BLOB_CURVE_KEYS = ("blob_count_exact_fraction", "blob_count_tv", "blob_width_mean",
                   "blob_width_w1", "blob_streak_fraction", "blob_centre_ks")
# Images per generator call during training: the sample grid's 64, so the sampler compiled for
# the grids serves the evaluations too.
GENERATE_CHUNK = 64
# Defaults shared by experiments.evaluate and the evaluations during training: the classifier's
# one-time training (one saved classifier serves both), images per feature-network call, and
# the k of precision/recall's k-NN radii.
CLASSIFIER_EPOCHS = 3
FEATURE_BATCH = 200
PR_K = 3


def _as_float(images):
  import numpy as np
  return np.asarray(images, np.float32)


def real_sets(settings: dict, num_samples: int, data_dir=None, flag: str = "--num_samples"):
  """(reference, baseline, description): real images in the data's own pixel range; errors
  name the sample size as `flag`."""
  from jaxgen import data

  dataset, size = settings["dataset"], settings["image_shape"][0]
  load = lambda seed, batch: data.load(
      dataset, image_size=size, batch_size=batch, seed=seed,
      blob_width=settings.get("blob_width", 1.5),
      blob_amplitude=settings.get("blob_amplitude", 1.0), data_dir=data_dir)
  if dataset in data.BLOB_DATASETS:
    # Through the model range and back: the same clipping as the generator's tanh range.
    draws = lambda seed: data.from_model_range(load(seed, num_samples).batch(0),
                                               settings["pixel_range"])
    return draws(BLOB_REFERENCE_SEED), draws(BLOB_BASELINE_SEED), {
        "reference": f"{dataset}: {num_samples} fresh draws of the blob generator "
                     f"(seed {BLOB_REFERENCE_SEED})",
        "baseline": f"{dataset}: {num_samples} other draws (seed {BLOB_BASELINE_SEED})"}
  from jaxgen import image_source, tfds_prepare

  source = load(settings.get("seed", 0), num_samples)
  if source.num_examples < num_samples:
    raise tfds_prepare.DatasetError(f"{dataset} has {source.num_examples} training images, "
                                    f"fewer than {flag}={num_samples}")
  reference = _as_float(source.pixels(0))
  split = "test"  # Imagenette: its validation split (jaxgen.data maps the name)
  held_out = None
  if dataset in tfds_prepare.NAMED_DATASETS:
    try:
      held_out = image_source.load_source(dataset, image_size=size, batch_size=num_samples,
                                            seed=0, data_dir=data_dir, split=split)
    except (ValueError, FileNotFoundError):
      held_out = None
  if held_out is not None and held_out.num_examples >= num_samples:
    baseline = _as_float(held_out.pixels(0))
    about = f"{dataset} {split} split: {num_samples} random images"
  elif source.num_examples >= 2 * num_samples:
    baseline = _as_float(source.pixels(1))  # the next images of the same permutation
    about = f"{dataset} train split: {num_samples} other random images (disjoint)"
  else:
    raise tfds_prepare.DatasetError(
        f"{dataset} has no {split} split of {num_samples} images and its {source.num_examples} "
        f"training images do not make two disjoint sets; use {flag}={source.num_examples // 2} "
        f"or fewer")
  return reference, baseline, {
      "reference": f"{dataset} train split: {num_samples} random images (seed "
                   f"{settings.get('seed', 0)})", "baseline": about}


# ---------------------------------------------------------------------------------------------
# Feature networks.


def classifier_directory(settings: dict, data_dir=None) -> str:
  from jaxgen import tfds_prepare
  name = settings["dataset"].replace("/", "_").replace(":", "_")
  return os.path.join(data_dir or tfds_prepare.default_data_dir(), "jaxgen_classifiers",
                      f"{name}-{settings['image_shape'][0]}px")


def trained_classifier(settings: dict, directory: str, epochs: int, data_dir=None):
  """(model, params, config) of the dataset's classifier, trained and saved on first use."""
  import numpy as np
  from jaxgen import classifier, data, image_cache, tfds_prepare

  try:
    return classifier.load(directory)
  except FileNotFoundError:
    pass
  dataset, size = settings["dataset"], settings["image_shape"][0]
  if dataset in data.BLOB_DATASETS:
    raise ValueError(f"--features=classifier needs a labelled dataset; {dataset} has no labels")
  images, labels, meta = image_cache.cached_images(dataset, image_size=size, split="train",
                                                      data_dir=data_dir)
  if labels is None:
    raise ValueError(f"--features=classifier needs a labelled dataset; {dataset} has no labels")
  pixel_range = meta["pixel_range"]
  split = "test"  # Imagenette: its validation split (jaxgen.data maps the name)
  if dataset in tfds_prepare.NAMED_DATASETS:
    test_images, test_labels, _ = image_cache.cached_images(dataset, image_size=size,
                                                               split=split, data_dir=data_dir)
    held_out = f"{split} split"
  else:  # the user's images have one split: a fixed tenth of it is held out
    order = np.random.default_rng(0).permutation(len(images))
    cut = len(images) // 10
    test_images, test_labels = images[np.sort(order[:cut])], labels[np.sort(order[:cut])]
    images, labels = images[np.sort(order[cut:])], labels[np.sort(order[cut:])]
    held_out = "a fixed 10% of the images, not trained on"
  print(f"training the {dataset} classifier once ({len(images)} images, {epochs} epochs) into "
        f"{directory}", file=sys.stderr, flush=True)
  start = time.time()
  log = lambda step, m: print(f"  classifier step {step}: loss {m['loss']:.4f} accuracy "
                              f"{m['accuracy']:.4f}", file=sys.stderr, flush=True)
  model, params, _ = classifier.train(data.to_model_range(images, pixel_range), labels,
                                      num_classes=int(labels.max()) + 1, epochs=epochs,
                                      log=log)
  seconds = time.time() - start
  accuracy = classifier.accuracy(model, params, data.to_model_range(test_images, pixel_range),
                                 test_labels)
  print(f"classifier test accuracy {accuracy:.4f} ({held_out}), trained in {seconds:.0f} s",
        file=sys.stderr)
  classifier.save(directory, model, params, images.shape[1:], {
      "dataset": dataset, "test_split": held_out, "test_accuracy": accuracy,
      "epochs": epochs, "train_seconds": round(seconds, 1), "train_images": int(len(images))})
  return classifier.load(directory)


def labelled_greyscale(settings: dict, data_dir=None) -> bool:
  """Whether the run's dataset is an image dataset of one channel with class labels (MNIST-like):
  the data `jaxgen.classifier` is made for."""
  from jaxgen import data, image_cache

  dataset = settings["dataset"]
  if dataset in data.BLOB_DATASETS or settings["image_shape"][-1] != 1:
    return False
  _, labels, _ = image_cache.cached_images(dataset, image_size=settings["image_shape"][0],
                                              data_dir=data_dir)
  return labels is not None


def choose_features(requested: str, settings: dict, inception_weights: str, data_dir=None):
  """The feature network `auto` means for this run."""
  if requested != "auto":
    return requested
  from jaxgen import inception

  if labelled_greyscale(settings, data_dir):
    return "classifier"
  if inception_weights or os.environ.get(inception.WEIGHTS_ENV):
    return "inception"
  return "none"


def feature_function(kind: str, settings: dict, options: dict, data_dir=None):
  """(features(images in the data's pixel range) -> (N, D) array, description dict)."""
  from jaxgen import classifier, data, inception

  pixel_range = settings["pixel_range"]
  if kind == "classifier":
    directory = options["classifier_dir"] or classifier_directory(settings, data_dir)
    model, params, config = trained_classifier(settings, directory, options["classifier_epochs"],
                                               data_dir)
    fn = lambda images: classifier.features(model, params, data.to_model_range(
        images, pixel_range), options["batch_size"])
    return fn, {"kind": "classifier", "directory": os.path.abspath(directory),
                "dim": config["feature_dim"], "test_accuracy": config.get("test_accuracy"),
                "test_split": config.get("test_split")}
  if kind == "inception":
    variables, info = inception.load_weights(options["inception_weights"] or None)
    fn = lambda images: inception.features(
        variables, inception.to_inception_input(images, pixel_range), options["batch_size"])
    return fn, {"kind": "inception", "dim": inception.FEATURE_DIM, **info}
  raise ValueError(f"unknown feature network {kind!r}")




def feature_scores_against(reference, features, *, kid_subsets: int, kid_subset_size: int,
                           pr_k: int, seed: int, reference_statistics=None) -> dict:
  """{fid, kid, kid_std, precision, recall} of one feature set (N, D) against the reference's
  (`reference_statistics`: its `metrics.feature_statistics`, when already at hand)."""
  from jaxgen import metrics

  statistics = reference_statistics or metrics.feature_statistics(reference)
  out = {"fid": metrics.frechet_distance(*metrics.feature_statistics(features), *statistics)}
  out["kid"], out["kid_std"] = metrics.kid(features, reference, kid_subsets, kid_subset_size,
                                           seed)
  out.update(metrics.precision_recall(reference, features, k=pr_k))
  return out


def feature_scores(generated, reference, baseline, **options):
  """({metric: {"generated": value, "baseline": value}}, both against the reference; the
  warnings raised on the way (a singular covariance, say)). `options`: those of
  `feature_scores_against`."""
  import warnings

  from jaxgen import metrics

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    statistics = metrics.feature_statistics(reference)
    scores = {name: feature_scores_against(reference, features, reference_statistics=statistics,
                                           **options)
              for name, features in (("generated", generated), ("baseline", baseline))}
  notes = sorted({str(w.message) for w in caught})
  for note in notes:
    print(f"warning: {note}", file=sys.stderr)
  return {key: {name: scores[name][key] for name in scores} for key in FEATURE_KEYS}, notes


def blob_spec(settings: dict):
  """The BlobSpec of a blob run's data (its config.json settings)."""
  from jaxgen import data
  from jaxgen.blobs import BlobSpec

  return BlobSpec(settings["image_shape"][0], data.BLOB_DATASETS[settings["dataset"]],
                  settings.get("blob_width", 1.5), settings.get("blob_amplitude", 1.0))


def blob_scores(found: dict, reference: dict, spec) -> dict:
  """The blob numbers a table or a training curve shows, as one flat dict: BLOB_SUMMARY_KEYS of
  one set's detections (`blob_metrics.detect`) and BLOB_DIFFERENCE_KEYS against the reference's,
  each prefixed "blob_"."""
  from jaxgen import blob_metrics

  summary = blob_metrics.summary(found, spec)
  difference = blob_metrics.difference(found, reference)
  return {**{f"blob_{k}": summary[k] for k in BLOB_SUMMARY_KEYS},
          **{f"blob_{k}": difference[k] for k in BLOB_DIFFERENCE_KEYS}}


# ---------------------------------------------------------------------------------------------
# During training.

# KID during training: fewer subsets than `experiments.evaluate`'s 100, to keep an evaluation
# short; the mean is as unbiased, its spread over subsets a little larger.
DURING_TRAINING_KID_SUBSETS = 20


def during_training(config, source, latent_shape, title: str):
  """The evaluation a training loop runs every `config.eval_every` steps, or None when that is 0
  (or there is nothing to score: then it says so, once).

  Returns evaluate(writer, step, generate): `generate(z)` maps latents (64, *latent_shape) to
  images in [-1, 1] with the current parameters. It scores `config.eval_samples` generated
  images (the same latents every time, from their own key: the training's keys and data are
  untouched) against real ones, writes one metrics.jsonl row labelled "eval": true (each score
  beside its real-vs-real "baseline_" value) and eval_curves.png. Blob datasets get the blob
  metrics; labelled greyscale data the classifier features' FID, KID, precision and recall (the
  classifier trained once, here, if it is not saved yet). The real images' features and blobs
  are computed once, here.
  """
  if not config.eval_every:
    return None
  import jax
  import numpy as np
  from jaxgen import blob_metrics, classifier, data, metrics

  settings = {**dataclasses.asdict(config), "image_shape": list(source.image_shape),
              "pixel_range": [float(v) for v in source.pixel_range]}
  data_dir = config.data_dir or None
  blobs = config.dataset in data.BLOB_DATASETS
  labelled = not blobs and labelled_greyscale(settings, data_dir)
  if not (blobs or labelled):
    print(f"--eval_every: nothing to score on {config.dataset} during training (the classifier "
          f"needs labelled greyscale images; score FID Inception features after training with "
          f"experiments.evaluate); no evaluation rows", file=sys.stderr)
    return None
  n = config.eval_samples
  reference, baseline, _ = real_sets(settings, n, data_dir, flag="--eval_samples")
  if blobs:
    spec = blob_spec(settings)
    found_reference = blob_metrics.detect(reference, spec)
    baseline_row = blob_scores(blob_metrics.detect(baseline, spec), found_reference, spec)
  else:
    model, params, _ = trained_classifier(settings, classifier_directory(settings, data_dir),
                                          CLASSIFIER_EPOCHS, data_dir)
    extract = lambda images: np.asarray(classifier.features(
        model, params, data.to_model_range(images, settings["pixel_range"]), FEATURE_BATCH),
        np.float64)
    reference_features = extract(reference)
    options = dict(kid_subsets=DURING_TRAINING_KID_SUBSETS, kid_subset_size=n, pr_k=PR_K,
                   seed=config.seed)
    statistics = metrics.feature_statistics(reference_features)
    score_features = lambda images: feature_scores_against(
        reference_features, extract(images), reference_statistics=statistics, **options)
    baseline_row = score_features(baseline)
  chunks = -(-n // GENERATE_CHUNK)
  z = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(config.seed),
                                                      DURING_TRAINING_STREAM),
                                   (chunks, GENERATE_CHUNK, *latent_shape)))
  integer_pixels = tuple(settings["pixel_range"]) == (0.0, 255.0)
  keys = BLOB_CURVE_KEYS if blobs else ("fid", "kid", "precision", "recall")

  def evaluate(writer, step: int, generate) -> dict:
    start = time.perf_counter()
    images = np.concatenate([np.asarray(generate(z[i])) for i in range(chunks)])[:n]
    images = data.from_model_range(images, settings["pixel_range"])
    if integer_pixels:
      images = np.round(images)  # the 256 levels of the real data, as experiments.evaluate does
    if blobs:
      row = blob_scores(blob_metrics.detect(images, spec), found_reference, spec)
    else:
      row = score_features(images)
    row.update({f"baseline_{k}": v for k, v in baseline_row.items()})
    writer.evaluation(step, row, eval=True)
    writer.curves(keys, f"{title} on {config.dataset}: {n} samples against real images "
                  f"(dashed: real baseline)", name="eval_curves.png")
    seconds = time.perf_counter() - start
    writer.progress.exclude(seconds)  # steps_per_s counts training steps only
    shown = " ".join(f"{k}={row[k]:.4g} ({row['baseline_' + k]:.4g})" for k in keys[:4])
    print(f"eval at step {step} ({seconds:.1f} s; real baseline in brackets): {shown}",
          file=sys.stderr, flush=True)
    return row
  return evaluate
