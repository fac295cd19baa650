r"""MoCo v3 (Chen, Xie & He 2021) configs.

    python -m ssl_jax.train --config configs/moco_v3.py:smoke --workdir /tmp/moco_v3_smoke
    python -m ssl_jax.train --config configs/moco_v3.py:imagenet --workdir gs://.../moco_v3_s16

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `digits` (the default),
`cifar10` (a small ViT) and `imagenet` (the published ViT-S/16 recipe, facebookresearch/moco-v3
`-a vit_small --optimizer=adamw --lr=1.5e-4 --weight-decay=.1 --epochs=300 --warmup-epochs=40
--stop-grad-conv1 --moco-m-cos --moco-t=.2`: AdamW (betas 0.9, 0.999) lr 1.5e-4 x B/256, batch
4096, T = 0.2, momentum 0.99 cosine to 1, 3-layer projector 4096 -> 256, 2-layer predictor,
frozen random patch projection, fixed 2-D sin-cos position embeddings, ViT-S with 12 heads;
with `--config.model.name` of another size, also pass `--config.model.num_heads=0`, its own).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

import ml_collections  # noqa: E402

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import moco, views  # noqa: E402


def vit_small_with_12_heads(config):
  """The named variant's published size, except that MoCo v3's ViT-S has 12 heads of 32
  channels (moco-v3 `vits.py`: `vit_small ... embed_dim=384, depth=12, num_heads=12`; the
  paper, Table 1: "ViT-S ... 12 heads", where DeiT's ViT-S has 6)."""
  common.full_size_vit(config)
  if config.model.name.startswith("vit_s"):
    config.model.num_heads = 12


def get_config(arg: str = "digits"):
  config = config_lib.base_config()
  config.method = moco.default_moco_v3_config()
  config.model.name = "vit_s16"
  vit_small_with_12_heads(config)
  config.model.pos_embed = "sincos"     # moco-v3 `build_2d_sincos_position_embedding`.
  config.model.pool = "cls"
  config.optim.name = "adamw"
  config.optim.lr = 1.5e-4              # x batch_size / 256.
  config.optim.b1, config.optim.b2 = 0.9, 0.999
  config.optim.weight_decay = 0.1
  config.optim.warmup_epochs = 40
  config.batch_size = 4096
  # `--stop-grad-conv1` in the ViT recipes: the random patch projection is never trained.
  config.optim.groups.patch_embed = ml_collections.ConfigDict(
      dict(pattern="encoder/patch_embed/.*", frozen=True))

  presets = common.parse_presets(arg, known=("smoke", "digits", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    if preset == "smoke":
      common.smoke_data(config)
      common.tiny_vit(config)
      config.method.proj_hidden_dim, config.method.proj_dim = 128, 64
      config.method.pred_hidden_dim = 128
      # Milder crops than the paper's 0.08: a few dozen steps on 8x8 digits upsampled.
      config.method.view1, config.method.view2 = views.moco_v3_views(
          config.data.image_size, blur_probs=(0.0, 0.0), crop_scale=(0.3, 1.0))
      config.optim.lr = 2e-3
      config.optim.warmup_epochs, config.optim.warmup_steps = 0.0, 5
    elif preset == "digits":
      common.digits_data(config)
      common.small_vit(config)
      config.method.proj_hidden_dim, config.method.proj_dim = 512, 128
      config.method.pred_hidden_dim = 512
      config.method.view1, config.method.view2 = views.moco_v3_views(
          config.data.image_size, blur_probs=(0.0, 0.0))
      config.optim.lr = 1e-3
      config.optim.warmup_epochs, config.optim.warmup_steps = 0.0, 50
    elif preset == "cifar10":
      common.cifar10_data(config)
      common.small_vit(config)
      config.method.proj_hidden_dim, config.method.proj_dim = 1024, 256
      config.method.pred_hidden_dim = 1024
      config.method.view1, config.method.view2 = views.moco_v3_views(32, blur_probs=(0.0, 0.0))
      config.optim.lr = 5e-4
      config.optim.warmup_epochs = 10
    elif preset == "imagenet":
      common.imagenet_data(config)
      if config.model.name == "vit_ti4":
        config.model.name = "vit_s16"
      vit_small_with_12_heads(config)
      config.model.dtype = "bfloat16"
      config.batch_size = 4096
      config.epochs = 300
      config.optim.lr = 1.5e-4
      config.optim.warmup_epochs = 40
      config.method.proj_hidden_dim, config.method.proj_dim = 4096, 256
      config.method.pred_hidden_dim = 4096
      config.method.view1, config.method.view2 = views.moco_v3_views(224)
    elif preset == "cpu":
      common.cpu_budget(config)
      config.method.proj_hidden_dim, config.method.proj_dim = 512, 128
      config.method.pred_hidden_dim = 512
  return config
