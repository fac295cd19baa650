r"""Context prediction (Doersch et al. 2015) configs: the relative position of two patches.

    python -m ssl_jax.train --config configs/context.py:smoke --workdir /tmp/context_smoke
    python -m ssl_jax.train --config configs/context.py:cifar10 --workdir /tmp/context_c10
    python -m ssl_jax.train --config configs/context.py:imagenet --workdir gs://.../context_r50

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `cifar10` (ResNet-18 with
the CIFAR stem; 8 px patches, 2 px gap, 1 px jitter), `imagenet` (the paper's 96 px patches,
48 px gap and 7 px jitter at images of 150k-450k pixels, scaled to the 256 px canvas: 56 px
patches, 28 px gap, 7 px jitter; ResNet-50 with SGD), `cpu` (after `cifar10`: the fixed CPU
budget of docs/results.md).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import context  # noqa: E402


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = context.default_method_config()
  common.pretext_classifier_defaults(config)

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    common.patch_arrangement_preset(config, preset)
    if preset == "smoke":
      config.method.patch_size, config.method.gap, config.method.jitter = 8, 2, 1
    elif preset == "cifar10":
      config.method.patch_size, config.method.gap, config.method.jitter = 8, 2, 1
      config.method.mean, config.method.std = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)
    elif preset == "imagenet":
      config.method.patch_size, config.method.gap, config.method.jitter = 56, 28, 7
  return config
