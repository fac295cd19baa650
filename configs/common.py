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


def resnet50_imagenet(config):
  """ResNet-50 with the ImageNet stem (7x7 stride-2 conv + max-pool): the ResNet-era papers'
  backbone."""
  config.model.name, config.model.stem = "resnet50", "imagenet"


def lars(config, *, lr, weight_decay):
  """LARS as SimCLR (Appendix B.1) and BYOL (Appendix C) train ResNet-50: momentum 0.9, trust
  coefficient 1e-3, 10 warm-up epochs then cosine, `lr` x batch_size / 256."""
  config.optim.name = "lars"
  config.optim.lr = lr
  config.optim.weight_decay = weight_decay
  config.optim.momentum = 0.9
  config.optim.trust_coefficient = 1e-3
  config.optim.warmup_epochs = 10


def momentum_sgd(config, *, lr):
  """SGD as MoCo v2 (facebookresearch/moco `--cos`) and SimSiam (Sec. 4) train ResNet-50:
  momentum 0.9, wd 1e-4, cosine without warm-up, `lr` x batch_size / 256."""
  config.optim.name = "sgd"
  config.optim.lr = lr
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.optim.warmup_epochs = 0.0


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


# ----------------------------------------------------------------------------- ResNet-era methods
def resnet_era_preset(config, preset):
  """The data and backbone of the shared presets of the methods whose papers train ResNets
  (SimCLR, BYOL, MoCo v2, SimSiam; RotNet, jigsaw, context prediction), each config setting its
  heads, views, batch, epochs and optimiser: smoke and digits (CPU minutes) = the tiny and the
  small ViT, trained with AdamW as ViTs are (`vit_adamw`); cifar10 = ResNet-18 with the CIFAR
  stem; imagenet = the papers' ResNet-50 in bfloat16; cpu = `cpu_budget`."""
  if preset == "smoke":
    smoke_data(config)
    tiny_vit(config)
    vit_adamw(config, lr=2e-3, warmup_steps=5)
  elif preset == "digits":
    digits_data(config)
    small_vit(config)
    vit_adamw(config, lr=1e-3, warmup_steps=50)
  elif preset == "cifar10":
    cifar10_data(config)
    config.model.name, config.model.stem = "resnet18", "cifar"
  elif preset == "imagenet":
    imagenet_data(config)
    resnet50_imagenet(config)
    config.model.dtype = "bfloat16"
  elif preset == "cpu":
    cpu_budget(config)


def pretext_classifier_defaults(config):
  """ResNet-50 trained with SGD (momentum 0.9, wd 5e-4): the classification pretext papers'
  optimiser (RotNet, jigsaw, context prediction), which the ImageNet and CIFAR presets keep."""
  resnet50_imagenet(config)
  config.optim.name = "sgd"
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4


def patch_arrangement_preset(config, preset):
  """`resnet_era_preset` for context prediction and jigsaw, which classify how patches
  of one image are arranged from their concatenated features through an MLP head (Doersch et
  al. 2015's late-fusion fc layers; Noroozi & Favaro 2016's fc7-fc8): the head's width (256
  smoke, 1024 cifar10, 512 cpu), lr 0.1 on CIFAR-10, and on ImageNet the papers' batch 256
  with the usual ResNet-50 SGD recipe in place of their AlexNet schedules: Goyal et al. 2017's
  lr 0.1 per 256 images, wd 1e-4, 5 warm-up epochs and 90 epochs, with the codebase's cosine
  decay in place of their steps at epochs 30, 60 and 80. Each config sets its patch geometry."""
  resnet_era_preset(config, preset)
  if preset == "smoke":
    config.method.head_hidden_dim = 256
  elif preset == "cifar10":
    config.method.head_hidden_dim = 1024
    config.optim.lr = 0.1
  elif preset == "imagenet":
    config.batch_size = 256
    config.epochs = 90
    config.optim.lr = 0.1
    config.optim.weight_decay = 1e-4
    config.optim.warmup_epochs = 5
  elif preset == "cpu":
    config.method.head_hidden_dim = 512


