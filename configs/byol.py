r"""BYOL (Grill et al. 2020) configs.

    python -m ssl_jax.train --config configs/byol.py:smoke --workdir /tmp/byol_smoke
    python -m ssl_jax.train --config configs/byol.py:imagenet --workdir gs://.../byol_r50

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `digits` (the default),
`cifar10` (ResNet-18, CIFAR stem) and `imagenet` (the paper's recipe, Sec. 3.3 and Appendix
C: ResNet-50, LARS lr 0.2 x B/256 excluding biases and BN from decay and adaptation, wd 1.5e-6,
10 warm-up epochs then cosine, batch 4096, 1000 epochs, target momentum 0.996 cosine to 1,
projector and predictor 4096 -> 256). The `smoke` and `digits` presets use small ViTs, trained
with AdamW as ViTs are (MoCo v3, DINO).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import byol, views  # noqa: E402


def get_config(arg: str = "digits"):
  config = config_lib.base_config()
  config.method = byol.default_byol_config()
  common.resnet50_imagenet(config)
  common.lars(config, lr=0.2, weight_decay=1.5e-6)

  presets = common.parse_presets(arg, known=("smoke", "digits", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    common.resnet_era_preset(config, preset)
    if preset == "smoke":
      config.method.proj_hidden_dim, config.method.proj_dim = 128, 64
      config.method.pred_hidden_dim = 128
      # 0.996 would keep the target nearly at its random init over a 60-step run.
      config.method.base_momentum = 0.99
      config.method.view1, config.method.view2 = views.byol_views(
          config.data.image_size, blur_probs=(0.0, 0.0))
    elif preset == "digits":
      config.method.proj_hidden_dim, config.method.proj_dim = 512, 128
      config.method.pred_hidden_dim = 512
      config.method.base_momentum = 0.99
      config.method.view1, config.method.view2 = views.byol_views(
          config.data.image_size, blur_probs=(0.0, 0.0))
    elif preset == "cifar10":
      # solo-learn's CIFAR recipe: no blur, LARS trust coefficient 0.02, base lr 1.0, wd 1e-5,
      # momentum 0.99 (a few thousand steps instead of ImageNet's hundreds of thousands).
      config.method.proj_hidden_dim = config.method.pred_hidden_dim = 4096
      config.method.base_momentum = 0.99
      config.method.view1, config.method.view2 = views.byol_views(32, blur_probs=(0.0, 0.0))
      config.optim.lr = 1.0
      config.optim.trust_coefficient = 0.02
      config.optim.weight_decay = 1e-5
    elif preset == "imagenet":
      config.batch_size = 4096
      config.epochs = 1000
      config.method.base_momentum = 0.996
      config.method.view1, config.method.view2 = views.byol_views(224)
    elif preset == "cpu":
      config.method.proj_hidden_dim = config.method.pred_hidden_dim = 1024
  return config
