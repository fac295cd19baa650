"""Perceptual MAE losses: pixel, SSIM, adversarial, feature matching, style, and their schedule.

Perceptual MAE (Tukra, Hoffman & Chatfield, CVPR 2023) trains an MAE generator with a pixel
loss plus, from a discriminator trained alongside it, an adversarial term, a perceptual term
(feature matching on the discriminator's hidden maps) and a style term (Gram matrices of those
maps). Each function here is a pure function of arrays computed in float32 and names the part of
the authors' code it follows (github.com/tractableai/perceptual-mae, commit bc23d50; mainly
`src/losses/image_reconstruction.py`). docs/perceptual_mae_notes.md lists the choices and the
places where the authors' code and this module differ.

`perceptual_mae_objective` puts all terms into ONE
scalar whose gradient is right for both parameter groups (the design's min-max rule): the
discriminator's loss sees the reconstruction through `stop_gradient`, and the generator's
adversarial, perceptual and style terms see the discriminator's parameters through
`stop_gradient`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.image_ops import image_pyramid

_HIGHEST = jax.lax.Precision.HIGHEST

# (logits [B], feature maps) of a discriminator applied to a batch of images.
DiscriminatorOutput = tuple[jax.Array, Sequence[jax.Array]]
ApplyDiscriminator = Callable[[Any, jax.Array], DiscriminatorOutput]


# ----------------------------------------------------------------------------------------------
# Weights and schedules.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PerceptualMAELossWeights:
  """Loss weights, defaults from the authors' `image_loss_weightings`
  (configs/models/masked_image.yaml: ssim 0.85, style 40.0, perc 0.05, gan 0.7, l1 1.0).

  In the authors' `gan_perceptual` code path the L1 term is added twice (once in `GANLoss`, once
  from `GANPerceptualLoss`'s 'l1' entry) and 'ssim' is never produced, so its weight is unused;
  `authors_gan_perceptual_code_path()` gives the weights that reproduce that sum exactly.
  """
  l1: float = 1.0
  ssim: float = 0.85
  perceptual: float = 0.05
  style: float = 40.0
  gan: float = 0.7

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"loss weight {field.name} must be a finite number >= 0; got {value!r}.")

  @classmethod
  def authors_gan_perceptual_code_path(cls) -> "PerceptualMAELossWeights":
    """Weights whose sum equals the authors' generator loss in `loss_type: gan_perceptual`:
    2 x L1 (GANLoss.forward + GANPerceptualLoss 'l1'), no SSIM, 0.05 perc, 40 style, 0.7 gan."""
    return cls(l1=2.0, ssim=0.0, perceptual=0.05, style=40.0, gan=0.7)


@dataclasses.dataclass(frozen=True)
class AdversarialSchedule:
  """When the generator's adversarial, perceptual and style terms switch on.

  The authors' code applies them from the first step (no start step or warm-up exists in
  tractableai/perceptual-mae), which is the default here. `start_step` keeps them off before
  that step; `warmup_steps` then ramps them linearly to full weight.
  """
  start_step: int = 0
  warmup_steps: int = 0


def adversarial_weight(step, schedule: Any = AdversarialSchedule()) -> jax.Array:
  """Factor in [0, 1] on the generator's adversarial/perceptual/style terms at `step`.

  0 before `schedule.start_step`; then min(1, (step - start_step) / warmup_steps), or 1 at once
  when warmup_steps is 0. Pure and jit-able (step may be traced). `schedule` is any object with
  integer `start_step` and `warmup_steps` attributes (`AdversarialSchedule`, a ConfigDict).
  """
  try:
    start, warmup = int(schedule.start_step), int(schedule.warmup_steps)
  except AttributeError as e:
    raise ValueError(
        "schedule needs integer attributes start_step and warmup_steps (see "
        f"AdversarialSchedule); got {schedule!r}.") from e
  if start < 0 or warmup < 0:
    raise ValueError(f"start_step and warmup_steps must be >= 0; got {start}, {warmup}.")
  step = jnp.asarray(step, jnp.float32)
  if warmup == 0:
    return (step >= start).astype(jnp.float32)
  return jnp.clip((step - start) / warmup, 0.0, 1.0)


def refresh_feature_discriminator(step, feature_discriminator_params, discriminator_params, *,
                                  steps_per_epoch: int, every_epochs: int = 5):
  """The discriminator copy used for the perceptual and style features at `step`.

  The authors match features of a *copy* of the discriminator, reloaded from the live one at
  every step of every epoch divisible by 5 and frozen in between (`if epoch % 5 == 0:
  self.disc_model_copy.load_state_dict(...)` in `MaskedImageLoss.forward`). Pass the index of
  the step whose loss will use the result (e.g. step + 1 from an update after step `step`):
  the copy becomes the live parameters when that step's epoch is a multiple of `every_epochs`
  and stays as it is otherwise. Pure and jit-able.
  """
  if steps_per_epoch <= 0 or every_epochs <= 0:
    raise ValueError(
        f"steps_per_epoch and every_epochs must be > 0; got {steps_per_epoch}, {every_epochs}.")
  epoch = jnp.asarray(step) // steps_per_epoch
  refresh = (epoch % every_epochs) == 0
  return jax.tree.map(lambda live, copy: jnp.where(refresh, live, copy).astype(copy.dtype),
                      discriminator_params, feature_discriminator_params)


# ----------------------------------------------------------------------------------------------
# Pixel losses.
# ----------------------------------------------------------------------------------------------


def _masked_mean(values: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Mean of `values`, or its mean over the entries where `mask` is 1.

  `mask` has the leading dims of `values` (trailing dims are broadcast), e.g. [B, L] for
  [B, L, D] patches (MAE's mean over removed patches) or [B, H, W] / [B, H, W, 1] for images.
  """
  if mask is None:
    return jnp.mean(values)
  mask = jnp.asarray(mask, jnp.float32)
  while mask.ndim < values.ndim:
    mask = mask[..., None]
  try:
    mask = jnp.broadcast_to(mask, values.shape)
  except ValueError as e:
    raise ValueError(
        f"mask of shape {mask.shape} does not fit values of shape {values.shape}; give the "
        "leading dims ([B, L] for patches, [B, H, W] or [B, H, W, 1] for images).") from e
  # An all-visible batch has nothing to score; the max keeps 0/0 from turning into NaN.
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _check_same_shape(pred, target):
  if pred.shape != target.shape:
    raise ValueError(f"pred and target must have the same shape; got {pred.shape} and "
                     f"{target.shape}.")


