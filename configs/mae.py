r"""MAE (He et al. 2021) configs.

    python -m ssl_jax.train --config configs/mae.py:smoke --workdir /tmp/mae_smoke
    python -m ssl_jax.train --config configs/mae.py:cifar10 --workdir /tmp/mae_c10
    python -m ssl_jax.train --config configs/mae.py:vit_b16,imagenet --workdir gs://.../mae_b16

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `digits` (the default:
bundled scikit-learn digits, a few minutes on CPU), `cifar10` (../shared/data or any
npz:PATH), `imagenet` (the paper's recipe, Table 8 / Appendix A.1), and backbones `vit_b16`,
`vit_l16`, `vit_h14`.
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import mae  # noqa: E402


def get_config(arg: str = "digits"):
  config = config_lib.base_config()
  config.method = mae.default_method_config()
  config.model.name = "vit_ti4"
  config.model.pos_embed = "sincos"   # MAE uses fixed 2-D sin-cos position embeddings.
  config.model.pool = "mean"          # Mean of patch tokens, MAE's fine-tuning default.
  config.optim.name = "adamw"
  config.optim.lr = 1.5e-4            # Base lr (paper: 1.5e-4 at batch 256, linear scaling).
  config.optim.b1, config.optim.b2 = 0.9, 0.95
  config.optim.weight_decay = 0.05

  presets = common.parse_presets(arg, known=("smoke", "digits", "cifar10", "imagenet",
                                             "vit_b16", "vit_l16", "vit_h14", "cpu"))
  for preset in presets:
    if preset == "smoke":
      common.smoke_data(config)
      common.tiny_vit(config)
      config.method.decoder_dim, config.method.decoder_depth = 64, 1
      config.method.decoder_heads = 4
      config.method.view.size = config.data.image_size
      config.optim.lr = 1.5e-3
      config.optim.warmup_steps = 5
    elif preset == "digits":
      common.digits_data(config)
      common.small_vit(config)
      config.method.decoder_dim, config.method.decoder_depth = 128, 2
      config.method.decoder_heads = 4
      config.method.view.size = config.data.image_size
      config.optim.lr = 1.5e-3
      config.optim.warmup_steps = 50
    elif preset == "cifar10":
      common.cifar10_data(config)
      common.small_vit(config)
      config.method.decoder_dim, config.method.decoder_depth = 128, 2
      config.method.decoder_heads = 4
      config.method.view.size = config.data.image_size
      config.optim.lr = 1.5e-3
      config.optim.warmup_epochs = 10
    elif preset == "imagenet":
      common.imagenet_data(config)
      config.batch_size = 4096
      config.epochs = 800
      config.optim.warmup_epochs = 40
      config.optim.lr = 1.5e-4
      config.method.view.size = 224
      config.method.decoder_dim, config.method.decoder_depth = 512, 8
      config.method.decoder_heads = 16
      config.model.dtype = "bfloat16"
      if config.model.name == "vit_ti4":
        config.model.name = "vit_b16"
    elif preset in ("vit_b16", "vit_l16", "vit_h14"):
      config.model.name = preset
      common.full_size_vit(config)
    elif preset == "cpu":
      common.mae_cpu_budget(config)
  return config