# ----------------------------------------------------------------------------- pixel pretext ViTs
def pixel_pretext_defaults(config):
  """Colorization and inpainting on a ViT: a per-patch head predicts each patch's pixels (its
  colours, or the hole's content) from the patch tokens, so those are mean-pooled for
  evaluation. The papers' conv nets and Adam settings do not carry over to a ViT; MAE's AdamW
  does (He et al. 2021, Table 8: betas 0.9, 0.95, wd 0.05, base lr 1.5e-4 x batch_size / 256)."""
  config.model.name = "vit_ti4"
  config.model.pool = "mean"
  vit_adamw(config, lr=1.5e-4, warmup_steps=0)
  config.optim.b1, config.optim.b2 = 0.9, 0.95


def pixel_pretext_preset(config, preset):
  """The backbone, data and schedule of colorization's and inpainting's shared presets (each
  config sets its decoder, and its view size at `imagenet`): smoke = the tiny ViT at lr 1.5e-3
  after 5 warm-up steps; cifar10 = the small ViT at lr 1.5e-3 after 10 warm-up epochs; imagenet
  = ViT-B/16 in bfloat16, batch 1024, 100 epochs at MAE's lr 1.5e-4 after 10 warm-up epochs;
  cpu = `cpu_budget`."""
  if preset == "smoke":
    smoke_data(config)
    tiny_vit(config)
    config.method.view.size = config.data.image_size
    config.optim.lr = 1.5e-3
    config.optim.warmup_steps = 5
  elif preset == "cifar10":
    cifar10_data(config)
    small_vit(config)
    config.method.view.size = config.data.image_size
    config.optim.lr = 1.5e-3
    config.optim.warmup_steps = 0
    config.optim.warmup_epochs = 10
  elif preset == "imagenet":
    imagenet_data(config)
    config.model.name = "vit_b16"
    full_size_vit(config)
    config.model.dtype = "bfloat16"
    config.batch_size = 1024
    config.epochs = 100
    config.optim.lr = 1.5e-4
    config.optim.warmup_steps = 0
    config.optim.warmup_epochs = 10
  elif preset == "cpu":
    cpu_budget(config)


# ----------------------------------------------------------------------------- classifier training
# The methods that train a classifier on (pseudo-)labels: Pseudo-label, Mean Teacher, FixMatch,
# Noisy Student and distillation. The semi-supervised ones read two streams
# (ssl_jax/data/streams.py): the class-balanced labelled subset `data.train_subset` and every
# train record with its label hidden.
CPU_BUDGET_LABELS = "per_class:25"   # 250 labels: the low-label CIFAR-10 setting.
FIXMATCH_STEPS = 2 ** 20  # K: fixmatch.py --train_kimg=2^16 x 1024 images / 64 = 2^20 steps.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def classifier_defaults(config):
  """WRN-28-2 (Oliver et al. 2018's backbone, FixMatch's for CIFAR), evaluated by k-NN and by
  its own classifier's test top-1 (`eval/top1`)."""
  config.model.name = "wrn_28_2"
  config.eval.protocols = "knn,classifier"


def constant_adam(config, lr):
  """Adam at a constant, unscaled lr without weight decay (betas 0.9, 0.999): Mean Teacher's
  optimiser (mean-teacher `tensorflow/mean_teacher/model.py`) and Oliver et al. 2018's, which
  the FixMatch paper's Pseudo-Label baseline follows."""
  config.optim.name, config.optim.lr, config.optim.lr_scaling = "adamw", lr, "none"
  config.optim.b1, config.optim.b2, config.optim.weight_decay = 0.9, 0.999, 0.0
  config.optim.schedule = "constant"


def fixmatch_sgd(config, lr: float, weight_decay: float):
  """FixMatch's optimiser (Sec. 4, App. B.1): SGD with Nesterov momentum 0.9, `lr` not scaled
  with the batch, lr cos(7 pi k / 16 K)."""
  config.optim.name, config.optim.nesterov, config.optim.momentum = "sgd", True, 0.9
  config.optim.lr, config.optim.lr_scaling = lr, "none"
  config.optim.weight_decay = weight_decay
  config.optim.schedule = "fixmatch_cosine"


