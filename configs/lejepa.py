r"""LeJEPA (Balestriero & LeCun 2025) configs.

    python -m ssl_jax.train --config configs/lejepa.py:smoke --workdir /tmp/lejepa_smoke
    python -m ssl_jax.train --config configs/lejepa.py:cifar10 --workdir /tmp/lejepa_c10
    python -m ssl_jax.train --config configs/lejepa.py:imagenet --workdir gs://.../lejepa_vit_b16

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `digits` (the default,
bundled digits, minutes on CPU), `cifar10` (a small ViT, 2 global 32 px + 6 local 16 px crops),
`imagenet` (ViT-B/16, 2 x 224 + 6 x 96 crops, AdamW lr 5e-4 x B/256, wd 0.05), `resnet50`
(the ResNet backbone instead of the ViT, after `imagenet`), and `cpu` (the fixed CPU budget
shared by every method, after `cifar10`). The ViTs have no class token: the representation is
fc_norm(mean of the patch tokens), timm's `class_token=False, global_pool='avg'`. Numbers not
from the paper (recorded in docs/methods.md) are marked as such.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import lejepa  # noqa: E402


def _crops(config, global_size: int, local_size: int, num_local: int, blur: bool) -> None:
  m = config.method
  m.global_view.size, m.local_view.size = global_size, local_size
  m.num_local_views = num_local
  if not blur:                     # No blur at 32 px (SimCLR B.9, solo-learn CIFAR).
    m.global_view.blur_prob = m.local_view.blur_prob = 0.0


def _patch_pooled_vit(config) -> None:
  config.model.class_token = False
  config.model.pool = "mean"


def _small_images(config, num_local: int, proj: tuple[int, int], num_slices: int) -> None:
  """32 px global / 16 px local crops without blur, a CLS-free ViT, a narrower projector."""
  _patch_pooled_vit(config)
  _crops(config, 32, 16, num_local=num_local, blur=False)
  m = config.method
  m.proj_hidden_dim, m.proj_dim = proj
  m.num_slices = num_slices


def get_config(arg: str = "digits"):
  config = config_lib.base_config()
  config.method = lejepa.default_method_config()
  config.model.name = "vit_b16"
  _patch_pooled_vit(config)
  config.model.pos_embed = "learn"     # Resampled bicubically for the local crops.
  config.optim.name = "adamw"
  config.optim.lr = 5e-4               # x batch_size / 256.
  config.optim.weight_decay = 0.05
  config.optim.b1, config.optim.b2 = 0.9, 0.999
  config.optim.warmup_epochs = 10
  config.optim.end_lr = 1e-6

  presets = common.parse_presets(arg, known=("smoke", "digits", "cifar10", "imagenet",
                                             "resnet50", "cpu"))
  for preset in presets:
    if preset == "smoke":
      common.smoke_data(config)
      common.tiny_vit(config)
      _small_images(config, num_local=2, proj=(128, 32), num_slices=64)
      common.vit_adamw(config, lr=2e-3, warmup_steps=5)
    elif preset == "digits":
      common.digits_data(config)
      common.small_vit(config)
      _small_images(config, num_local=4, proj=(512, 64), num_slices=256)
      common.vit_adamw(config, lr=1e-3, warmup_steps=50)
    elif preset == "cifar10":
      common.cifar10_data(config)
      common.small_vit(config)
      _small_images(config, num_local=6, proj=(1024, 128), num_slices=512)
      config.model.drop_path_rate = 0.1
    elif preset == "imagenet":
      common.imagenet_data(config)
      config.model.name = "vit_b16"
      common.full_size_vit(config)
      _patch_pooled_vit(config)
      config.model.dtype = "bfloat16"
      config.model.drop_path_rate = 0.1
      config.batch_size = 1024
      config.epochs = 100
      _crops(config, 224, 96, num_local=6, blur=True)
    elif preset == "resnet50":
      config.model.name, config.model.stem = "resnet50", "imagenet"
    elif preset == "cpu":
      common.cpu_budget(config)
      _patch_pooled_vit(config)
      m = config.method
      m.num_local_views = 4
      m.proj_hidden_dim, m.proj_dim, m.num_slices = 512, 64, 256
  return config
