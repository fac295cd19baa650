r"""RotNet (Gidaris et al. 2018) configs: rotation prediction.

    python -m ssl_jax.train --config configs/rotation.py:smoke --workdir /tmp/rotation_smoke
    python -m ssl_jax.train --config configs/rotation.py:cifar10 --workdir /tmp/rotation_c10
    python -m ssl_jax.train --config configs/rotation.py:imagenet --workdir gs://.../rotation_r50

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `cifar10` (ResNet-18 with
the CIFAR stem; the paper's CIFAR recipe: SGD, momentum 0.9, lr 0.1 at batch 128, wd 5e-4, 100
epochs; Sec. 3.1), `imagenet` (ResNet-50; the paper's SGD recipe at batch 192 x 4 rotations,
lr 0.01 for AlexNet, here 0.05 for ResNet-50 with its BatchNorm, 30 epochs), `cpu` (after
`cifar10`: the fixed CPU budget of docs/results.md).

`method.feature_block` is the block the evaluators read: the paper found an intermediate one
best (Table 1: the second of four blocks), so the presets evaluate the middle of the backbone;
`python -m ssl_jax.evaluate --workdir W --method.feature_block=-1 --tag last_block` adds the
last block's k-NN.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.data import augment  # noqa: E402
from ssl_jax.methods import rotation  # noqa: E402


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = rotation.default_method_config()
  common.pretext_classifier_defaults(config)

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    common.resnet_era_preset(config, preset)
    if preset == "smoke":
      # 16 px views: the four rotations make 4x the crops, so a quarter of the tokens each.
      config.method.view = augment.view_config(size=16, crop_scale=(0.5, 1.0))
      config.method.feature_block = 1  # Of 2: exercises the intermediate-block features.
    elif preset == "cifar10":
      # The official CIFAR crops are pad-4 random crops + flips: a mild random-resized crop.
      config.method.view = augment.view_config(size=32, crop_scale=(0.6, 1.0),
                                               mean=(0.491, 0.482, 0.447),
                                               std=(0.247, 0.243, 0.262))
      config.method.feature_block = 2  # Stage 2 of ResNet-18's 4, as the paper's ConvB2 of 4.
      config.optim.lr = 0.2            # 0.1 at batch 128, linearly scaled to 256.
      config.optim.lr_scaling = "none"
      config.epochs = 100
    elif preset == "imagenet":
      config.batch_size = 192          # x 4 rotations = 768 crops a step.
      config.epochs = 30
      config.method.view = augment.view_config(size=224, crop_scale=(0.08, 1.0))
      config.method.feature_block = 3  # Of 4 stages; the best AlexNet layers were conv3-4 of 5.
      config.optim.lr = 0.05
    elif preset == "cpu":
      config.method.feature_block = 2  # Of the budget ViT's 4 blocks.
  return config
