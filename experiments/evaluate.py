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

from absl import app, flags, logging

from jaxgen import evaluation

FEATURES = ("auto", "classifier", "inception", "none")
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
    "classifier_epochs": (evaluation.CLASSIFIER_EPOCHS, "epochs of the classifier's one-time "
                          "training"),
    "batch_size": (evaluation.FEATURE_BATCH, "images per feature-network call"),
    "kid_subsets": (100, "KID: number of random subsets"),
    "kid_subset_size": (1000, "KID: images per subset"),
    "pr_k": (evaluation.PR_K, "precision/recall: the k of the k-NN radii"),
    "data_dir": ("", "where image datasets are cached (default: the run's --data_dir)"),
}
DEFAULT_OPTIONS = {name: default for name, (default, _) in OPTIONS.items()}


def define_flags() -> None:
  # Defined when run as a program only: experiments.sample defines flags of the same names.
  flags.DEFINE_string("workdir", None, "work directory of a training run")
  for name, (default, help_text) in OPTIONS.items():
    define = flags.DEFINE_integer if isinstance(default, int) else flags.DEFINE_string
    define(name, default, help_text)


def evaluate(workdir_path: str, **options) -> dict:
  """Scores the run in `workdir_path` (options: OPTIONS, defaults DEFAULT_OPTIONS); writes
  evaluation.json and the plots; returns what evaluation.json holds."""
  import numpy as np
  from experiments import sample
  from jaxgen import blob_metrics, data, evaluation_plots, report

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
  kind = evaluation.choose_features(options["features"], settings, options["inception_weights"],
                                    data_dir)
  extract, feature_info = (None, {"kind": "none"}) if kind == "none" else \
      evaluation.feature_function(kind, settings, options, data_dir)  # a missing file fails fast
  generated, settings, step = sample.draw_samples(workdir_path, num_samples, options["seed"])
  if tuple(settings["pixel_range"]) == (0.0, 255.0):
    generated = np.round(generated)  # the 256 levels of the real data, as a PNG would hold
  reference, baseline, about = evaluation.real_sets(settings, num_samples, data_dir)
  result = {"workdir": os.path.abspath(workdir_path), "step": int(step),
            "num_samples": num_samples, "seed": options["seed"], "dataset": settings["dataset"],
            **about, "features": feature_info}
  if extract is not None:
    feats = {name: np.asarray(extract(images), np.float64) for name, images in
             (("generated", generated), ("reference", reference), ("baseline", baseline))}
    result["scores"], result["warnings"] = evaluation.feature_scores(
        feats["generated"], feats["reference"], feats["baseline"],
        kid_subsets=options["kid_subsets"], kid_subset_size=options["kid_subset_size"],
        pr_k=options["pr_k"], seed=options["seed"])
    evaluation_plots.feature_scatter(
        feats["reference"], feats["generated"], os.path.join(workdir_path, "feature_scatter.png"),
        title=f"{kind} features, step {step}: real (reference) and generated")
  if settings["dataset"] in data.BLOB_DATASETS:
    spec = evaluation.blob_spec(settings)
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
    for key in evaluation.BLOB_SUMMARY_KEYS:
      lines.append(row(f"blob {key}", f"{g[key]:.4g}", f"{b[key]:.4g}"))
    gd, bd = blobs["generated_vs_reference"], blobs["baseline_vs_reference"]
    for key in evaluation.BLOB_DIFFERENCE_KEYS:
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
