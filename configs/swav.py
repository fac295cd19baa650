r"""SwAV (Caron et al. 2020) configs.

    python -m ssl_jax.train --config configs/swav.py:smoke --workdir /tmp/swav_smoke
    python -m ssl_jax.train --config configs/swav.py:cifar10 --workdir /tmp/swav_c10
    python -m ssl_jax.train --config configs/swav.py:imagenet --workdir gs://.../swav_r50

Presets (comma-separated, later ones win): `smoke` (CPU, seconds; a tiny ViT), `digits` (the
default), `cifar10` (ResNet-18 with the CIFAR stem), `imagenet` (scripts/swav_800ep_pretrain.sh:
ResNet-50, 2x224 + 6x96, batch 4096, LARS lr 4.8, 800 epochs, no queue) and `imagenet_bs256`
(scripts/swav_400ep_bs256_pretrain.sh: batch 256, lr 0.6, queue 3840 from epoch 15).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

import ml_collections  # noqa: E402

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import swav  # noqa: E402


def _crop_sizes(config, global_size: int, local_size: int) -> None:
  config.method.global_view.size = global_size
  config.method.local_view.size = local_size


def _imagenet(config, *, batch_size: int, epochs: int, base_lr: float, final_lr: float,
              warmup_epochs: float, start_warmup: float, queue_length: int) -> None:
  common.imagenet_data(config)
  config.model.name = "resnet50"
  config.model.stem = "imagenet"
  config.model.dtype = "bfloat16"
  config.batch_size = batch_size
  config.epochs = epochs
  _crop_sizes(config, 224, 96)
  config.method.hidden_mlp, config.method.feat_dim, config.method.nmb_prototypes = 2048, 128, 3000
  config.method.global_crops_number, config.method.local_crops_number = 2, 6
  config.method.queue_length = queue_length
  config.method.epoch_queue_starts = 15
  config.optim.groups.prototypes.freeze_epochs = 1.0  # 313 iterations at 4096, 5005 at 256.
  config.optim.lr = base_lr                      # swav --base_lr, not rescaled.
  config.optim.lr_scaling = "none"
  config.optim.end_lr = final_lr
  config.optim.warmup_epochs = warmup_epochs
  config.optim.warmup_start_lr = start_warmup


def get_config(arg: str = "digits"):
  config = config_lib.base_config()
  config.method = swav.default_method_config()
  config.model.name = "resnet50"
  config.model.stem = "imagenet"
  config.model.pool = "cls"
  # SGD(momentum 0.9, wd) wrapped in LARC(0.001, clip=False), on every parameter.
  config.optim.name = "larc_sgd"
  config.optim.no_decay_1d, config.optim.no_decay_names = False, ()
  config.optim.lr = 4.8               # swav --base_lr at batch 4096.
  config.optim.lr_scaling = "none"
  config.optim.end_lr = 0.0048        # swav --final_lr.
  config.optim.warmup_epochs = 10
  config.optim.weight_decay = 1e-6
  config.optim.momentum = 0.9
  config.optim.trust_coefficient = 0.001
  # main_swav.py: warm-up np.linspace(start_warmup, base_lr, W) (the peak at W - 1), then cosine.
  config.optim.warmup_start_lr, config.optim.warmup_linspace = 0.0, True
  # The prototypes: no gradient for the first epoch (--freeze_prototypes_niters), and L2-normalised
  # after every update (swav normalises them before each forward pass).
  config.optim.groups.prototypes = ml_collections.ConfigDict(
      dict(pattern="prototypes/.*", freeze_epochs=1.0, project="unit_columns"))

  presets = common.parse_presets(arg, known=("smoke", "digits", "cifar10", "imagenet",
                                             "imagenet_bs256", "cpu"))
  for preset in presets:
    m = config.method
    if preset in ("smoke", "digits"):
      if preset == "smoke":
        common.smoke_data(config)
        common.tiny_vit(config)
        m.hidden_mlp, m.feat_dim, m.nmb_prototypes = 128, 32, 64
        m.local_crops_number = 2
      else:
        common.digits_data(config)
        common.small_vit(config)
        m.hidden_mlp, m.feat_dim, m.nmb_prototypes = 512, 64, 100
        m.local_crops_number = 4
        m.queue_length, m.epoch_queue_starts = 512, 2
      _crop_sizes(config, config.data.image_size, config.data.image_size // 2)
      config.optim.name = "adamw"     # A ViT backbone: AdamW rather than LARS.
      config.optim.no_decay_1d = True  # Every tensor of rank > 1 decayed.
      config.optim.lr, config.optim.lr_scaling = 2e-3, "linear"
      config.optim.b1, config.optim.b2 = 0.9, 0.999
      config.optim.weight_decay = 0.05
      config.optim.end_lr = 0.0
      config.optim.warmup_epochs = 0
      config.optim.warmup_steps = 5 if preset == "smoke" else 50
    elif preset == "cifar10":
      common.cifar10_data(config)
      config.model.name, config.model.stem = "resnet18", "cifar"
      _crop_sizes(config, 32, 16)
      # solo-learn's CIFAR SwAV: 3000 prototypes (more than the 128 embedding dims; see
      # SwAV.network), Sinkhorn over the batch, queue from epoch 10.
      m.hidden_mlp, m.feat_dim, m.nmb_prototypes = 512, 128, 3000
      m.local_crops_number = 4
      m.queue_length, m.epoch_queue_starts = 2560, 10
      config.optim.lr, config.optim.lr_scaling = 0.6, "linear"  # 0.6 at batch 256 (bs256 script).
      config.optim.end_lr = 0.0006
      config.optim.warmup_epochs = 0
    elif preset == "imagenet":
      # scripts/swav_800ep_pretrain.sh: --start_warmup 0.3.
      _imagenet(config, batch_size=4096, epochs=800, base_lr=4.8, final_lr=0.0048,
                warmup_epochs=10, start_warmup=0.3, queue_length=0)
    elif preset == "imagenet_bs256":
      _imagenet(config, batch_size=256, epochs=400, base_lr=0.6, final_lr=0.0006,
                warmup_epochs=0, start_warmup=0.0, queue_length=3840)
    elif preset == "cpu":
      common.cpu_budget(config)
      config.optim.no_decay_1d = True   # AdamW: every tensor of rank > 1 decayed.
      # 200 steps: no queue, no blur at 32 px, and the prototypes frozen at their random init
      # for the whole run. A random ViT's features are nearly the same for every image, so the
      # early codes are arbitrary, and once the prototypes train, they and the embeddings reach
      # equal scores for every prototype: loss log 3000 = 8.006 with a vanishing gradient, by
      # step 70 under AdamW and by step 90 under the paper's LARS (lr 0.6, prototypes frozen
      # for the first epoch only). Fixed random prototypes spanning the embedding space cannot
      # give equal scores to a unit embedding.
      m.queue_length = 0
      config.optim.groups.prototypes.freeze_epochs = 6.0
      m.global_view.blur_prob = m.local_view.blur_prob = 0.0
  return config
