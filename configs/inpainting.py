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
  common.pixel_pretext_defaults(config)   # ViT, decoder on the patch tokens, MAE's AdamW.

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    common.pixel_pretext_preset(config, preset)
    if preset == "smoke":
      config.method.decoder_dim, config.method.decoder_depth = 64, 1
      config.method.discriminator.widths = (16, 32, 64)
    elif preset == "imagenet":
      config.method.view.size = 128     # The paper's 128x128 input with a 64x64 central hole.
      config.method.decoder_dim, config.method.decoder_depth = 512, 4
      config.method.decoder_heads = 16
      d = config.method.discriminator  # DCGAN on 128x128: 64, 32, 16, 8, 4 pixels, 4x4 head.
      d.widths, d.kernel_sizes, d.paddings = (64, 128, 256, 512, 512), (4,) * 5, (1,) * 5
  return config
