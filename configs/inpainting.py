r"""Inpainting (Context Encoders, Pathak et al. 2016) configs.

    python -m ssl_jax.train --config configs/inpainting.py:smoke --workdir /tmp/inpaint_smoke
    python -m ssl_jax.train --config configs/inpainting.py:cifar10 --workdir /tmp/inpaint_c10
    python -m ssl_jax.train --config configs/inpainting.py:imagenet --workdir gs://.../inpaint
    ... --config.method.adversarial_weight=0.001   # the paper's joint loss (Eq. 3)
    ... --config.method.region=random              # a block at a random position per image

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `cifar10` (../shared/data or
any npz:PATH), `cifar10,cpu` (the fixed CPU budget shared by every method, configs/common.py),
`imagenet` (the paper's 128x128 input with a 64x64 central hole, ViT-B/16). The paper trains an
AlexNet-style encoder with Adam (lr 2e-4 for the generator); with a ViT we use the AdamW recipe
of the other ViT methods here.
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import inpainting  # noqa: E402


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = inpainting.default_method_config()
  config.model.name = "vit_ti4"
  config.model.pool = "mean"   # The decoder reads the patch tokens; pool those.
  common.vit_adamw(config, lr=1.5e-4, warmup_steps=0)
  config.optim.b1, config.optim.b2 = 0.9, 0.95

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    if preset == "smoke":
      common.smoke_data(config)
      common.tiny_vit(config)
      config.method.decoder_dim, config.method.decoder_depth = 64, 1
      config.method.view.size = config.data.image_size
      config.method.discriminator.widths = (16, 32, 64)
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
      config.method.view.size = 128
      config.method.decoder_dim, config.method.decoder_depth = 512, 4
      config.method.decoder_heads = 16
      d = config.method.discriminator  # DCGAN on 128x128: 64, 32, 16, 8, 4 pixels, 4x4 head.
      d.widths, d.kernel_sizes, d.paddings = (64, 128, 256, 512, 512), (4,) * 5, (1,) * 5
    elif preset == "cpu":
      common.cpu_budget(config)
  return config
