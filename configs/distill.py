r"""Knowledge distillation (`distill`: Hinton et al. 2015; SimCLR v2's step 3) configs.

Every preset needs a teacher: the workdir of a trained run with a classifier.

    python -m ssl_jax.train --config configs/fixmatch.py:smoke --workdir /tmp/fixmatch_smoke
    python -m ssl_jax.train --config configs/distill.py:smoke --workdir /tmp/distill_smoke \
        --config.method.teacher_workdir=/tmp/fixmatch_smoke
    python -m ssl_jax.train --config configs/distill.py:cifar10 --workdir /tmp/distill_c10 \
        --config.method.teacher_workdir=/tmp/simclrv2_c10_ft [--config.model.name=resnet18]

The student is `model.*` (the teacher's backbone for self-distillation, or a smaller one). The
SimCLR v2 command sequence (pretrain -> fine-tune from the projection head's middle layer ->
distil) is in docs/methods.md.

Presets (comma-separated, later ones win):
* `smoke`: CPU seconds: digits at 16 px, 64 unlabelled images per step, WRN-10-1, AdamW.
* `cifar10`: self-distillation of a CIFAR-10 ResNet-18 (configs/simclr.py:cifar10's backbone)
  on the unlabelled split, SGD with momentum, 200 epochs. SimCLR v2 has no CIFAR recipe; this
  one is ours.
* `imagenet`: SimCLR v2's distillation as recalled here (not re-checked against the paper's
  appendix): ResNet-50 student at the 256-px canvas on unlabelled ImageNet, T = 1, alpha = 1,
  batch 4096, SGD with momentum (LARS in the paper), 400 epochs.
* `cpu`: after `cifar10`, the shared CPU budget (`common.cpu_budget`'s ViT, AdamW, 200 steps of
  256 unlabelled images): the student of the label-budget bench (bench/label_budget.sh).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

import ml_collections  # noqa: E402

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.data import streams  # noqa: E402
from ssl_jax.methods import distill  # noqa: E402


def unlabeled_stream(config, batch_size: int) -> None:
  """The transfer set: every image of the train split, labels hidden (SimCLR v2: alpha = 1)."""
  config.batch_size = batch_size
  config.data.streams = ml_collections.ConfigDict(
      {"unlabeled": streams.stream_config("unlabeled", batch_size=batch_size)})


def sgd(config, *, weight_decay: float) -> None:
  """SGD with Nesterov momentum 0.9, lr 0.1 x batch / 256 after 5 warm-up epochs, cosine."""
  config.optim.name, config.optim.momentum, config.optim.nesterov = "sgd", 0.9, True
  config.optim.lr, config.optim.lr_scaling = 0.1, "linear"
  config.optim.weight_decay = weight_decay
  config.optim.warmup_epochs = 5


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = distill.default_method_config()
  common.classifier_defaults(config)

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    if preset == "smoke":
      common.classifier_smoke(config)   # configs/fixmatch.py:smoke's canvas (its teacher).
      unlabeled_stream(config, 64)
    elif preset == "cifar10":
      common.cifar10_data(config)
      unlabeled_stream(config, 512)
      config.model.name, config.model.stem = "resnet18", "cifar"
      config.epochs = 200
      sgd(config, weight_decay=5e-4)
    elif preset == "imagenet":
      common.classifier_imagenet(config)
      unlabeled_stream(config, 4096)
      config.epochs = 400
      sgd(config, weight_decay=1e-4)
    elif preset == "cpu":
      common.cpu_budget(config)
      unlabeled_stream(config, common.CPU_BUDGET_BATCH)
      config.eval.protocols = "knn,linear,classifier"
  return config
