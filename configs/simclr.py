r"""SimCLR (Chen et al. 2020) configs.

    python -m ssl_jax.train --config configs/simclr.py:smoke --workdir /tmp/simclr_smoke
    python -m ssl_jax.train --config configs/simclr.py:cifar10 --workdir /tmp/simclr_c10
    python -m ssl_jax.train --config configs/simclr.py:imagenet --workdir gs://.../simclr_r50

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `digits` (the default,
bundled digits, minutes on CPU), `cifar10` (ResNet-18 with the CIFAR stem, ../shared/data or any
npz:PATH) and `imagenet` (the paper's ResNet-50 recipe: LARS, lr 0.3 x B/256, wd 1e-6, 10
warm-up epochs, T = 0.1, batch 4096, 1000 epochs; Sec. 3, Appendix B.1). The `smoke` and
`digits` presets use small ViTs, trained with AdamW as ViTs are (MoCo v3, DINO).

`simclrv2` (applied after the others, whatever its position): SimCLR v2's pretraining (Chen et
al. 2020b, Sec. 2 and App. B): a 3-layer projection head, whose middle layer the fine-tuning
starts from (configs/supervised.py, `method.init_head_layers=1`); on ImageNet also LARS at lr
6.4 = 0.1 x sqrt(4096) for batch 4096, weight decay 1e-4, 800 epochs. SimCLR v2's MoCo-style
memory buffer (a ~1% gain in the paper) and its wider/deeper (SK) ResNets are left out. The
whole pretrain -> fine-tune -> distil sequence is in docs/methods.md.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import simclr, views  # noqa: E402


def get_config(arg: str = "digits"):
  config = config_lib.base_config()
  config.method = simclr.default_method_config()
  common.resnet50_imagenet(config)
  common.lars(config, lr=0.3, weight_decay=1e-6)

  presets = common.parse_presets(arg, known=("smoke", "digits", "cifar10", "imagenet", "cpu",
                                             "simclrv2"))
  for preset in sorted(presets, key=lambda p: p == "simclrv2"):  # stable: simclrv2 last
    common.resnet_era_preset(config, preset)
    if preset == "smoke":
      config.method.proj_hidden_dim, config.method.proj_dim = 128, 64
      config.method.temperature = 0.2
      config.method.view = views.simclr_view(config.data.image_size, strength=0.5,
                                             blur_prob=0.0)
    elif preset == "digits":
      config.method.proj_hidden_dim, config.method.proj_dim = 512, 128
      config.method.temperature = 0.2
      config.method.view = views.simclr_view(config.data.image_size, strength=0.5,
                                             blur_prob=0.0)
    elif preset == "cifar10":
      # Appendix B.9: colour strength 0.5, no blur, T = 0.5. LARS with solo-learn's CIFAR
      # settings (trust coefficient 0.02, base lr 0.4, wd 1e-5): at batch 256 the ImageNet
      # trust coefficient 1e-3 moves the weights too little for a 100-epoch run.
      config.method.temperature = 0.5
      config.method.view = views.simclr_view(32, strength=0.5, blur_prob=0.0)
      config.optim.lr = 0.4
      config.optim.trust_coefficient = 0.02
      config.optim.weight_decay = 1e-5
      config.optim.warmup_epochs = 10
    elif preset == "imagenet":
      config.batch_size = 4096
      config.epochs = 1000              # 100 in the paper's ablations.
      config.method.temperature = 0.1
      config.method.view = views.simclr_view(224)
    elif preset == "cpu":
      config.method.proj_hidden_dim, config.method.proj_dim = 512, 128
      config.method.temperature = 0.2   # solo-learn's CIFAR value; 0.5 needs longer runs.
    elif preset == "simclrv2":
      config.method.proj_layers = 3
      if config.data.source.startswith("tfds:imagenet"):
        config.optim.lr, config.optim.lr_scaling = 6.4, "none"
        config.optim.weight_decay = 1e-4
        config.epochs = 800
  return config
