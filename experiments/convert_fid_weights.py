r"""Convert pytorch-fid's Inception weights to the .npz that jaxgen's FID network loads, once.

    pip install torch                      # only for this conversion; jaxgen never imports it
    wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m experiments.convert_fid_weights --source=pt_inception-2015-12-05-6726825d.pth \
        --out=fid_inception.npz
    export JAXGEN_FID_WEIGHTS=$PWD/fid_inception.npz   # or --inception_weights= of evaluate

The .npz holds every variable of `jaxgen.inception.FIDInception` under its Flax name
("params/Mixed_6b/branch7x7_2/conv/kernel", kernels transposed to HWIO), the sha256 of the
source file, and the sha256 of the converted variables, which `jaxgen.inception.load_weights`
checks. A source whose sha256 is not the published file's (6726825d0af5...) is refused
unless --allow_unpublished (for tests and comparisons on other weights): FIDs computed with
other weights are not comparable with published ones.
"""

import hashlib
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  # Defined when run as a program only, so that importing this module defines no global flags.
  flags.DEFINE_string("source", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
  flags.DEFINE_string("out", "fid_inception.npz", "the converted weights (.npz)")
  flags.DEFINE_bool("allow_unpublished", False, "convert a state dict of the FID architecture "
                    "that is not the published file (random weights for a comparison, say)")


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_state_dict(path: str) -> dict:
  """The .pth file's tensors as numpy arrays (torch is imported here and only here)."""
  try:
    import torch
  except ImportError:
    raise ValueError("reading a .pth file needs PyTorch for this one conversion: "
                     "pip install torch") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  if "state_dict" in state and not hasattr(state["state_dict"], "shape"):
    state = state["state_dict"]
  return {name: tensor.detach().cpu().numpy() for name, tensor in state.items()}


def convert(source: str, out: str, allow_unpublished: bool = False) -> str:
  from jaxgen import inception

  source_sha256 = file_sha256(source)
  published = source_sha256 == inception.PUBLISHED_SHA256
  if not published and not allow_unpublished:
    raise ValueError(f"{source} has sha256 {source_sha256[:16]}..., not the published "
                     f"{inception.PUBLISHED_FILE}'s {inception.PUBLISHED_SHA256[:16]}...; get "
                     f"it from {inception.PUBLISHED_URL} (or pass --allow_unpublished)")
  flat = inception.from_state_dict(read_state_dict(source))
  digest = inception.save_weights(out, flat, source_sha256)
  kind = "the published FID weights" if published else "UNPUBLISHED weights"
  return (f"wrote {out}: {len(flat)} variables of {kind} (source sha256 {source_sha256[:16]}..., "
          f"content sha256 {digest})")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; see --help")
  if not FLAGS.source:
    from jaxgen import inception
    sys.exit(f"error: --source is required: pytorch-fid's weights file, from "
             f"{inception.PUBLISHED_URL}")
  try:
    print(convert(FLAGS.source, FLAGS.out, FLAGS.allow_unpublished))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
