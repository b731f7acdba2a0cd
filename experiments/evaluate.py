r"""Score a trained run against real images, with a real-vs-real baseline beside every number.

    python -m experiments.evaluate --workdir=runs/wgan_gp                 # blobs: blob metrics
    python -m experiments.evaluate --workdir=runs/mnist --features=classifier
    python -m experiments.evaluate --workdir=runs/cifar10 --features=inception \
        --inception_weights=fid_inception.npz                             # or $JAXGEN_FID_WEIGHTS

Three sets of --num_samples images each:
  generated  from the run's latest checkpoint (latents from --seed);
  reference  real images: the training split (image datasets), or fresh draws of the blob
             generator from a fixed seed (blobs);
  baseline   other real images: the test split (the validation split for Imagenette; two
             disjoint parts of the training split when there is none), or blobs from another
             seed. Its scores against the reference are what a perfect generator would get at
             this sample size: FID and KID are biased upwards at finite N, so a generator's
             number means something only beside the baseline's.
Scores of generated-vs-reference and baseline-vs-reference: FID (Frechet distance of the
features' Gaussians), KID (mean and std over subsets), precision and recall (k-NN manifolds)
on the chosen features; for blob datasets also the blob metrics of jaxgen.blob_metrics.

Writes evaluation.json, feature_scatter.png and (blobs) blob_histograms.png into --workdir and
prints a table.
"""

import os
import sys
import time

from absl import app, flags, logging

FEATURES = ("auto", "classifier", "inception", "none")
# Real blob images come from the generator itself: seeds no training run uses by default.
BLOB_REFERENCE_SEED, BLOB_BASELINE_SEED = 1_000_001, 1_000_002
FLAGS = flags.FLAGS


# Every option of `evaluate`, with its default and the help of its flag.
OPTIONS = {
    "num_samples": (10000, "images in each of the three sets (generated, reference, baseline)"),
    "seed": (0, "seed of the generated latents and of KID's subsets"),
    "features": ("auto", "feature network of FID/KID/precision/recall: classifier (trained once "
                 "on the dataset's labels), inception (pytorch-fid's FID Inception, weights "
                 "from --inception_weights), none; auto picks the classifier for labelled "
                 "greyscale data, else inception when weights are given, else none"),
    "inception_weights": ("", "converted FID Inception weights (.npz); default "
                          "$JAXGEN_FID_WEIGHTS"),
    "classifier_dir": ("", "where the dataset's classifier is saved (trained there on first "
                       "use); default <data_dir>/jaxgen_classifiers/<dataset>-<size>px"),
    "classifier_epochs": (3, "epochs of the classifier's one-time training"),
    "batch_size": (200, "images per feature-network call"),
    "kid_subsets": (100, "KID: number of random subsets"),
    "kid_subset_size": (1000, "KID: images per subset"),
    "pr_k": (3, "precision/recall: the k of the k-NN radii"),
    "data_dir": ("", "where image datasets are cached (default: the run's --data_dir)"),
}
DEFAULT_OPTIONS = {name: default for name, (default, _) in OPTIONS.items()}


def define_flags() -> None:
  # Defined when run as a program only: experiments.sample defines flags of the same names.
  flags.DEFINE_string("workdir", None, "work directory of a training run")
  for name, (default, help_text) in OPTIONS.items():
    define = flags.DEFINE_integer if isinstance(default, int) else flags.DEFINE_string
    define(name, default, help_text)


# ---------------------------------------------------------------------------------------------
# Real images.


def _as_float(images):
  import numpy as np
  return np.asarray(images, np.float32)


def real_sets(settings: dict, num_samples: int, data_dir=None):
  """(reference, baseline, description): real images in the data's own pixel range."""
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
    raise ValueError(f"{dataset} has {source.num_examples} training images, fewer than "
                     f"--num_samples={num_samples}")
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
    raise ValueError(f"{dataset} has no {split} split of {num_samples} images and its "
                     f"{source.num_examples} training images do not make two disjoint sets; "
                     f"use --num_samples={source.num_examples // 2} or fewer")
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


def choose_features(requested: str, settings: dict, inception_weights: str, data_dir=None):
  """The feature network `auto` means for this run."""
  if requested != "auto":
    return requested
  from jaxgen import data, image_cache, inception

  dataset = settings["dataset"]
  if dataset not in data.BLOB_DATASETS and settings["image_shape"][-1] == 1:
    _, labels, _ = image_cache.cached_images(dataset, image_size=settings["image_shape"][0],
                                                data_dir=data_dir)
    if labels is not None:
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


# ---------------------------------------------------------------------------------------------
# Scores.


def feature_scores(generated, reference, baseline, options: dict):
  """({metric: {"generated": value, "baseline": value}}, both against the reference; the
  warnings raised on the way (a singular covariance, say))."""
  import warnings

  from jaxgen import metrics

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ref_stats = metrics.feature_statistics(reference)
    out = {"fid": {}, "kid": {}, "kid_std": {}, "precision": {}, "recall": {}}
    for name, features in (("generated", generated), ("baseline", baseline)):
      out["fid"][name] = metrics.frechet_distance(*metrics.feature_statistics(features),
                                                  *ref_stats)
      out["kid"][name], out["kid_std"][name] = metrics.kid(
          features, reference, options["kid_subsets"], options["kid_subset_size"],
          options["seed"])
      pr = metrics.precision_recall(reference, features, k=options["pr_k"])
      out["precision"][name], out["recall"][name] = pr["precision"], pr["recall"]
  notes = sorted({str(w.message) for w in caught})
  for note in notes:
    print(f"warning: {note}", file=sys.stderr)
  return out, notes


