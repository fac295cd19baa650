r"""Jigsaw puzzles (Noroozi & Favaro 2016) configs.

    python -m ssl_jax.train --config configs/jigsaw.py:smoke --workdir /tmp/jigsaw_smoke
    python -m ssl_jax.train --config configs/jigsaw.py:cifar10 --workdir /tmp/jigsaw_c10
    python -m ssl_jax.train --config configs/jigsaw.py:imagenet --workdir gs://.../jigsaw_r50

Presets (comma-separated, later ones win): `smoke` (CPU, seconds; 100 permutations), `cifar10`
(ResNet-18 with the CIFAR stem, 8 px tiles in 10 px cells of a 30 px crop, 100 permutations),
`imagenet` (the paper's geometry: a 225 px crop, 75 px cells, 64 px tiles, 1000 permutations;
ResNet-50 trained with SGD), `cpu` (after `cifar10`: the fixed CPU budget of docs/results.md).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import jigsaw  # noqa: E402


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = jigsaw.default_method_config()
  common.pretext_classifier_defaults(config)

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    common.patch_arrangement_preset(config, preset)
    if preset in ("smoke", "cifar10"):
      config.method.num_permutations = 100
      config.method.cell_size, config.method.tile_size = 10, 8
    elif preset == "imagenet":       # Batch 256 x 9 tiles = 2304 crops a step.
      config.method.num_permutations = 1000
      config.method.cell_size, config.method.tile_size = 75, 64
  return config
