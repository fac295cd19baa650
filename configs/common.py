"""Pieces shared by every method's config: datasets, backbone sizes, preset parsing.

Config files import this module by its directory (not as a package), so `configs/` stays a
plain folder of files that `--config configs/<method>.py:<preset>` points at.
"""

import os
import pathlib

import ml_collections

from ssl_jax.data import streams

# ../shared/data beside the clone, or $SSL_JAX_DATA: real CIFAR-10 for learning checks.
SHARED_DATA = pathlib.Path(os.environ.get(
    "SSL_JAX_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


class UnknownPresetError(ValueError):
  """A preset the config does not know; `known` lists those it does (`ssl_jax.train --list`)."""

  def __init__(self, unknown: list[str], known: tuple[str, ...]):
    super().__init__(f"Unknown preset(s) {unknown}; this config knows {list(known)}.")
    self.known = tuple(known)


def parse_presets(arg: str, known: tuple[str, ...]) -> list[str]:
  presets = [p.strip() for p in (arg or "").split(",") if p.strip()]
  unknown = [p for p in presets if p not in known]
  if unknown:
    raise UnknownPresetError(unknown, known)
  return presets


def smoke_data(config):
  """Seconds on one CPU: digits, small batch, a few dozen steps, k-NN at the end."""
  config.data.source = "digits"
  config.data.image_size = 32
  config.batch_size = 64
  config.total_steps = 60
  config.log_every = 10
  config.eval_every = 0
  config.checkpoint_every = 30
  config.eval.batch_size = 128


def digits_data(config):
  """The default: the bundled 8x8 digits upsampled to 32x32, no download (minutes on CPU)."""
  config.data.source = "digits"
  config.data.image_size = 32
  config.batch_size = 128
  config.total_steps = 300
  config.log_every = 25
  config.eval_every = 100
  config.checkpoint_every = 100


def cifar10_data(config):
  """CIFAR-10 from ../shared/data (10k train / 1k test) or any npz with the same keys."""
  config.data.source = f"npz:{SHARED_DATA}/cifar10_{{split}}.npz"
  config.data.image_size = 32
  config.batch_size = 256
  config.total_steps = 0
  config.epochs = 100
  config.log_every = 50
  config.eval_every = 1000
  config.checkpoint_every = 1000


def imagenet_data(config):
  """ImageNet-1k through TFDS (array_record); point data.data_dir at the prepared copy."""
  config.data.source = "tfds:imagenet2012"
  config.data.eval_test_split = "validation"
  config.data.image_size = 256
  config.data.worker_count = 32
  config.log_every = 100
  config.eval_every = 10_000
  config.checkpoint_every = 2_000
  config.eval.batch_size = 1024


def tiny_vit(config):
  """A 2-block, 64-wide ViT with 4x4 patches: the smoke tests' backbone."""
  config.model.name = "vit_ti4"
  config.model.hidden_size, config.model.depth, config.model.num_heads = 64, 2, 4


def small_vit(config):
  """ViT-Ti-ish for 32x32 images on CPU: 192 wide, 6 blocks, 4x4 patches."""
  config.model.name = "vit_ti4"
  config.model.hidden_size, config.model.depth, config.model.num_heads = 192, 6, 3


def full_size_vit(config):
  """Use the named variant's published width/depth/heads (no overrides)."""
  config.model.hidden_size, config.model.depth, config.model.num_heads = 0, 0, 0


def vit_adamw(config, lr, warmup_steps):
  """AdamW as ViTs are trained (MoCo v3/DINO), for the small-ViT presets of ResNet-era methods."""
  config.optim.name = "adamw"
  config.optim.lr = lr
  config.optim.weight_decay = 0.05
  config.optim.b1, config.optim.b2 = 0.9, 0.999
  config.optim.warmup_epochs = 0.0
  config.optim.warmup_steps = warmup_steps
  config.optim.warmup_start_lr = 0.0  # Not a LARS preset's start (PAWS's 0.08 under AdamW).


# The fixed CPU budget every method's CIFAR-10 figure in docs/results.md is measured at:
# `configs/<method>.py:cifar10,cpu`. Same backbone, batch, steps and optimiser for every method,
# so the methods differ only in their objective, views and heads (SimSiam alone keeps its
# paper's SGD: under AdamW it partially collapsed, configs/simsiam.py).
CPU_BUDGET_STEPS = 200           # x batch 256 = 51,200 images: 5.1 epochs of the 10k split.
CPU_BUDGET_BATCH = 256


def cpu_budget(config, lr=1e-3, warmup_steps=20):
  """CIFAR-10 at a fixed CPU budget: a 128-wide, 4-block ViT (4x4 patches), 200 steps.

  Applied after the `cifar10` preset. About 10 minutes per method on 2 CPU cores; the
  ResNet-18 presets would take hours at this budget (~20x the FLOPs per image). The run ends
  with k-NN and the fast linear probe; compare with `python -m ssl_jax.evaluate --workdir W
  --init random` (same encoder, untrained) and `--init raw`.
  """
  config.model.name, config.model.stem = "vit_ti4", "cifar"
  config.model.hidden_size, config.model.depth, config.model.num_heads = 128, 4, 4
  config.model.drop_path_rate = 0.0
  config.model.dtype = "float32"
  config.batch_size = CPU_BUDGET_BATCH
  config.total_steps = CPU_BUDGET_STEPS
  config.epochs = 0
  config.log_every = 10
  config.eval_every = 0
  config.checkpoint_every = 100
  config.eval.protocols = "knn,linear"
  vit_adamw(config, lr=lr, warmup_steps=warmup_steps)
  # One schedule for every method (not FixMatch's cos(7 pi k / 16 K) or a constant lr).
  config.optim.schedule = "cosine"
  config.optim.end_lr = 0.0
  config.optim.lr_scaling = "none"


def mae_cpu_budget(config):
  """`cifar10,cpu` for MAE and Perceptual MAE: `cpu_budget` with MAE's AdamW betas and 300
  steps instead of 200, since the encoder sees a quarter of the patches and an MAE step costs
  a fraction of a two-view step."""
  cpu_budget(config, lr=1.5e-3, warmup_steps=20)
  config.optim.b1, config.optim.b2 = 0.9, 0.95
  config.total_steps = 300
  config.checkpoint_every = 150
  config.eval.protocols = "knn,linear,fewshot"


def pretext_classifier_defaults(config):
  """ResNet-50 trained with SGD (momentum 0.9, wd 5e-4): the classification pretext papers'
  optimiser (RotNet, jigsaw, context prediction), which the ImageNet and CIFAR presets keep."""
  config.model.name, config.model.stem = "resnet50", "imagenet"
  config.optim.name = "sgd"
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4


def pretext_classifier_preset(config, preset):
  """The backbone and data of the classification pretext tasks' shared presets (the
  task-specific keys are set by each config): smoke = tiny ViT with AdamW on digits; cifar10 =
  ResNet-18 with the CIFAR stem; imagenet = ResNet-50 in bfloat16; cpu = `cpu_budget`."""
  if preset == "smoke":
    smoke_data(config)
    tiny_vit(config)
    vit_adamw(config, lr=2e-3, warmup_steps=5)
  elif preset == "cifar10":
    cifar10_data(config)
    config.model.name, config.model.stem = "resnet18", "cifar"
  elif preset == "imagenet":
    imagenet_data(config)
    config.model.name, config.model.stem = "resnet50", "imagenet"
    config.model.dtype = "bfloat16"
  elif preset == "cpu":
    cpu_budget(config)


# ----------------------------------------------------------------------------- semi-supervised
# Pseudo-label, Mean Teacher and FixMatch read two streams (ssl_jax/data/streams.py): the
# class-balanced labelled subset `data.train_subset` and every train record with its label
# hidden.
CPU_BUDGET_LABELS = "per_class:25"   # 250 labels: the low-label CIFAR-10 setting.


def semi_supervised_streams(config, *, labeled_batch: int, unlabeled_ratio: int, subset: str):
  """`labeled_batch` labelled + `unlabeled_ratio` x as many unlabelled rows per step (FixMatch's
  B and mu). `batch_size` is the labelled batch (what the papers call B)."""
  config.data.train_subset = subset
  config.batch_size = labeled_batch
  config.data.streams = ml_collections.ConfigDict({
      "labeled": streams.stream_config("labeled", batch_size=labeled_batch),
      "unlabeled": streams.stream_config("unlabeled",
                                         batch_size=unlabeled_ratio * labeled_batch)})


def semi_supervised_smoke(config):
  """Seconds on CPU: digits at 16 px (their native 8 px upsampled), 100 labels, 32 labelled + 64
  unlabelled rows, WRN-10-1 with BatchNorm momentum 0.9 (at FixMatch's 0.999 the running
  statistics would still be their initial values after 40 steps), an EMA with a 10-step
  horizon."""
  smoke_data(config)
  config.data.image_size = 16
  config.total_steps = 40
  config.checkpoint_every = 20
  semi_supervised_streams(config, labeled_batch=32, unlabeled_ratio=2, subset="per_class:10")
  config.model.name, config.model.batch_norm_momentum = "wrn_10_1", 0.9
  config.eval.protocols = "knn,classifier"
  config.optim.name, config.optim.lr, config.optim.lr_scaling = "adamw", 3e-3, "none"
  config.optim.weight_decay, config.optim.warmup_steps = 0.0, 0
  config.method.ema_decay = 0.9 if config.method.ema_decay else 0.0


def semi_supervised_cpu_budget(config):
  """`cifar10,cpu` for the semi-supervised methods: `cpu_budget`'s ViT, AdamW and 200 steps,
  with its 256 rows per step split into 32 labelled (250 labels) + 224 unlabelled (mu = 7), and
  the classifier's test top-1 (`eval/top1`) logged beside k-NN and the linear probe."""
  cpu_budget(config)
  semi_supervised_streams(config, labeled_batch=CPU_BUDGET_BATCH // 8, unlabeled_ratio=7,
                          subset=CPU_BUDGET_LABELS)
  config.eval.protocols = "knn,linear,classifier"
  # A 200-step run: an EMA with a ~20-step horizon (0.999 would still be the initialisation).
  config.method.ema_decay = 0.95 if config.method.ema_decay else 0.0
