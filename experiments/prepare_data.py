"""Prepare and cache jaxgen's image datasets ahead of training.

For example on a login node that has the network, before training on nodes that do not:

  python -m experiments.prepare_data mnist celeba --image_size=64 --data_dir=/data/tfds

Each dataset is prepared with TFDS (downloading, or from the raw files placed in
<data_dir>/downloads/manual/<tfds name>/) and decoded into <data_dir>/jaxgen_cache/ at the image
size that training uses, so the training nodes need neither the raw files nor TFDS's copy.
"""

import argparse
import os
import sys

from jaxgen import data, image_cache, tfds_prepare


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description="prepare and cache jaxgen's image datasets")
  parser.add_argument("datasets", nargs="+", help=", ".join(image_cache.dataset_names()))
  parser.add_argument("--image_size", type=int, default=0,
                      help="default: what training picks, 64 for celeba and imagenette, else 32")
  parser.add_argument("--data_dir", default=None,
                      help="default: $TFDS_DATA_DIR or ~/tensorflow_datasets")
  parser.add_argument("--split", default="train", choices=tfds_prepare.SPLITS,
                      help="default: train ('test' is Imagenette's 'validation')")
  arguments = parser.parse_args(argv)
  cache = os.path.join(arguments.data_dir or tfds_prepare.default_data_dir(),
                       image_cache.CACHE_FOLDER)
  for name in arguments.datasets:
    try:
      size = arguments.image_size or data.default_image_size(name)
      images, labels, meta = image_cache.cached_images(name, image_size=size,
                                                       split=arguments.split,
                                                       data_dir=arguments.data_dir)
    except (ValueError, FileNotFoundError) as e:  # tfds_prepare.DatasetError is a ValueError
      sys.exit(f"error: {e}")
    tfds_prepare.log(f"{name}: {meta['num_examples']} images of {tuple(images.shape[1:])}, "
                     f"{'with' if labels is not None else 'without'} labels, cached under {cache}")


if __name__ == "__main__":
  main()
