r"""Pseudo-Label (Lee 2013) configs, with Oliver et al. 2018's confidence threshold.

    python -m ssl_jax.train --config configs/pseudo_label.py:smoke --workdir /tmp/pl_smoke
    python -m ssl_jax.train --config configs/pseudo_label.py:cifar10 --workdir /tmp/pl_c10

Presets (comma-separated, later ones win):
* `smoke`: CPU seconds (digits, 100 labels, WRN-10-1).
* `cifar10`: WRN-28-2 on 250 labels (`labels_4000`: 4000) as the FixMatch paper's Pseudo-Label
  baseline (Oliver et al. 2018's protocol): Adam lr 3e-4, 100 labelled + 100 unlabelled rows
  per step, threshold 0.95, unlabelled weight 1 reached linearly over the first 100 epochs of
  the 10k-record shared split (Oliver et al.: 10,000 steps; Lee's Eq. 16 shape with T1 = 0),
  500k steps.
* `imagenet`: no paper recipe; ResNet-50, 10% labels, FixMatch's ImageNet batch and optimizer
  (`configs/fixmatch.py`) with Lee's loss.
* `cpu`: after `cifar10`, the shared CPU budget (`common.semi_supervised_cpu_budget`).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import pseudo_label  # noqa: E402


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = pseudo_label.default_method_config()
  common.classifier_defaults(config)
  common.constant_adam(config, lr=3e-4)

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "labels_4000", "imagenet",
                                             "cpu"))
  for preset in presets:
    common.semi_supervised_preset(config, preset, cifar10_steps=500_000,
                                  cifar10_batch=100, cifar10_mu=1,
                                  imagenet_batch=1024, imagenet_mu=5)
    if preset == "smoke":
      config.method.threshold = 0.8       # 60 steps: confident predictions come late at 0.95.
      config.method.unlabeled_weight = 1.0
      config.method.rampup_start_epochs, config.method.rampup_end_epochs = 0.0, 1.0
    elif preset == "cifar10":
      config.method.threshold, config.method.unlabeled_weight = 0.95, 1.0
      config.method.rampup_start_epochs, config.method.rampup_end_epochs = 0.0, 100.0
    elif preset == "imagenet":
      config.method.rampup_start_epochs, config.method.rampup_end_epochs = 0.0, 10.0
      config.optim.name, config.optim.nesterov, config.optim.momentum = "sgd", True, 0.9
      config.optim.lr, config.optim.weight_decay = 0.1, 3e-4
      config.optim.schedule, config.optim.warmup_epochs = "cosine", 5
      config.epochs = 300
    elif preset == "cpu":
      config.method.rampup_start_epochs, config.method.rampup_end_epochs = 0.0, 1.0
  return config
