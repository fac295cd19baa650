r"""PAWS (Assran et al. 2021) configs: semi-supervised, an unlabelled and a support stream.

    python -m ssl_jax.train --config configs/paws.py:smoke --workdir /tmp/paws_smoke
    python -m ssl_jax.train --config configs/paws.py:cifar10 --workdir /tmp/paws_c10
    python -m ssl_jax.train --config configs/paws.py:imagenet --workdir gs://.../paws_1pct
    python -m ssl_jax.train --config configs/paws.py:imagenet,10pct --workdir gs://.../paws_10pct

Fine-tuning the PAWS encoder on the same labelled subset (the paper's Sec. 5 fine-tuning; the
backbone is found inside the PAWS params by `method.init_from`):

    python -m ssl_jax.train --config configs/supervised.py:smoke \
        --config.method.init_from=/tmp/paws_smoke --config.data.train_subset=per_class:10 \
        --workdir /tmp/paws_smoke_ft
    python -m ssl_jax.train --config configs/supervised.py:cifar10 \
        --config.model.name=resnet18 --config.model.stem=cifar \
        --config.method.init_from=/tmp/paws_c10 --config.data.train_subset=per_class:400 \
        --workdir /tmp/paws_c10_ft

Every preset evaluates `knn` (backbone features over the whole train split) and `softnn` (the
paper's soft nearest-neighbour classifier of the projection over the LABELLED subset only,
`eval/softnn_top1` on the test split).

Presets (comma-separated, later ones win):
* `smoke`: digits, a tiny ViT, 10 classes x 4 supports, 2 local views; seconds on CPU.
* `cifar10`: suncet configs/paws/cifar10_train.yaml on the 10k split of ../shared/data with a
  class-balanced 4000-label subset (per_class:400; the paper's 4000 labels are of 50k):
  unlabelled batch 256, support 10 classes x 64 images x 2 views, 2x32 (crop 0.75-1) + 6x18
  (crop 0.3-0.75) views, colour strength 0.5, no blur, projection 128-d without prediction head,
  LARS lr 0.8 -> 3.2 -> 0.032, wd 1e-6, 10 warm-up epochs, 600 epochs. Backbone: ResNet-18 with the
  CIFAR stem (the paper uses WRN-28-2).
* `imagenet`: configs/paws/imgnt_train.yaml on the 1% subset: ResNet-50, unlabelled batch 4096
  (64 x 64 GPUs), support 960 classes x 7 images, 2x224 + 6x96, projection 2048-d + prediction
  head, LARS lr 0.3 -> 6.4 -> 0.064, wd 1e-6, 10 warm-up epochs; 300 epochs (the paper's
  Table 1 row; the yaml trains 100).
* `10pct`: with `imagenet`, the 10% subset.
* `cpu`: with `cifar10`, the fixed CPU budget shared by every method (`common.cpu_budget`: ViT,
  batch 256, 200 steps, AdamW), support 10 x 16, one support view, 16 px local views.

The support set is one global draw of `classes` classes (see ssl_jax/methods/paws.py).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)
import ml_collections  # noqa: E402

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.data import streams  # noqa: E402
from ssl_jax.methods import paws  # noqa: E402


def _streams(config, *, classes: int, per_class: int) -> None:
  """The unlabelled batch is `config.batch_size`; the support set classes x per_class."""
  config.data.streams = ml_collections.ConfigDict({
      "unlabeled": streams.stream_config("unlabeled"),
      "support": streams.stream_config("support", classes=classes, per_class=per_class)})


def _views(config, *, global_size, global_scale, local_size, local_scale, strength, blur_prob):
  m = config.method
  m.global_view = paws.paws_view(global_size, global_scale, strength=strength,
                                 blur_prob=blur_prob)
  m.local_view = paws.paws_view(local_size, local_scale, strength=strength, blur_prob=blur_prob)


def _lars(config, *, lr: float, start_lr: float, end_lr: float, weight_decay: float) -> None:
  """suncet `init_opt`: SGD(momentum 0.9) in LARS(trust 0.001), biases and BN excluded from the
  trust ratio and weight decay (`LARS_exclude`, here optim.no_decay_1d); warm-up from start_lr
  to lr over 10 epochs, then cosine to final_lr."""
  config.optim.name = "lars"
  config.optim.lr, config.optim.lr_scaling, config.optim.end_lr = lr, "none", end_lr
  config.optim.warmup_start_lr = start_lr
  config.optim.weight_decay = weight_decay
  config.optim.momentum = 0.9
  config.optim.trust_coefficient = 0.001
  config.optim.warmup_steps, config.optim.warmup_epochs = 0, 10.0


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = paws.default_method_config()
  config.model.name, config.model.stem = "resnet50", "imagenet"
  config.eval.protocols = "knn,softnn"

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "imagenet", "10pct", "cpu"))
  if "10pct" in presets and "imagenet" not in presets:
    raise ValueError("Preset '10pct' modifies 'imagenet': use configs/paws.py:imagenet,10pct.")
  if "cpu" in presets and "cifar10" not in presets:
    raise ValueError("Preset 'cpu' modifies 'cifar10': use configs/paws.py:cifar10,cpu.")
  m = config.method
  for preset in presets:
    if preset == "smoke":
      common.smoke_data(config)
      common.tiny_vit(config)
      # 30 steps (not 60): a step sees 64 x 4 views + 40 supports; the loss is down by 20.
      config.total_steps, config.log_every, config.checkpoint_every = 30, 5, 15
      config.data.train_subset = "per_class:10"
      _streams(config, classes=10, per_class=4)
      _views(config, global_size=32, global_scale=(0.5, 1.0), local_size=16,
             local_scale=(0.2, 0.5), strength=0.5, blur_prob=0.0)
      m.local_crops_number = 2
      m.hidden_dim, m.output_dim, m.pred_head = 128, 64, False
      common.vit_adamw(config, lr=2e-3, warmup_steps=5)
      config.optim.lr_scaling, config.optim.end_lr = "none", 0.0
    elif preset == "cifar10":
      common.cifar10_data(config)
      config.model.name, config.model.stem = "resnet18", "cifar"
      config.data.train_subset = "per_class:400"
      _streams(config, classes=10, per_class=64)
      _views(config, global_size=32, global_scale=(0.75, 1.0), local_size=18,
             local_scale=(0.3, 0.75), strength=0.5, blur_prob=0.0)
      m.support_views = 2
      m.hidden_dim, m.output_dim, m.pred_head = 128, 128, False
      config.batch_size = 256
      config.epochs = 600
      _lars(config, lr=3.2, start_lr=0.8, end_lr=0.032, weight_decay=1e-6)  # cifar10_train.yaml
    elif preset == "imagenet":
      common.imagenet_data(config)
      config.model.dtype = "bfloat16"
      config.data.train_subset = "fraction:0.01"
      _streams(config, classes=960, per_class=7)
      config.batch_size = 4096
      config.epochs = 300
      _lars(config, lr=6.4, start_lr=0.3, end_lr=0.064, weight_decay=1e-6)
    elif preset == "10pct":
      config.data.train_subset = "fraction:0.1"
    elif preset == "cpu":
      common.cpu_budget(config)
      _streams(config, classes=10, per_class=16)
      m.support_views = 1
      m.local_view.size = 16  # The ViT's 4 px patches: 18 px would not tile (SwAV's cpu: 16).
      config.eval.protocols = "knn,linear,softnn"
  return config