def semi_supervised_streams(config, *, labeled_batch: int, unlabeled_ratio: int, subset: str):
  """`labeled_batch` labelled + `unlabeled_ratio` x as many unlabelled rows per step (FixMatch's
  B and mu). `batch_size` is the labelled batch (what the papers call B)."""
  config.data.train_subset = subset
  config.batch_size = labeled_batch
  config.data.streams = ml_collections.ConfigDict({
      "labeled": streams.stream_config("labeled", batch_size=labeled_batch),
      "unlabeled": streams.stream_config("unlabeled",
                                         batch_size=unlabeled_ratio * labeled_batch)})


def classifier_smoke(config):
  """Seconds on CPU: digits at 16 px (their native 8 px upsampled), 40 steps, WRN-10-1 with
  BatchNorm momentum 0.9 (at FixMatch's 0.999 the running statistics would still be their
  initial values after 40 steps), AdamW at lr 3e-3. Each config sets its streams."""
  smoke_data(config)
  config.data.image_size = 16
  config.total_steps = 40
  config.checkpoint_every = 20
  config.model.name, config.model.batch_norm_momentum = "wrn_10_1", 0.9
  config.optim.name, config.optim.lr, config.optim.lr_scaling = "adamw", 3e-3, "none"
  config.optim.weight_decay, config.optim.warmup_steps = 0.0, 0


def semi_supervised_smoke(config):
  """`classifier_smoke` with 100 labels, 32 labelled + 64 unlabelled rows per step, an EMA with
  a 10-step horizon, evaluated by k-NN and the classifier."""
  classifier_smoke(config)
  semi_supervised_streams(config, labeled_batch=32, unlabeled_ratio=2, subset="per_class:10")
  config.eval.protocols = "knn,classifier"
  config.method.ema_decay = 0.9 if config.method.ema_decay else 0.0


def semi_supervised_cifar10(config, *, total_steps: int):
  """CIFAR-10 on WRN-28-2 for `total_steps` steps (the semi-supervised papers count steps, not
  epochs), evaluated and checkpointed every 5000. Each config sets its streams after."""
  cifar10_data(config)
  config.model.name = "wrn_28_2"
  config.epochs, config.total_steps = 0, total_steps
  config.eval_every, config.checkpoint_every = 5000, 5000


def classifier_imagenet(config):
  """ImageNet-1k for a 1000-way classifier on ResNet-50 in bfloat16, the method normalising its
  inputs with ImageNet's channel mean and std. Each config sets its streams and optimiser."""
  imagenet_data(config)
  resnet50_imagenet(config)
  config.model.dtype = "bfloat16"
  config.method.num_classes = 1000
  config.method.mean, config.method.std = IMAGENET_MEAN, IMAGENET_STD


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


def semi_supervised_preset(config, preset, *, cifar10_steps: int, cifar10_batch: int,
                           cifar10_mu: int, imagenet_batch: int, imagenet_mu: int):
  """The shared presets of Pseudo-Label, Mean Teacher and FixMatch, with each method's batch B
  (labelled rows per step), mu (unlabelled rows per labelled one) and CIFAR-10 length; each
  config sets its method keys and ImageNet optimiser after. smoke = `semi_supervised_smoke`;
  cifar10 = `semi_supervised_cifar10` with 250 labels; labels_4000 = 4000 labels instead (after
  cifar10); imagenet = `classifier_imagenet` with 10% of the labels; cpu =
  `semi_supervised_cpu_budget`."""
  if preset == "smoke":
    semi_supervised_smoke(config)
  elif preset == "cifar10":
    semi_supervised_cifar10(config, total_steps=cifar10_steps)
    semi_supervised_streams(config, labeled_batch=cifar10_batch, unlabeled_ratio=cifar10_mu,
                            subset="per_class:25")
  elif preset == "labels_4000":
    config.data.train_subset = "per_class:400"
  elif preset == "imagenet":
    classifier_imagenet(config)
    semi_supervised_streams(config, labeled_batch=imagenet_batch, unlabeled_ratio=imagenet_mu,
                            subset="fraction:0.1")
  elif preset == "cpu":
    semi_supervised_cpu_budget(config)
