"""Perceptual MAE (Tukra, Hoffman & Chatfield, CVPR 2023) through the one loop.

An MAE generator (the `ssl_jax.methods.mae` encoder and decoder, unchanged) is trained against a
convolutional discriminator that judges whole reconstructed images; besides the pixel loss the
generator gets an adversarial term and a perceptual (feature matching) and style term computed on
the discriminator's hidden feature maps, so the encoder is pushed towards object outlines and
layout rather than exact pixels. Semantics follow the authors' code,
github.com/tractableai/perceptual-mae @ bc23d50 (`loss_type: gan_perceptual`); the pure losses
are `ssl_jax.losses.perceptual`, the discriminators `ssl_jax.models.discriminators`, and every
choice is listed with its source in docs/methods.md (Perceptual MAE).

Params are `{'generator': MAE params, 'discriminator': discriminator params}`, stepped by two
optimizers: `config.optim` for the generator and the group `optim.groups.discriminator` (the
authors' Adam, its own schedule, applied every `discriminator_update_every` steps), declared in
configs/perceptual_mae.py and built by ssl_jax/optim.py. The loss returned to the
loop has the *value* of the generator's total (the loop logs it as `train/loss`) and the
gradient of generator + discriminator objectives, where stop-gradients give each group exactly
its own objective's gradient (`perceptual_mae_objective`).

State holds
* `feature_discriminator`: the lagged copy of the discriminator whose features the perceptual
  and style terms match, refreshed from the live one during every 5th epoch
  (`method.feature_discriminator_refresh_epochs`; 0 = match the live discriminator's features);
* `feature_extractor` (optional): frozen params of an encoder restored from any ssl_jax ViT
  checkpoint (`method.feature_extractor_workdir`), the paper's "pretrained model for feature
  matching" variant (the authors' `loss_type: perceptual`, VGG16 features in their code).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import image_ops, runs
from ssl_jax.config_lib import ConfigError
from ssl_jax.losses import perceptual, reconstruction
from ssl_jax.methods import base, mae
from ssl_jax.models import discriminators, vit

DISCRIMINATOR_TYPES = ("msg", "dcgan")
DISCRIMINATOR_INPUTS = ("decoder_output", "composite")
PIXEL_LOSS_REGIONS = ("full", "masked")


def default_method_config() -> ml_collections.ConfigDict:
  """MAE's method config plus the discriminator, losses, schedule and second optimizer.

  Defaults are the authors' MSG-GAN run (configs/models/masked_image.yaml + msg_gan.yaml).
  """
  m = mae.default_method_config()
  m.name = "perceptual_mae"
  # The authors predict raw pixels ("norm_pix_loss: False ... NOT NEEDED"); their GAN path never
  # reads the flag. With True the predictions are un-normalised before the discriminator.
  m.norm_pix_loss = False

  d = ml_collections.ConfigDict()
  d.type = "msg"                   # msg (multi-scale, authors' default) | dcgan (LS-GAN variant)
  d.msg_num_scales = 6             # discriminator.depth
  d.msg_feature_size = 512         # feature_size_ndf
  d.msg_minibatch_std = True
  d.msg_equalized_lr = False       # conv_layer_type: default
  d.msg_pyramid = "area"           # area | bilinear_align_corners (authors' scale_pyramid)
  d.dcgan_widths = (64, 128, 256, 512, 512)
  d.dcgan_kernel_sizes = (7, 5, 5, 3, 3)
  d.dcgan_paddings = (1, 1, 0, 0, 1)
  d.dcgan_head_kernel_size = 3
  d.dcgan_norm = "batch"           # batch (authors' BatchNorm2d in train mode) | layer
  m.discriminator = d

  # What the discriminator judges: the decoder's whole output (authors: unpatchify(pred)) or
  # the visible input patches pasted with the reconstructed masked ones.
  m.discriminator_input = "decoder_output"
  # Pixel L1/SSIM over the whole image (authors) or the masked patches only (MAE's choice).
  m.pixel_loss_region = "full"
  w = ml_collections.ConfigDict()  # image_loss_weightings of masked_image.yaml.
  w.l1, w.ssim, w.perceptual, w.style, w.gan = 1.0, 0.85, 0.05, 40.0, 0.7
  m.loss_weights = w
  m.gan_loss = "lsgan"             # gan_loss_type: ls (both public GAN variants) | nonsaturating
  m.ssim_window = "box3"
  # The generator's adversarial/perceptual/style terms: off before start, then a linear ramp.
  m.adversarial_start_step = 0
  m.adversarial_warmup_steps = 0
  # k: the discriminator's update is applied on steps 0, k, 2k, ... (authors: 1).
  m.discriminator_update_every = 1
  m.feature_discriminator_refresh_epochs = 5


  # Frozen pretrained feature extractor for an extra perceptual + style term ("" = off).
  m.feature_extractor_workdir = ""
  m.feature_extractor_step = -1            # -1: the latest checkpoint.
  m.feature_extractor_params_path = ""     # e.g. "generator/encoder"; "" finds the encoder.
  m.feature_extractor_blocks = ()          # ViT block indices; () = the last of each third.
  m.feature_extractor_perceptual_weight = 0.05
  m.feature_extractor_style_weight = 40.0
  return m


def vit_block_feature_maps(encoder: vit.VisionTransformer, params: Any, inputs: jax.Array,
                           blocks: Sequence[int]) -> list[jax.Array]:
  """Outputs of the given ViT blocks as [B, h, w, D] maps (CLS token dropped, patch grid).

  A ViT's analogue of the VGG16 block outputs the authors' `VanillaPerceptualLoss` matches.
  """
  names = {f"blocks_{i}" for i in blocks}
  _, captured = encoder.apply(
      {"params": params}, inputs, train=False,
      capture_intermediates=lambda module, method: (method == "__call__"
                                                    and module.name in names),
      mutable=["intermediates"])
  grid_h = inputs.shape[1] // encoder.patch_size
  grid_w = inputs.shape[2] // encoder.patch_size
  maps = []
  for i in blocks:
    tokens = captured["intermediates"][f"blocks_{i}"]["__call__"][0]
    maps.append(tokens[:, 1:].reshape(tokens.shape[0], grid_h, grid_w, tokens.shape[-1]))
  return maps


def default_extractor_blocks(depth: int) -> tuple[int, ...]:
  """The last block of each third of the network (3 feature scales, like the authors' VGG16)."""
  return tuple(sorted({max(0, depth * k // 3 - 1) for k in (1, 2, 3)}))


# ----------------------------------------------------------------------------------------------
# The method.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PerceptualMAE(mae.MAE):
  """MAE generator + discriminator with adversarial, perceptual and style terms."""

  def __post_init__(self):
    self._check_config()

  def _check_config(self):
    m = self.config.method

    def choice(key, value, allowed):
      if value not in allowed:
        raise ConfigError(f"method.{key} must be one of {allowed}; got {value!r}.")

    choice("discriminator.type", m.discriminator.type, DISCRIMINATOR_TYPES)
    choice("discriminator_input", m.discriminator_input, DISCRIMINATOR_INPUTS)
    choice("pixel_loss_region", m.pixel_loss_region, PIXEL_LOSS_REGIONS)
    choice("gan_loss", m.gan_loss, ("lsgan", "nonsaturating"))
    if int(m.discriminator_update_every) < 1:
      raise ConfigError("method.discriminator_update_every must be >= 1 (1 = every step, k = "
                        f"every k-th step); got {m.discriminator_update_every}.")
    if int(m.feature_discriminator_refresh_epochs) < 0:
      raise ConfigError("method.feature_discriminator_refresh_epochs must be >= 0 (0 = match "
                        "the live discriminator's features); got "
                        f"{m.feature_discriminator_refresh_epochs}.")
    if int(m.adversarial_start_step) < 0 or int(m.adversarial_warmup_steps) < 0:
      raise ConfigError("method.adversarial_start_step and adversarial_warmup_steps must be "
                        f">= 0; got {m.adversarial_start_step}, {m.adversarial_warmup_steps}.")
    self.loss_weights  # Raises on a negative or non-finite weight.

  # -- configuration views ---------------------------------------------------------------------

  @property
  def loss_weights(self) -> perceptual.PerceptualMAELossWeights:
    w = self.config.method.loss_weights
    return perceptual.PerceptualMAELossWeights(l1=w.l1, ssim=w.ssim, perceptual=w.perceptual,
                                               style=w.style, gan=w.gan)

  @property
  def adversarial_schedule(self) -> perceptual.AdversarialSchedule:
    m = self.config.method
    return perceptual.AdversarialSchedule(start_step=int(m.adversarial_start_step),
                                          warmup_steps=int(m.adversarial_warmup_steps))

  @property
  def discriminator_update_every(self) -> int:
    return int(self.config.method.discriminator_update_every)

  @property
  def discriminator(self) -> nn.Module:
    d = self.config.method.discriminator
    dtype = base.compute_dtype(self.config.model)
    if d.type == "msg":
      return discriminators.MSGDiscriminator(
          num_scales=d.msg_num_scales, feature_size=d.msg_feature_size,
          minibatch_std=d.msg_minibatch_std, equalized_lr=d.msg_equalized_lr, dtype=dtype)
    return discriminators.DCGANDiscriminator(
        widths=tuple(d.dcgan_widths), kernel_sizes=tuple(d.dcgan_kernel_sizes),
        paddings=tuple(d.dcgan_paddings), head_kernel_size=d.dcgan_head_kernel_size,
        norm=d.dcgan_norm, dtype=dtype)

  def apply_discriminator(self, params, images: jax.Array):
    """(logits [B], feature maps) of the discriminator on [B, H, W, 3] images in [0, 1]."""
    d = self.config.method.discriminator
    if d.type == "msg":
      images = image_ops.image_pyramid(images, d.msg_num_scales, method=d.msg_pyramid)
    return self.discriminator.apply({"params": params}, images)

  @functools.cached_property
  def feature_extractor(self) -> runs.RunEncoder | None:
    """The frozen encoder named by `method.feature_extractor_workdir`, restored once."""
    m = self.config.method
    if not m.feature_extractor_workdir:
      return None
    step = None if int(m.feature_extractor_step) < 0 else int(m.feature_extractor_step)
    return runs.load_encoder(m.feature_extractor_workdir, step=step,
                             params_path=m.feature_extractor_params_path,
                             params_path_key="method.feature_extractor_params_path")

  @property
  def feature_extractor_blocks(self) -> tuple[int, ...]:
    extractor = self.feature_extractor
    depth = extractor.encoder.depth
    blocks = tuple(int(b) for b in self.config.method.feature_extractor_blocks)
    blocks = blocks or default_extractor_blocks(depth)
    if any(not 0 <= b < depth for b in blocks):
      raise ConfigError(f"method.feature_extractor_blocks={blocks} must index the extractor's "
                        f"{depth} blocks (0..{depth - 1}).")
    return blocks

  # -- Method contract ---------------------------------------------------------------------------

  def init(self, rng, batch):
    generator_rng, discriminator_rng = jax.random.split(rng)
    generator_params, _ = super().init(generator_rng, batch)
    # Two images: the minibatch-stddev and batch-norm statistics need a batch to be defined.
    probe = jnp.zeros((2, self.image_size, self.image_size, 3), jnp.float32)
    d = self.config.method.discriminator
    if d.type == "msg":
      probe = image_ops.image_pyramid(probe, d.msg_num_scales, method=d.msg_pyramid)
    discriminator_params = self.discriminator.init(discriminator_rng, probe)["params"]
    params = {"generator": generator_params, "discriminator": discriminator_params}
    state = {}
    if self.config.method.feature_discriminator_refresh_epochs:
      state["feature_discriminator"] = jax.tree.map(jnp.copy, discriminator_params)
    if self.feature_extractor is not None:
      # Host arrays become constants of the jitted init; afterwards they live (and are
      # checkpointed) in the state, never in params, so no optimizer ever touches them.
      state["feature_extractor"] = jax.tree.map(jnp.asarray, self.feature_extractor.params)
    return params, state

  def reconstruct(self, generator_params, images: jax.Array, rng: jax.Array, *,
                  train: bool) -> dict[str, jax.Array]:
    """MAE forward, then the images the losses compare, in [0, 1] pixel units.

    Returns fake_images / real_images [B, H, W, 3] (the authors' losses and discriminator work
    on un-normalised images), loss_mask ([B, H, W, 1] masked pixels, or None for the whole
    image) and MAE's pred / target / mask.
    """
    pred, target, mask = self.forward(generator_params, images, rng, train=train)
    p = self.patch_size
    pixel_patches = pred
    if self.config.method.norm_pix_loss:
      pixel_patches = reconstruction.unnormalize_patch_predictions(pred, images, p)
    if self.config.method.discriminator_input == "composite":
      fake = image_ops.compose_full_image(images, pixel_patches, mask, p)
    else:
      fake = vit.unpatchify(pixel_patches, p, 3)
    view = self.config.method.view
    mean = jnp.asarray(view.mean, jnp.float32)
    std = jnp.asarray(view.std, jnp.float32)
    loss_mask = None
    if self.config.method.pixel_loss_region == "masked":
      loss_mask = vit.unpatchify(jnp.repeat(mask[..., None], p * p, axis=-1), p, 1)
    return {"fake_images": fake * std + mean, "real_images": images * std + mean,
            "loss_mask": loss_mask, "pred": pred, "target": target, "mask": mask}

  def extractor_terms(self, extractor_params, fake_images, real_images):
    """(perceptual, style) of the frozen extractor's block maps, fake vs real (authors'
    `VanillaPerceptualLoss`: L1 of features and of Gram matrices, summed over layers)."""
    extractor = self.feature_extractor
    blocks = self.feature_extractor_blocks
    extractor_params = jax.lax.stop_gradient(extractor_params)
    fake_maps = vit_block_feature_maps(extractor.encoder, extractor_params,
                                       extractor.preprocess(fake_images), blocks)
    real_maps = vit_block_feature_maps(extractor.encoder, extractor_params,
                                       extractor.preprocess(jax.lax.stop_gradient(real_images)),
                                       blocks)
    return (perceptual.feature_matching_loss(fake_maps, real_maps),
            perceptual.style_loss(fake_maps, real_maps))

  def objective(self, params, state, images, rng, step) -> tuple[jax.Array, dict[str, Any]]:
    """generator + discriminator objectives on normalised views `images` (see module doc).

    Returns (total, terms): total's gradient is each group's own objective's gradient; terms
    holds every summand, 'generator' and 'discriminator' included.
    """
    m = self.config.method
    recon = self.reconstruct(params["generator"], images, rng, train=True)
    total, terms = perceptual.perceptual_mae_objective(
        recon["fake_images"], recon["real_images"], params["discriminator"],
        self.apply_discriminator, weights=self.loss_weights,
        adversarial_weight=perceptual.adversarial_weight(step, self.adversarial_schedule),
        loss_mask=recon["loss_mask"], feature_discriminator_params=state.get(
            "feature_discriminator"), gan_loss=m.gan_loss, ssim_window=m.ssim_window)
    terms = dict(terms)
    if "feature_extractor" in state:
      extractor_perceptual, extractor_style = self.extractor_terms(
          state["feature_extractor"], recon["fake_images"], recon["real_images"])
      extra = (m.feature_extractor_perceptual_weight * extractor_perceptual +
               m.feature_extractor_style_weight * extractor_style)
      terms.update(extractor_perceptual=extractor_perceptual, extractor_style=extractor_style)
      terms["generator"] = terms["generator"] + extra
      total = total + extra
    terms["mae_loss"] = jax.lax.stop_gradient(
        reconstruction.masked_mse(recon["pred"], recon["target"], recon["mask"]))
    return total, terms

  def loss(self, params, state, batch, rng, step):
    view_rng, model_rng = jax.random.split(rng)
    images = self._views(view_rng, batch)
    total, terms = self.objective(params, state, images, model_rng, step)
    # Value: the generator's total (logged as train/loss); gradient: that of `total`.
    loss = total - jax.lax.stop_gradient(terms["discriminator"])
    every = self.discriminator_update_every
    metrics = {
        "disc_loss": terms["discriminator"],
        "disc_real_acc": terms["real_accuracy"],
        "disc_fake_acc": terms["fake_accuracy"],
        # 1 on the steps whose discriminator update the optimizer applies (its count == step).
        "disc_update": (jnp.asarray(step) % every == 0).astype(jnp.float32),
        "gen_adversarial": terms["generator_adversarial"],
        "adversarial_weight": terms["adversarial_weight"],
    }
    for name in ("l1", "ssim", "perceptual", "style", "mae_loss", "extractor_perceptual",
                 "extractor_style"):
      if name in terms:
        metrics[name] = terms[name]
    return loss, (metrics, state)

  def update_state(self, params, state, step):
    refresh_epochs = int(self.config.method.feature_discriminator_refresh_epochs)
    if not refresh_epochs:
      return state
    state = dict(state)
    # The copy the *next* step's loss matches (authors: reloaded while epoch % 5 == 0).
    state["feature_discriminator"] = perceptual.refresh_feature_discriminator(
        step + 1, state["feature_discriminator"], params["discriminator"],
        steps_per_epoch=self.steps_per_epoch, every_epochs=refresh_epochs)
    return state

  def features(self, params, state, images):
    return super().features(params["generator"], state, images)

  def visualize(self, params, state, images, rng):
    return super().visualize(params["generator"], state, images, rng)

