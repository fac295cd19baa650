r"""MoCo v2 (Chen, Fan, Girshick & He 2020) configs.

    python -m ssl_jax.train --config configs/moco_v2.py:smoke --workdir /tmp/moco_v2_smoke
    python -m ssl_jax.train --config configs/moco_v2.py:imagenet --workdir gs://.../moco_v2_r50

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `digits` (the default),
`cifar10` (ResNet-18, CIFAR stem) and `imagenet` (the paper's recipe, facebookresearch/moco
`--mlp --moco-t 0.2 --aug-plus --cos`: ResNet-50, SGD lr 0.03 x B/256 with momentum 0.9, wd 1e-4,
cosine without warm-up, batch 256, 200 epochs, queue 65536, key-encoder momentum 0.999). The
`smoke` and `digits` presets use small ViTs, trained with AdamW as ViTs are (MoCo v3).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.data import augment  # noqa: E402
from ssl_jax.methods import moco, views  # noqa: E402


def get_config(arg: str = "digits"):
  config = config_lib.base_config()
  config.method = moco.default_moco_v2_config()
  common.resnet50_imagenet(config)
  common.momentum_sgd(config, lr=0.03)
  config.batch_size = 256

  presets = common.parse_presets(arg, known=("smoke", "digits", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    common.resnet_era_preset(config, preset)
    if preset == "smoke":
      config.method.proj_hidden_dim, config.method.proj_dim = 128, 64
      # A few dozen steps: a 4-batch queue holds only real keys after 4 steps, and a faster
      # key encoder follows the query encoder within the run (0.999 would barely move it).
      config.method.queue_size = 256
      config.method.momentum = 0.99
      # Crops and flips only: with the tiny ViT and MoCo v2's BN-free head, a few dozen steps
      # on the gray 8x8 digits do not get past the brightness/contrast jitter (the queries
      # crowd into one direction and the loss sits at log(K + 1)); the other presets keep
      # the paper's recipe.
      config.method.view = augment.view_config(size=config.data.image_size,
                                               crop_scale=(0.5, 1.0))
    elif preset == "digits":
      config.method.proj_hidden_dim, config.method.proj_dim = 512, 128
      config.method.queue_size = 4096
      config.method.momentum = 0.99
      config.method.view = views.moco_v2_view(config.data.image_size, blur_prob=0.0)
    elif preset == "cifar10":
      # The official MoCo CIFAR-10 demo (facebookresearch/moco colab): queue 4096, momentum
      # 0.99, wd 5e-4, lr 0.06 at batch 512 (= 0.03 x B/256). The 10k-image split makes a
      # 65536 queue hold every image several times over, so its own stale keys as negatives.
      config.method.queue_size = 4096
      config.method.momentum = 0.99
      config.method.view = views.moco_v2_view(32, blur_prob=0.0)
      config.optim.weight_decay = 5e-4
    elif preset == "imagenet":
      config.batch_size = 256
      config.epochs = 200
      config.method.queue_size = 65536
      config.method.momentum = 0.999
      config.method.view = views.moco_v2_view(224)
    elif preset == "cpu":
      config.method.proj_hidden_dim, config.method.proj_dim = 512, 128
  return config
