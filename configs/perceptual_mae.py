r"""Perceptual MAE (Tukra, Hoffman & Chatfield, CVPR 2023) configs.

    python -m ssl_jax.train --config configs/perceptual_mae.py:smoke --workdir /tmp/pmae_smoke
    python -m ssl_jax.train --config configs/perceptual_mae.py:cifar10 --workdir /tmp/pmae_c10
    python -m ssl_jax.train --config configs/perceptual_mae.py:vit_b16,imagenet --workdir gs://...
    # the LS-GAN variant (single-scale discriminator) instead of MSG-GAN:
    python -m ssl_jax.train --config configs/perceptual_mae.py:cifar10,dcgan --workdir ...
    # with a frozen pretrained encoder for feature matching (any ssl_jax ViT run):
    ... --config.method.feature_extractor_workdir=/tmp/mae_c10

Presets (comma-separated, later ones win): `smoke` (CPU, well under a minute), `digits` (the
default), `cifar10` (../shared/data or any npz:PATH), `imagenet` (ViT at 224 with the authors'
discriminator, losses and optimizers; see docs/methods.md (Perceptual MAE)), backbones `vit_b16`,
`vit_l16`, and discriminator types `msg` (default) / `dcgan`. The generator (encoder, decoder,
masking, views, optimizer) of every size preset is the one of configs/mae.py at that size, so
MAE and Perceptual MAE runs of the same preset differ only in what Perceptual MAE adds.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

import ml_collections  # noqa: E402

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import perceptual_mae  # noqa: E402


def _small_discriminators(config, msg_feature_size: int, dcgan_widths: tuple[int, ...]):
  """Discriminators for 32x32 images: MSG over 32/16/8/4, DCGAN 32 -> 16 -> 8 -> 4 -> 2x2 head."""
  d = config.method.discriminator
  d.msg_num_scales, d.msg_feature_size = 4, msg_feature_size
  d.dcgan_widths = dcgan_widths
  d.dcgan_kernel_sizes, d.dcgan_paddings = (4, 4, 4), (1, 1, 1)
  d.dcgan_head_kernel_size = 3


def get_config(arg: str = "digits"):
  config = config_lib.base_config()
  config.method = perceptual_mae.default_method_config()
  config.model.name = "vit_ti4"
  config.model.pos_embed = "sincos"
  config.model.pool = "mean"
  config.optim.name = "adamw"
  config.optim.lr = 1.5e-4
  config.optim.b1, config.optim.b2 = 0.9, 0.95
  config.optim.weight_decay = 0.05
  # The discriminator's own optimizer (authors: Adam, lr 1.5e-4, betas (0.9, 0.95), no weight
  # decay, no schedule), its updates applied on steps 0, k, 2k, ... (its moments and count
  # untouched on the others), k = method.discriminator_update_every.
  config.optim.groups.discriminator = ml_collections.ConfigDict(dict(
      pattern="discriminator/.*", name="adamw", lr=1.5e-4, lr_scaling="none",
      schedule="constant", warmup_steps=0, warmup_epochs=0.0, end_lr=0.0, weight_decay=0.0,
      b1=0.9, b2=0.95, momentum=0.9, trust_coefficient=0.001, grad_clip_norm=0.0,
      update_every=config.method.get_ref("discriminator_update_every")))

  presets = common.parse_presets(arg, known=("smoke", "digits", "cifar10", "imagenet",
                                             "vit_b16", "vit_l16", "msg", "dcgan", "cpu"))
  m = config.method
  for preset in presets:
    if preset == "smoke":
      common.smoke_data(config)
      common.tiny_vit(config)
      m.decoder_dim, m.decoder_depth, m.decoder_heads = 64, 1, 4
      m.view.size = config.data.image_size
      config.optim.lr = 1.5e-3
      config.optim.warmup_steps = 5
      # The smallest discriminators that still see every scale: on a 64-wide 2-block ViT even
      # these cost as much as the generator (bench/pmae_vs_mae.py).
      _small_discriminators(config, msg_feature_size=16, dcgan_widths=(8, 16, 32))
      config.optim.groups.discriminator.lr = 1e-4
      # The sum the authors' gan_perceptual code actually computes (2 x L1, no SSIM; see
      # PerceptualMAELossWeights.authors_gan_perceptual_code_path): SSIM's depthwise 3x3
      # convolutions cost a third of this tiny step on CPU.
      m.loss_weights.l1, m.loss_weights.ssim = 2.0, 0.0
    elif preset == "digits":
      common.digits_data(config)
      common.small_vit(config)
      m.decoder_dim, m.decoder_depth, m.decoder_heads = 128, 2, 4
      m.view.size = config.data.image_size
      config.optim.lr = 1.5e-3
      config.optim.warmup_steps = 50
      _small_discriminators(config, msg_feature_size=64, dcgan_widths=(32, 64, 128))
      config.optim.groups.discriminator.lr = 1e-4
    elif preset == "cifar10":
      common.cifar10_data(config)
      common.small_vit(config)
      m.decoder_dim, m.decoder_depth, m.decoder_heads = 128, 2, 4
      m.view.size = config.data.image_size
      config.optim.lr = 1.5e-3
      config.optim.warmup_epochs = 10
      _small_discriminators(config, msg_feature_size=64, dcgan_widths=(32, 64, 128))
      config.optim.groups.discriminator.lr = 1e-4
    elif preset == "imagenet":
      common.imagenet_data(config)
      config.batch_size = 4096
      config.epochs = 300                       # the authors' max_epochs (configs/default.yaml)
      config.model.dtype = "bfloat16"
      if config.model.name == "vit_ti4":
        config.model.name = "vit_b16"
      m.view.size = 224
      m.decoder_dim, m.decoder_depth, m.decoder_heads = 512, 8, 16
      # Generator: MAE's large-batch schedule (base lr 1.5e-4 per 256 images, 40 warm-up epochs,
      # cosine) with the authors' Adam: betas (0.9, 0.95), no weight decay.
      config.optim.lr = 1.5e-4
      config.optim.warmup_epochs = 40
      config.optim.weight_decay = 0.0
      # Discriminator: the authors' Adam at the generator's (scaled) peak lr, as in their code
      # where both groups share lr 1.5e-4; constant after the same warm-up (no StepLR on D).
      o = config.optim.groups.discriminator
      o.lr, o.lr_scaling, o.warmup_epochs = 1.5e-4, "linear", 40
      # The authors' discriminators at 224: MSG depth 6 / ndf 512, DCGAN with their layer stack.
      defaults = perceptual_mae.default_method_config().discriminator
      for key, value in defaults.items():
        if key != "type":
          m.discriminator[key] = value
    elif preset in ("vit_b16", "vit_l16"):
      config.model.name = preset
      common.full_size_vit(config)
    elif preset in ("msg", "dcgan"):
      m.discriminator.type = preset
    elif preset == "cpu":
      # Exactly MAE's `cifar10,cpu` generator and schedule, so the two runs differ only in
      # the discriminator and the losses.
      common.mae_cpu_budget(config)
      # The discriminator's lr follows the generator's cosine to 0: with a constant lr it kept
      # learning while the generator's lr vanished and won the last 40 of 300 steps (accuracy
      # real 0.55 -> 1.00, fake 0.69 -> 0.97), leaving the adversarial terms no signal.
      config.optim.groups.discriminator.schedule = "cosine"
      config.optim.groups.discriminator.warmup_steps = config.optim.warmup_steps
  return config
