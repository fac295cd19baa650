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
  config.model.name = "vit_ti4"
  config.model.pool = "mean"   # The per-cell head trains the patch tokens; pool those.
  common.vit_adamw(config, lr=1.5e-4, warmup_steps=0)
  config.optim.b1, config.optim.b2 = 0.9, 0.95

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    if preset == "smoke":
      common.smoke_data(config)
      common.tiny_vit(config)
      config.method.view.size = config.data.image_size
      config.optim.lr = 1.5e-3
      config.optim.warmup_steps = 5
    elif preset == "cifar10":
      common.cifar10_data(config)
      common.small_vit(config)
      config.method.view.size = config.data.image_size
      config.optim.lr = 1.5e-3
      config.optim.warmup_steps = 0
      config.optim.warmup_epochs = 10
    elif preset == "imagenet":
      common.imagenet_data(config)
      config.model.name = "vit_b16"
      common.full_size_vit(config)
      config.model.dtype = "bfloat16"
      config.batch_size = 1024
      config.epochs = 100
      config.optim.lr = 1.5e-4
      config.optim.warmup_steps = 0
      config.optim.warmup_epochs = 10
      config.method.view.size = 224
    elif preset == "cpu":
      common.cpu_budget(config)
  return config
