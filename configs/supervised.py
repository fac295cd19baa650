r"""Supervised training: from-scratch baselines, fine-tuning, linear probing, 1% / 10% labels.

    python -m ssl_jax.train --config configs/supervised.py:smoke --workdir /tmp/sup_smoke
    python -m ssl_jax.train --config configs/supervised.py:cifar10 --workdir /tmp/sup_c10
    python -m ssl_jax.train --config configs/supervised.py:finetune_mae,cifar10 \
        --config.method.init_from=/tmp/mae_c10 --workdir /tmp/mae_c10_ft
    python -m ssl_jax.train --config configs/supervised.py:linear_mae,vit_b16,imagenet \
        --config.method.init_from=gs://.../mae_b16 --workdir gs://.../mae_b16_lin

Presets are comma-separated and applied in a fixed order whatever their order in the argument:
dataset (`smoke`, `digits` = the default, `cifar10`, `imagenet`), then backbone (`vit_b16`,
`vit_l16`, `vit_h14`), then recipe. A dataset alone is the supervised-from-scratch baseline
(DeiT's recipe on ImageNet). Recipes keep the dataset preset's batch size and schedule length on
the small datasets and use the paper's on ImageNet:

* `finetune_mae`: MAE fine-tuning (He et al. 2022, App. A.2; facebookresearch/mae FINETUNE.md):
  AdamW (0.9, 0.999), base lr 5e-4 at batch 256 (1e-3 for ViT-L/H), weight decay 0.05,
  layer-wise lr decay 0.65 (0.75 for ViT-L/H), drop path 0.1 (0.2 L, 0.3 H), mixup 0.8,
  cutmix 1.0, label smoothing 0.1, RandAugment m9 mstd0.5 (2 ops), global-pool + fc_norm,
  100 epochs (50 for L/H) with 5 warm-up, batch 1024. (RandErase 0.25 is left out.)
* `linear_mae`: MAE linear probing (`main_linprobe.py`): frozen backbone, CLS token ->
  BatchNorm without affine -> Linear, LARS base lr 0.1, no weight decay, 90 epochs with 10
  warm-up, batch 16384, crop + flip.
* `linear_dino`: DINO linear evaluation (`eval_linear.py`): frozen backbone, CLS tokens of the
  last 4 blocks concatenated -> Linear, SGD momentum 0.9, lr 1e-3 at batch 256, no weight
  decay, cosine, 100 epochs, batch 1024, crop + flip.
* `semi_1pct`, `semi_10pct`: fine-tune a self-supervised checkpoint on a class-balanced 1% / 10%
  labelled subset (`data.train_subset`), SimCLR's semi-supervised protocol (Chen et al. 2020,
  App. B.5: 60 / 30 epochs, crop + flip only) with the MAE fine-tuning optimizer for ViTs.
* `perceptual_mae_finetune`, `perceptual_mae_linear`: MAE's two recipes, which the Perceptual
  MAE paper (Tukra et al. 2023) follows, for Perceptual MAE checkpoints.

`method.init_from` must point at a run whose backbone matches `model.*`; the MAE recipes set
MAE's sin-cos position embeddings, and the small-data presets use the same ViTs as
configs/mae.py (`smoke`: `common.tiny_vit`; `digits`, `cifar10`: `common.small_vit`).
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

import ml_collections  # noqa: E402

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import supervised  # noqa: E402

DATASETS = ("smoke", "digits", "cifar10", "imagenet")
BACKBONES = ("vit_b16", "vit_l16", "vit_h14")
RECIPES = ("finetune_mae", "linear_mae", "linear_dino", "semi_1pct", "semi_10pct",
           "perceptual_mae_finetune", "perceptual_mae_linear")


def _is_imagenet(config) -> bool:
  return config.data.source.startswith("tfds:imagenet")


def _is_large_vit(config) -> bool:
  return config.model.name in ("vit_l16", "vit_h14")


def _dataset(config, preset: str) -> None:
  if preset == "smoke":
    common.smoke_data(config)
    common.tiny_vit(config)
    config.optim.lr = 1e-2
    config.optim.warmup_steps = 5
    config.method.view.size = config.data.image_size
    config.method.view.crop_scale = (0.35, 1.0)
  elif preset == "digits":
    common.digits_data(config)
    common.small_vit(config)
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 50
    config.method.view.size = config.data.image_size
  elif preset == "cifar10":
    common.cifar10_data(config)
    common.small_vit(config)
    config.optim.lr = 1e-3
    config.optim.warmup_epochs = 5
    config.method.view.size = config.data.image_size
    config.method.view.crop_scale = (0.25, 1.0)
  elif preset == "imagenet":
    # Supervised ViT from scratch: DeiT (Touvron et al. 2021, Table 9).
    common.imagenet_data(config)
    config.method.num_classes = 1000
    config.method.view.size = 224
    config.model.dtype = "bfloat16"
    if config.model.name == "vit_ti4":
      config.model.name = "vit_b16"
      common.full_size_vit(config)
    config.batch_size = 1024
    config.epochs = 300
    config.optim.lr = 2.5e-4          # DeiT: 5e-4 at batch 512.
    config.optim.warmup_epochs = 5
    config.optim.end_lr = 1e-5
    config.model.drop_path_rate = 0.1
    _strong_augmentation(config)


def _strong_augmentation(config) -> None:
  m = config.method
  m.label_smoothing = 0.1
  m.mixup_alpha, m.cutmix_alpha = 0.8, 1.0
  m.randaugment_layers = 2
  m.randaugment_magnitude, m.randaugment_magnitude_std = 9.0, 0.5


def _mae_backbone(config) -> None:
  config.model.pos_embed = "sincos"


def _finetune_mae(config, *, light_augmentation: bool = False) -> None:
  m = config.method
  _mae_backbone(config)
  m.feature = "global_pool"
  m.head_init_std = 2e-5
  config.optim.layer_decay = 0.75 if _is_large_vit(config) else 0.65
  config.model.drop_path_rate = {"vit_l16": 0.2, "vit_h14": 0.3}.get(config.model.name, 0.1)
  config.optim.name = "adamw"
  config.optim.b1, config.optim.b2 = 0.9, 0.999
  config.optim.weight_decay = 0.05
  config.optim.lr = 1e-3 if _is_large_vit(config) else 5e-4
  config.optim.end_lr = 1e-6
  m.view.crop_scale = (0.08, 1.0)
  if light_augmentation:
    m.label_smoothing = 0.0
    m.mixup_alpha = m.cutmix_alpha = 0.0
    m.randaugment_layers = 0
  else:
    _strong_augmentation(config)
  if _is_imagenet(config):
    config.batch_size = 1024
    config.epochs = 50 if _is_large_vit(config) else 100
    config.optim.warmup_epochs = 5


def _linear_mae(config) -> None:
  m = config.method
  _mae_backbone(config)
  m.freeze_backbone = True
  m.feature = "pooled"
  config.model.pool = "cls"
  config.model.drop_path_rate = 0.0
  config.optim.layer_decay = 1.0
  m.head_batch_norm = True
  m.head_init_std = 0.01
  m.label_smoothing, m.mixup_alpha, m.cutmix_alpha, m.randaugment_layers = 0.0, 0.0, 0.0, 0
  m.view.crop_scale = (0.08, 1.0)
  config.optim.name = "lars"
  config.optim.lr = 0.1
  config.optim.weight_decay = 0.0
  config.optim.momentum = 0.9
  config.optim.end_lr = 0.0
  if _is_imagenet(config):
    config.batch_size = 16384
    config.epochs = 50 if _is_large_vit(config) else 90
    config.optim.warmup_epochs = 10


def _linear_dino(config) -> None:
  m = config.method
  m.freeze_backbone = True
  m.feature = "last_blocks_cls"
  m.num_last_blocks = min(4, config.model.depth or 12)
  m.avgpool_patchtokens = False
  config.model.drop_path_rate = 0.0
  config.optim.layer_decay = 1.0
  m.head_batch_norm = False
  m.head_init_std = 0.01
  m.label_smoothing, m.mixup_alpha, m.cutmix_alpha, m.randaugment_layers = 0.0, 0.0, 0.0, 0
  m.view.crop_scale = (0.08, 1.0)
  config.optim.name = "sgd"
  config.optim.lr = 1e-3
  config.optim.momentum = 0.9
  config.optim.weight_decay = 0.0
  config.optim.warmup_steps, config.optim.warmup_epochs = 0, 0.0
  config.optim.end_lr = 0.0
  if _is_imagenet(config):
    config.batch_size = 1024
    config.epochs = 100


def _semi(config, fraction: float) -> None:
  _finetune_mae(config, light_augmentation=True)
  config.data.train_subset = f"fraction:{fraction:g}"
  if _is_imagenet(config):
    config.batch_size = 1024
    config.epochs = 60 if fraction <= 0.01 else 30
    config.optim.warmup_epochs = 0
  else:
    # The small splits hold ~15 (digits) / ~100 (CIFAR-10 10k) images at 1%: the batch must
    # fit in the subset, and a fixed step count replaces epochs of a handful of steps.
    digits = config.data.source == "digits"
    largest = (16 if digits else 64) if fraction <= 0.01 else 128
    config.batch_size = min(config.batch_size, largest)
    if not config.total_steps:
      config.total_steps, config.epochs = 1000, 0.0
    config.optim.warmup_epochs = 0.0
    config.optim.warmup_steps = min(20, config.total_steps // 10)


def get_config(arg: str = "digits"):
  config = config_lib.base_config()
  config.method = supervised.default_method_config()
  config.model.name = "vit_ti4"
  config.model.pool = "cls"
  config.optim.name = "adamw"
  config.optim.b1, config.optim.b2 = 0.9, 0.999
  config.optim.weight_decay = 0.05
  config.optim.lr = 1e-3
  # Linear probes: the backbone gets no update at all (no state, no weight decay); the group
  # follows method.freeze_backbone, which also runs the backbone in inference mode.
  config.optim.groups.backbone = ml_collections.ConfigDict(
      dict(pattern="encoder/.*", frozen=config.method.get_ref("freeze_backbone")))

  presets = common.parse_presets(arg, known=DATASETS + BACKBONES + RECIPES)
  datasets = [p for p in presets if p in DATASETS] or ["digits"]
  if len(datasets) > 1:
    raise ValueError(f"Choose one dataset preset, got {datasets}.")
  _dataset(config, datasets[0])
  for preset in [p for p in presets if p in BACKBONES]:
    config.model.name = preset
    common.full_size_vit(config)
  for preset in [p for p in presets if p in RECIPES]:
    if preset in ("finetune_mae", "perceptual_mae_finetune"):
      _finetune_mae(config)
    elif preset in ("linear_mae", "perceptual_mae_linear"):
      _linear_mae(config)
    elif preset == "linear_dino":
      _linear_dino(config)
    elif preset == "semi_1pct":
      _semi(config, 0.01)
    elif preset == "semi_10pct":
      _semi(config, 0.1)
  return config
