r"""FixMatch (Sohn et al. 2020; google-research/fixmatch) configs.

    python -m ssl_jax.train --config configs/fixmatch.py:smoke --workdir /tmp/fixmatch_smoke
    python -m ssl_jax.train --config configs/fixmatch.py:cifar10 --workdir /tmp/fixmatch_c10
    python -m ssl_jax.train --config configs/fixmatch.py:cifar10,labels_4000 --workdir /tmp/fm4k
    python -m ssl_jax.train --config configs/fixmatch.py:imagenet --workdir gs://.../fixmatch_in

Presets (comma-separated, later ones win):
* `smoke`: CPU seconds (digits, 100 labels, WRN-10-1, mu = 2, AdamW).
* `cifar10`: the paper's CIFAR-10 recipe (Sec. 4, App. B.1; fixmatch.py flags): WRN-28-2,
  250 labels (`labels_4000`: 4000), B = 64 labelled + mu B = 448 unlabelled rows per step,
  tau = 0.95, lambda_u = 1, SGD with Nesterov momentum 0.9, lr 0.03, weight decay 5e-4 (not on
  BatchNorm and biases), lr cos(7 pi k / 16 K) over K = 2^20 steps, EMA 0.999 evaluated.
  ../shared/data holds a 10k-record train split; the paper's unlabelled set is CIFAR-10's 50k.
* `imagenet`: the paper's ImageNet experiment as recalled here (not re-checked against the
  paper's appendix): ResNet-50 at the 256-px canvas, 10% labels, B = 1024, mu = 5, tau = 0.7, lambda_u = 10, lr 0.1 with 5
  warm-up epochs, weight decay 3e-4, 300 epochs.
* `cpu`: after `cifar10`, the shared CPU budget (`common.semi_supervised_cpu_budget`).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import fixmatch  # noqa: E402


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = fixmatch.default_method_config()
  common.classifier_defaults(config)
  common.fixmatch_sgd(config, lr=0.03, weight_decay=5e-4)

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "labels_4000", "imagenet",
                                             "cpu"))
  for preset in presets:
    common.semi_supervised_preset(config, preset, cifar10_steps=common.FIXMATCH_STEPS,
                                  cifar10_batch=64, cifar10_mu=7,
                                  imagenet_batch=1024, imagenet_mu=5)
    if preset == "smoke":
      config.method.threshold = 0.8       # 60 steps: confident predictions come late at 0.95.
    elif preset == "imagenet":
      config.method.threshold, config.method.unlabeled_weight = 0.7, 10.0
      config.method.max_shift_fraction = 0.125
      common.fixmatch_sgd(config, lr=0.1, weight_decay=3e-4)
      config.optim.warmup_epochs = 5
      config.epochs = 300
  return config