def l1_loss(pred: jax.Array, target: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Mean absolute error; with `mask` (1 = scored), the mean over masked entries only.

  Without a mask this is `nn.L1Loss()` on the whole image, the authors' pixel term (GANLoss and
  GANPerceptualLoss, `self.l1(pred, gt)`). With a [B, L] patch mask it is MAE's
  `(loss.mean(-1) * mask).sum() / mask.sum()` with |.| in place of the square.
  """
  _check_same_shape(pred, target)
  diff = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  return _masked_mean(diff, mask)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  coords = np.arange(size, dtype=np.float64) - size // 2
  g = np.exp(-coords**2 / (2 * sigma**2))
  g /= g.sum()
  return np.outer(g, g).astype(np.float32)


_SSIM_WINDOWS = ("box3", "gaussian11")


def _local_mean(x: jax.Array, window: str) -> jax.Array:
  """Per-channel local average with the SSIM window, output the same size as `x` ([B,H,W,C])."""
  if window == "box3":
    # monodepth2's SSIM, which the authors' `SSIM` class is: ReflectionPad2d(1) + AvgPool2d(3, 1).
    # A summing reduce_window rather than a depthwise convolution: the same 9-term mean, and
    # on XLA:CPU forward + backward of 64 x 224^2 RGB images takes 0.17 s instead of 1.0 s.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    window_sum = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "VALID")
    return window_sum / 9.0
  if window == "gaussian11":
    # pytorch-ssim (Wang et al. 2004 window): 11x11 Gaussian, sigma 1.5, zero padding of 5.
    x = jnp.pad(x, ((0, 0), (5, 5), (5, 5), (0, 0)))
    kernel = _gaussian_window()
  else:
    raise ValueError(f"window must be one of {_SSIM_WINDOWS}; got {window!r}.")
  channels = x.shape[-1]
  kernel = jnp.tile(jnp.asarray(kernel)[:, :, None, None], (1, 1, 1, channels))
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=channels, precision=_HIGHEST)


def ssim_map(x: jax.Array, y: jax.Array, *, window: str = "box3",
             max_value: float = 1.0) -> jax.Array:
  """Per-pixel, per-channel SSIM (Wang et al. 2004, Eq. 13) of two [B, H, W, C] batches.

  SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
  with C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = `max_value` (1 for [0, 1] images, as the authors'
  hard-coded constants assume) and local moments from the window: "box3" is the authors' SSIM
  (3x3 mean, reflection padding); "gaussian11" is pytorch-ssim's (11x11 Gaussian, sigma 1.5,
  zero padding).
  """
  _check_same_shape(x, y)
  if x.ndim != 4:
    raise ValueError(f"SSIM takes NHWC image batches [B, H, W, C]; got shape {x.shape}.")
  if window == "box3" and min(x.shape[1:3]) < 2:
    raise ValueError(f"the box3 window reflects one pixel and needs H, W >= 2; got {x.shape}.")
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  c1 = (0.01 * max_value)**2
  c2 = (0.03 * max_value)**2
  mu_x = _local_mean(x, window)
  mu_y = _local_mean(y, window)
  sigma_x = _local_mean(x * x, window) - mu_x**2
  sigma_y = _local_mean(y * y, window) - mu_y**2
  sigma_xy = _local_mean(x * y, window) - mu_x * mu_y
  numerator = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
  denominator = (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
  return numerator / denominator


def ssim_loss(pred: jax.Array, target: jax.Array, *, window: str = "box3", max_value: float = 1.0,
              mask: Optional[jax.Array] = None) -> jax.Array:
  """Structural dissimilarity, mean over pixels of clip((1 - SSIM) / 2, 0, 1).

  The authors' `SSIM.ssim` returns `torch.clamp((1 - SSIM_n / SSIM_d) / 2, 0, 1)` and their loss
  takes its mean: half of "1 - SSIM", bounded to [0, 1]; identical images give 0. `mask`
  ([B, H, W] or [B, H, W, 1], 1 = scored) restricts the mean to those pixels.
  """
  dssim = jnp.clip((1.0 - ssim_map(pred, target, window=window, max_value=max_value)) / 2.0,
                   0.0, 1.0)
  return _masked_mean(dssim, mask)


def multiscale_ssim_l1_loss(pred: jax.Array, target: jax.Array, *, num_scales: int = 4,
                            ssim_weight: float = 0.85) -> jax.Array:
  """The authors' `loss_type: ssim` reconstruction loss (`SSIM.forward`).

  Sum over `num_scales` levels of the bilinear align-corners pyramid (`scale_pyramid`, 4 levels
  in `MaskedImageLoss`) of ssim_weight * ssim_loss + (1 - ssim_weight) * L1, with the box3
  window and the hard-coded `ssim_w = 0.85`.
  """
  _check_same_shape(pred, target)
  pred_levels = image_pyramid(pred, num_scales, method="bilinear_align_corners")
  target_levels = image_pyramid(target, num_scales, method="bilinear_align_corners")
  total = jnp.zeros((), jnp.float32)
  for p, t in zip(pred_levels, target_levels):
    total += ssim_weight * ssim_loss(p, t) + (1.0 - ssim_weight) * l1_loss(p, t)
  return total


# ----------------------------------------------------------------------------------------------
# Adversarial losses.
# ----------------------------------------------------------------------------------------------


def _scores(logits: jax.Array, sigmoid_scores: bool) -> jax.Array:
  logits = jnp.asarray(logits, jnp.float32)
  return jax.nn.sigmoid(logits) if sigmoid_scores else logits


def _least_squares(scores: jax.Array, target: float, square_batch_mean: bool) -> jax.Array:
  if square_batch_mean:
    return jnp.square(jnp.mean(scores) - target)
  return jnp.mean(jnp.square(scores - target))


def lsgan_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, *,
                             sigmoid_scores: bool = True,
                             square_batch_mean: bool = True) -> jax.Array:
  """Least-squares GAN discriminator loss 0.5 * ((D(real) - 1)^2 + D(fake)^2) (Mao et al. 2017).

  Defaults follow the authors' `LSGAN.disc_loss` exactly: D is the sigmoid of the logits (their
  discriminators end in `nn.Sigmoid` unless the loss is WGAN) and the batch mean is taken
  *before* squaring, 0.5 * ((mean D(real) - 1)^2 + (mean D(fake))^2).
  `square_batch_mean=False` gives Mao et al.'s mean of per-example squares;
  `sigmoid_scores=False` applies the loss to the raw logits.
  """
  real = _least_squares(_scores(real_logits, sigmoid_scores), 1.0, square_batch_mean)
  fake = _least_squares(_scores(fake_logits, sigmoid_scores), 0.0, square_batch_mean)
  return 0.5 * (real + fake)


def lsgan_generator_loss(fake_logits: jax.Array, *, sigmoid_scores: bool = True,
                         square_batch_mean: bool = True) -> jax.Array:
  """Least-squares GAN generator loss 0.5 * (D(fake) - 1)^2 (authors' `LSGAN.gen_loss`)."""
  return 0.5 * _least_squares(_scores(fake_logits, sigmoid_scores), 1.0, square_batch_mean)


def nonsaturating_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Logistic GAN discriminator loss, 0.5 * (E softplus(-D(real)) + E softplus(D(fake))).

  The authors' `StandardGAN.disc_loss`, (BCE(real, 1) + BCE(fake, 0)) / 2, on logits (their
  module feeds sigmoid outputs into `BCEWithLogitsLoss`, a second sigmoid this does not copy).
  """
  real = jnp.mean(jax.nn.softplus(-jnp.asarray(real_logits, jnp.float32)))
  fake = jnp.mean(jax.nn.softplus(jnp.asarray(fake_logits, jnp.float32)))
  return 0.5 * (real + fake)


def nonsaturating_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating generator loss E softplus(-D(fake)) = BCE(D(fake), 1) (Goodfellow 2014)."""
  return jnp.mean(jax.nn.softplus(-jnp.asarray(fake_logits, jnp.float32)))


