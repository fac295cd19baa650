r"""Noisy Student (Xie et al. 2020) configs: a noised student on labelled + teacher-labelled data.

A student trains on the labels file a teacher wrote (docs/methods.md, "Noisy Student", has the
whole teacher -> label -> student -> label ... sequence):

    python -m ssl_jax.train --config configs/fixmatch.py:smoke --workdir /tmp/teacher
    python -m ssl_jax.label --workdir /tmp/teacher --data digits --out /tmp/labels.npz
    python -m ssl_jax.train --config configs/noisy_student.py:smoke --workdir /tmp/student \
        --config.data.streams.pseudo_labeled.labels_file=/tmp/labels.npz

The teacher must have a classifier and the labels must be for the student's `data.source` /
`data.train_split` (the stream checks both).

Presets (comma-separated, later ones win):
* `smoke`: CPU seconds (digits at 16 px, 100 labels, WRN-10-1; 32 labelled + 64
  pseudo-labelled rows per step).
* `cifar10`: WRN-28-2 (the FixMatch teacher's size; `--config.model.name=wrn_28_8` for a larger
  student) on 250 labels + the whole 10k split pseudo-labelled, FixMatch's CIFAR-10 batch (64 +
  7 x 64) and SGD recipe, classes balanced to 1000 records.
* `imagenet`: 10% labels (FixMatch's ImageNet teacher's) + the whole train split
  pseudo-labelled, labelled:unlabelled batch 1:14 (the paper's ratio for its largest student),
  balanced to 130K records per class (the paper's figure for its 81M-image JFT set), a ViT-B/16
  student with stochastic depth 0.2 (the paper's EfficientNets are not in ssl_jax), DeiT's
  AdamW, EMA 0.9999 (EfficientNet's), 350 epochs (the paper's length for its large students,
  which it trains "with a smaller resolution for 350 epochs" before a 1.5-epoch fine-tune at a
  larger one; that fine-tune is not part of this preset).
* `cpu`: after `cifar10`, the shared CPU budget (`common.semi_supervised_cpu_budget`).

Every preset keeps the paper's noise and selection: RandAugment N = 2 at M = 9 (27/30),
dropout 0.5 on the head, stochastic depth with survival 0.8 at the last block, soft
pseudo-labels, confidence threshold 0.3.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)
import ml_collections  # noqa: E402

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.data import streams  # noqa: E402
from ssl_jax.methods import noisy_student  # noqa: E402

MIN_CONFIDENCE = 0.3     # The paper's filtering threshold.
DROP_PATH_AT_LAST = 0.2  # Stochastic depth: the last block survives with probability 0.8.


def self_training_streams(config, *, labeled_batch: int, unlabeled_ratio: int, subset: str,
                          per_class: int):
  """`labeled_batch` labelled rows of `subset` + `unlabeled_ratio` x as many teacher-labelled
  rows of the whole split per step; the labels file is given on the command line."""
  config.data.train_subset = subset
  config.batch_size = labeled_batch
  config.data.streams = ml_collections.ConfigDict({
      "labeled": streams.stream_config("labeled", batch_size=labeled_batch),
      noisy_student.PSEUDO_LABELED: streams.stream_config(
          "pseudo_labeled", batch_size=unlabeled_ratio * labeled_batch,
          min_confidence=MIN_CONFIDENCE, per_class=per_class)})


def get_config(arg: str = "smoke"):
  config = config_lib.base_config()
  config.method = noisy_student.default_method_config()
  common.classifier_defaults(config)

  presets = common.parse_presets(arg, known=("smoke", "cifar10", "imagenet", "cpu"))
  for preset in presets:
    if preset == "smoke":
      common.semi_supervised_smoke(config)
      config.total_steps = 60  # The noised student learns more slowly than FixMatch's 40 steps.
      self_training_streams(config, labeled_batch=32, unlabeled_ratio=2, subset="per_class:10",
                            per_class=150)
    elif preset == "cifar10":
      common.semi_supervised_cifar10(config, total_steps=common.FIXMATCH_STEPS)
      self_training_streams(config, labeled_batch=64, unlabeled_ratio=7, subset="per_class:25",
                            per_class=1000)
      common.fixmatch_sgd(config, lr=0.03, weight_decay=5e-4)
    elif preset == "imagenet":
      common.imagenet_data(config)
      self_training_streams(config, labeled_batch=256, unlabeled_ratio=14,
                            subset="fraction:0.1", per_class=130_000)
      config.model.name, config.model.dtype = "vit_b16", "bfloat16"
      common.full_size_vit(config)
      config.method.num_classes = 1000
      config.method.ema_decay = 0.9999
      config.method.mean, config.method.std = common.IMAGENET_MEAN, common.IMAGENET_STD
      # DeiT's 5e-4 x 1024 / 512, not scaled further with the 3840-row step.
      common.vit_adamw(config, lr=1e-3, warmup_steps=0)
      config.optim.lr_scaling, config.optim.warmup_epochs = "none", 5
      config.optim.schedule, config.optim.end_lr = "cosine", 1e-5
      config.epochs = 350
    elif preset == "cpu":
      common.semi_supervised_cpu_budget(config)
      self_training_streams(config, labeled_batch=common.CPU_BUDGET_BATCH // 8,
                            unlabeled_ratio=7, subset=common.CPU_BUDGET_LABELS,
                            per_class=1000)
  # The paper's model noise, on whichever backbone the presets chose.
  config.model.drop_path_rate = DROP_PATH_AT_LAST
  return config