def evaluate(workdir_path: str, **options) -> dict:
  """Scores the run in `workdir_path` (options: OPTIONS, defaults DEFAULT_OPTIONS); writes
  evaluation.json and the plots; returns what evaluation.json holds."""
  import numpy as np
  from experiments import sample
  from jaxgen import blob_metrics, data, evaluation_plots, report
  from jaxgen.blobs import BlobSpec

  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise ValueError(f"unknown evaluation option {unknown[0]!r}")
  options = {**DEFAULT_OPTIONS, **options}
  num_samples = options["num_samples"]
  if num_samples < 2:
    raise ValueError(f"--num_samples must be at least 2, got {num_samples}")
  if options["features"] not in FEATURES:
    raise ValueError(f"--features must be one of {', '.join(FEATURES)}, got "
                     f"{options['features']!r}")
  from jaxgen import workdir
  settings = workdir.load_config(workdir_path)
  data_dir = options.get("data_dir") or settings.get("data_dir") or None
  kind = choose_features(options["features"], settings, options["inception_weights"], data_dir)
  extract, feature_info = (None, {"kind": "none"}) if kind == "none" else feature_function(
      kind, settings, options, data_dir)  # before sampling: a missing weights file fails fast
  generated, settings, step = sample.draw_samples(workdir_path, num_samples, options["seed"])
  if tuple(settings["pixel_range"]) == (0.0, 255.0):
    generated = np.round(generated)  # the 256 levels of the real data, as a PNG would hold
  reference, baseline, about = real_sets(settings, num_samples, data_dir)
  result = {"workdir": os.path.abspath(workdir_path), "step": int(step),
            "num_samples": num_samples, "seed": options["seed"], "dataset": settings["dataset"],
            **about, "features": feature_info}
  if extract is not None:
    feats = {name: np.asarray(extract(images), np.float64) for name, images in
             (("generated", generated), ("reference", reference), ("baseline", baseline))}
    result["scores"], result["warnings"] = feature_scores(
        feats["generated"], feats["reference"], feats["baseline"], options)
    evaluation_plots.feature_scatter(
        feats["reference"], feats["generated"], os.path.join(workdir_path, "feature_scatter.png"),
        title=f"{kind} features, step {step}: real (reference) and generated")
  if settings["dataset"] in data.BLOB_DATASETS:
    spec = BlobSpec(settings["image_shape"][0], data.BLOB_DATASETS[settings["dataset"]],
                    settings.get("blob_width", 1.5), settings.get("blob_amplitude", 1.0))
    found = {name: blob_metrics.detect(images, spec) for name, images in
             (("generated", generated), ("reference", reference), ("baseline", baseline))}
    result["blobs"] = {
        "generated": blob_metrics.summary(found["generated"], spec),
        "reference": blob_metrics.summary(found["reference"], spec),
        "baseline": blob_metrics.summary(found["baseline"], spec),
        "generated_vs_reference": blob_metrics.difference(found["generated"], found["reference"]),
        "baseline_vs_reference": blob_metrics.difference(found["baseline"], found["reference"])}
    evaluation_plots.blob_histograms(
        {"reference": found["reference"], "generated": found["generated"]},
        os.path.join(workdir_path, "blob_histograms.png"), spec.num_blobs,
        f"{settings['dataset']}, step {step}")
  report.write_json(os.path.join(workdir_path, "evaluation.json"), result)
  return result


def table(result: dict) -> str:
  """The evaluation as a short text table."""
  features = result["features"]
  about = {"classifier": lambda: f" (classifier test accuracy {features['test_accuracy']})",
           "inception": lambda: "" if features["published"] else
           " (NOT the published weights: not comparable with published FIDs)"}
  row = lambda name, g, b: f"{name:<30} {g:>16} {b:>16}"
  lines = [f"{result['workdir']} at step {result['step']}: {result['num_samples']} images per "
           f"set, {features['kind']} features{about.get(features['kind'], str)()}",
           f"  reference: {result['reference']}", f"  baseline:  {result['baseline']}",
           row("metric", "generated", "real baseline")]
  scores = result.get("scores")
  if scores:
    for name in ("fid", "kid", "precision", "recall"):
      g, b = scores[name]["generated"], scores[name]["baseline"]
      if name == "kid":
        gs, bs = scores["kid_std"]["generated"], scores["kid_std"]["baseline"]
        lines.append(row("kid (+- std over subsets)", f"{g:.3g}+-{gs:.2g}", f"{b:.3g}+-{bs:.2g}"))
      else:
        lines.append(row(name, f"{g:.4g}", f"{b:.4g}"))
  blobs = result.get("blobs")
  if blobs:
    g, b = blobs["generated"], blobs["baseline"]
    for key in ("count_exact_fraction", "count_mean", "width_mean", "amplitude_mean",
                "elongation_mean", "streak_fraction", "centre_ks", "background_mean"):
      lines.append(row(f"blob {key}", f"{g[key]:.4g}", f"{b[key]:.4g}"))
    gd, bd = blobs["generated_vs_reference"], blobs["baseline_vs_reference"]
    for key in ("count_tv", "width_w1", "amplitude_w1"):
      lines.append(row(f"blob {key} vs reference", f"{gd[key]:.4g}", f"{bd[key]:.4g}"))
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; settings are --flags (see --help)")
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir:
    sys.exit("error: --workdir is required: the work directory of a training run")
  try:
    result = evaluate(FLAGS.workdir, **{name: FLAGS[name].value for name in OPTIONS})
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(table(result))
  print(f"wrote {os.path.join(FLAGS.workdir, 'evaluation.json')}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