def discriminator_accuracy(real_logits: jax.Array,
                           fake_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(fraction of real images scored real, fraction of fakes scored fake), threshold logit 0.

  The authors' ADA feedback, `(sigmoid(D(real)) > 0.5).mean()` and
  `(sigmoid(D(fake)) < 0.5).mean()` (`StyleGAN2ADALoss.adjust_augmentation_strength`).
  """
  real_accuracy = jnp.mean((jnp.asarray(real_logits) > 0).astype(jnp.float32))
  fake_accuracy = jnp.mean((jnp.asarray(fake_logits) < 0).astype(jnp.float32))
  return real_accuracy, fake_accuracy


_GAN_LOSSES = {
    "lsgan": (lsgan_discriminator_loss, lsgan_generator_loss),
    "nonsaturating": (nonsaturating_discriminator_loss, nonsaturating_generator_loss),
}


# ----------------------------------------------------------------------------------------------
# Feature matching and style.
# ----------------------------------------------------------------------------------------------


def _check_feature_lists(fake_features, real_features):
  if len(fake_features) != len(real_features) or not fake_features:
    raise ValueError(
        "fake_features and real_features must be non-empty lists of the same length (one map "
        f"per discriminator layer); got {len(fake_features)} and {len(real_features)}.")
  for i, (f, r) in enumerate(zip(fake_features, real_features)):
    if f.shape != r.shape or f.ndim != 4:
      raise ValueError(
          f"feature map {i}: fake {f.shape} and real {r.shape} must be equal [B, H, W, C].")


def feature_matching_loss(fake_features: Sequence[jax.Array],
                          real_features: Sequence[jax.Array]) -> jax.Array:
  """Perceptual loss: sum over layers of the mean |phi_l(fake) - phi_l(real)|.

  The authors' `GANPerceptualLoss` 'perc' term: `losses['perc'] += self.l1(feat_output[i],
  feat_gt[i])` over the discriminator's layers (L1 averaged within a layer, summed across
  layers). Real features are targets under `stop_gradient`.
  """
  _check_feature_lists(fake_features, real_features)
  total = jnp.zeros((), jnp.float32)
  for fake, real in zip(fake_features, real_features):
    total += jnp.mean(jnp.abs(fake.astype(jnp.float32) -
                              jax.lax.stop_gradient(real).astype(jnp.float32)))
  return total


def gram_matrix(features: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C, C] Gram matrices F F^T / (C H W) (Gatys et al.; the authors'
  `gram_matrix`, from pytorch/examples fast_neural_style), in float32: as the authors warn, the
  products overflow in half precision.

  bfloat16 features (a bf16 discriminator's) are multiplied as they are, into float32: the
  product of two bf16 values is exact in float32 and the matrix units accumulate in float32, so
  this is the float32 Gram of the same values. Upcasting them first and asking for full float32
  precision gave the same numbers on the GPU's far slower float32 units: with the DCGAN
  discriminator at ViT-B/16 224, batch 64, those were 90 GFLOP a step, 1.5% of its matmul FLOPs
  (`bench/train_step.py --matmul_dtypes`).
  """
  if features.ndim != 4:
    raise ValueError(f"gram_matrix takes [B, H, W, C] feature maps; got {features.shape}.")
  _, height, width, channels = features.shape
  if features.dtype == jnp.bfloat16:
    gram = jnp.einsum("bhwc,bhwd->bcd", features, features, preferred_element_type=jnp.float32)
  else:
    f = features.astype(jnp.float32)
    gram = jnp.einsum("bhwc,bhwd->bcd", f, f, precision=_HIGHEST)
  return gram / (channels * height * width)


def style_loss(fake_features: Sequence[jax.Array],
               real_features: Sequence[jax.Array]) -> jax.Array:
  """Style loss: sum over layers of the mean |Gram(phi_l(fake)) - Gram(phi_l(real))|.

  The authors' 'style' term (`self.l1(gram_matrix(feat_output[i]), gram_matrix(feat_gt[i]))`
  summed over layers); real Grams under `stop_gradient`.
  """
  _check_feature_lists(fake_features, real_features)
  total = jnp.zeros((), jnp.float32)
  for fake, real in zip(fake_features, real_features):
    total += jnp.mean(jnp.abs(gram_matrix(fake) - jax.lax.stop_gradient(gram_matrix(real))))
  return total


# ----------------------------------------------------------------------------------------------
# The combined generator + discriminator objective.
# ----------------------------------------------------------------------------------------------


def perceptual_mae_objective(
    fake_images: jax.Array,
    real_images: jax.Array,
    discriminator_params: Any,
    apply_discriminator: ApplyDiscriminator,
    *,
    weights: PerceptualMAELossWeights = PerceptualMAELossWeights(),
    adversarial_weight: Any = 1.0,
    loss_mask: Optional[jax.Array] = None,
    feature_discriminator_params: Any = None,
    gan_loss: str = "lsgan",
    ssim_window: str = "box3",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Generator loss + discriminator loss as one scalar with per-group-correct gradients.

    generator = w.l1 L1 + w.ssim SSIM
                + a * (w.gan G_adv(D_sg(fake)) + w.perceptual FM + w.style Style)
    discriminator = D_adv(D(real), D(sg(fake)))
    total = generator + discriminator

  where sg is `jax.lax.stop_gradient`, D_sg is the discriminator with stop-gradient parameters,
  a = `adversarial_weight` and FM / Style compare the feature maps of D_sg(fake) with those of
  D(real) under stop-gradient. Hence d total / d(generator params) = d generator / d(...) and
  d total / d(discriminator params) = d discriminator / d(...): the same gradients as the
  authors' two Lightning optimizer steps, each of which only updates its own group.

  The discriminator is called separately on real and on fake batches, as in the authors' code,
  so batch statistics (minibatch std, BatchNorm) never mix the two. It trains from the first
  step; `adversarial_weight` only gates the generator's use of it.

  Args:
    fake_images: [B, H, W, C] reconstruction the discriminator judges, a function of the
      generator's parameters (the authors use the decoder's full output, `unpatchify(pred)`).
    real_images: [B, H, W, C] originals.
    discriminator_params: the trainable discriminator's params.
    apply_discriminator: (params, images [B, H, W, C]) -> (logits [B], feature maps). For the
      MSG discriminator this may build the pyramid: `lambda p, x: msg.apply(p, x)`.
    weights: loss weights.
    adversarial_weight: scalar from `adversarial_weight(step, schedule)`.
    loss_mask: optional [B, H, W] / [B, H, W, 1] pixel mask (1 = scored) for L1 and SSIM; None
      scores the whole image as the authors do.
    feature_discriminator_params: the lagged copy whose features the perceptual and style terms
      match (see `refresh_feature_discriminator`); None uses `discriminator_params`.
    gan_loss: "lsgan" (the authors' configs, exactly their `LSGAN`) or "nonsaturating".
    ssim_window: "box3" (authors) or "gaussian11"; only read when weights.ssim > 0.

  Returns:
    (total, metrics) with float32 scalars: l1, ssim, perceptual, style, generator_adversarial,
    generator, discriminator, real_accuracy, fake_accuracy, adversarial_weight.
  """
  if gan_loss not in _GAN_LOSSES:
    raise ValueError(f"gan_loss must be one of {sorted(_GAN_LOSSES)}; got {gan_loss!r}.")
  if fake_images.ndim != 4:
    raise ValueError(f"fake_images must be [B, H, W, C]; got {fake_images.shape}.")
  _check_same_shape(fake_images, real_images)
  discriminator_loss_fn, generator_loss_fn = _GAN_LOSSES[gan_loss]
  sg = jax.lax.stop_gradient
  real_images = sg(real_images)

  # The discriminator's own terms: the reconstruction reaches it only as a constant.
  real_logits, real_features = apply_discriminator(discriminator_params, real_images)
  fake_logits_for_d, _ = apply_discriminator(discriminator_params, sg(fake_images))
  chex.assert_equal_shape([real_logits, fake_logits_for_d])
  discriminator = discriminator_loss_fn(real_logits, fake_logits_for_d)

  # The generator's terms: the discriminator is a fixed function here. (Its forward pass on
  # `fake_images` is the one above: XLA merges the two, the FLOP count of the step shows one.)
  fake_logits_for_g, fake_features = apply_discriminator(sg(discriminator_params), fake_images)
  generator_adversarial = generator_loss_fn(fake_logits_for_g)
  if feature_discriminator_params is None:
    target_features = [sg(f) for f in real_features]
  else:
    feature_params = sg(feature_discriminator_params)
    _, target_features = apply_discriminator(feature_params, real_images)
    _, fake_features = apply_discriminator(feature_params, fake_images)
  perceptual = feature_matching_loss(fake_features, target_features)
  style = style_loss(fake_features, target_features)

  l1 = l1_loss(fake_images, real_images, loss_mask)
  ssim = (ssim_loss(fake_images, real_images, window=ssim_window, mask=loss_mask)
          if weights.ssim > 0 else jnp.zeros((), jnp.float32))
  adv = jnp.asarray(adversarial_weight, jnp.float32)
  generator = (weights.l1 * l1 + weights.ssim * ssim +
               adv * (weights.gan * generator_adversarial + weights.perceptual * perceptual +
                      weights.style * style))

  real_accuracy, fake_accuracy = discriminator_accuracy(real_logits, fake_logits_for_d)
  metrics = {
      "l1": l1,
      "ssim": ssim,
      "perceptual": perceptual,
      "style": style,
      "generator_adversarial": generator_adversarial,
      "generator": generator,
      "discriminator": discriminator,
      "real_accuracy": real_accuracy,
      "fake_accuracy": fake_accuracy,
      "adversarial_weight": adv,
  }
  return generator + discriminator, metrics
