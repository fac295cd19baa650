r"""Mean Teacher (Tarvainen & Valpola 2017; CuriousAI/mean-teacher) configs.

    python -m ssl_jax.train --config configs/mean_teacher.py:smoke --workdir /tmp/mt_smoke
    python -m ssl_jax.train --config configs/mean_teacher.py:cifar10 --workdir /tmp/mt_c10

Presets (comma-separated, later ones win):
* `smoke`: CPU seconds (digits, 100 labels, WRN-10-1).
* `cifar10`: the paper's CIFAR-10 hyperparameters (mean-teacher `tensorflow/mean_teacher/
  model.py` defaults and `experiments/cifar10_final_eval.py`): consistency weight 100 against
  the labelled rows' mean cross-entropy (`consistency_weight_for_a_fixed_mix` says why this is
  the official 100 x labels / 50k), sigmoid ramp-up over 40k steps, EMA decay 0.999 during it
  and after (the final-eval script's `ema_decay_during_rampup`), Adam lr 0.003 (beta2 0.999),
  input noise 0.15, flips and translations, 150k steps of 100 images (here 50 labelled + 50
  unlabelled; the paper draws a varying mix), on FixMatch's WRN-28-2 (the paper: a 13-layer
  ConvNet) with 250 labels (`labels_4000`: 4000). Departures: no lr sigmoid ramp-up over the
  first 40k steps and no lr / Adam beta1 ramp-down over the last 25k (constant lr), no ZCA.
* `imagenet`: ResNet-50 (the paper: ResNeXt-152), 10% labels, consistency 10 over a 5-epoch
  ramp-up (the PyTorch ImageNet run's values as recalled here), SGD Nesterov lr 0.1 x B/256.
* `cpu`: after `cifar10`, the shared CPU budget (`common.semi_supervised_cpu_budget`).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import mean_teacher  # noqa: E402


def consistency_weight_for_a_fixed_mix() -> float:
  """The official consistency cost, rescaled to this codebase's fixed labelled share.

  mean-teacher's `cifar10_final_eval.py` draws each batch of 100 from all 50k images
  (`n_labeled_per_batch='vary'`), so a share p = n_labeled / 50k of its rows carry labels, and
  `classification_costs` divides their cross-entropy sum by all 100 rows: CE = p x mean_l CE.
  Its `max_consistency_cost` is 100 x p, so the objective is p x (mean_l CE + 100 x MSE) for
  every label count (with all labels, p = 1: cost 100). Adam is invariant to the factor p, so
  with the cross-entropy averaged over the labelled rows (`labeled_loss`), the same objective
  is a weight of 100, whatever the labelled share of the step.
  """
  return 100.0


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = mean_teacher.default_method_config()
  common.classifier_defaults(config)
  common.constant_adam(config, lr=3e-3)

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "labels_4000", "imagenet",
                                             "cpu"))
  for preset in presets:
    common.semi_supervised_preset(config, preset, cifar10_steps=150_000,
                                  cifar10_batch=50, cifar10_mu=1,
                                  imagenet_batch=256, imagenet_mu=3)
    if preset == "smoke":
      config.method.consistency_weight, config.method.rampup_steps = 1.0, 30
    elif preset == "cifar10":
      config.method.consistency_weight = consistency_weight_for_a_fixed_mix()
      config.method.rampup_steps = 40_000
      config.method.ema_decay_rampup = 0.999
    elif preset == "imagenet":
      config.method.input_noise = 0.0
      config.method.consistency_weight = 10.0
      config.method.rampup_steps = 5 * 1250   # ~5 epochs of 1.28M images at 1024 per step.
      config.optim.name, config.optim.nesterov, config.optim.momentum = "sgd", True, 0.9
      config.optim.lr, config.optim.lr_scaling, config.optim.weight_decay = 0.1, "linear", 5e-5
      config.optim.schedule, config.optim.warmup_epochs = "cosine", 2
      config.epochs = 60
    elif preset == "cpu":
      config.method.rampup_steps = 50
      # The budget's ~20-step EMA horizon in both phases (0.999 would keep the teacher at the
      # mean of the first 50 students through a 100-200 step run).
      config.method.ema_decay_rampup = config.method.ema_decay
  return config
