r"""Colorization (Zhang et al. 2016, "Colorful Image Colorization") configs.

    python -m ssl_jax.train --config configs/colorization.py:smoke --workdir /tmp/color_smoke
    python -m ssl_jax.train --config configs/colorization.py:cifar10 --workdir /tmp/color_c10
    python -m ssl_jax.train --config configs/colorization.py:imagenet --workdir gs://.../color

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `cifar10` (../shared/data or
any npz:PATH), `cifar10,cpu` (the fixed CPU budget shared by every method, configs/common.py),
`imagenet` (ViT-B/16 at 224: 14x14 tokens, 4x4 cells each, the paper's 56x56 output grid).
The paper trains a VGG-style net with Adam (lr 3e-5, batch 40); with a ViT we use the AdamW
recipe of the other ViT methods here.
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import colorization  # noqa: E402


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = colorization.default_method_config()
  common.pixel_pretext_defaults(config)   # ViT, per-cell head on the patch tokens, MAE's AdamW.

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    common.pixel_pretext_preset(config, preset)
    if preset == "imagenet":
      config.method.view.size = 224     # 14x14 tokens of 4x4 cells: the paper's 56x56 grid.
  return config
