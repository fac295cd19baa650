"""Pixel-reconstruction targets and losses of masked image modelling (MAE, Perceptual MAE,
Context Encoders' `masked_pixel_mse`).

He et al., "Masked Autoencoders Are Scalable Vision Learners" (2022), Sec. 3 "Reconstruction
target": the decoder predicts the p*p*C pixels of every patch; the target is optionally
normalised per patch (`norm_pix_loss`: mean and *unbiased* variance, eps 1e-6, as torch's `var`
computes it in facebookresearch/mae `models_mae.py::forward_loss`), and the loss is the mean
squared error per patch averaged over the removed patches only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax import image_ops
from ssl_jax.models import vit

NORM_PIX_EPS = 1e-6


def _patch_statistics(patches: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-patch mean and sqrt(unbiased var + eps), MAE's `norm_pix_loss` statistics."""
  mean = jnp.mean(patches, axis=-1, keepdims=True)
  var = jnp.var(patches, axis=-1, keepdims=True, ddof=1)  # torch.Tensor.var is unbiased.
  return mean, jnp.sqrt(var + NORM_PIX_EPS)


def patch_targets(images: jax.Array, patch_size: int, norm_pix_loss: bool) -> jax.Array:
  """Reconstruction targets [B, L, p*p*C]; per-patch normalised when `norm_pix_loss`."""
  target = vit.patchify(images, patch_size).astype(jnp.float32)
  if norm_pix_loss:
    mean, std = _patch_statistics(target)
    target = (target - mean) / std
  return target


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """MAE loss: per-patch MSE averaged over removed patches only (mask == 1)."""
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  return jnp.sum(per_patch * mask) / jnp.sum(mask)


def masked_pixel_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Context Encoders' reconstruction loss (Pathak et al. 2016, Eq. 1): the squared error of
  [B, H, W, C] images averaged over the pixels where the [B, H, W, 1] `mask` is 1 (the hole)."""
  image_ops.check_images(pred, "pred")
  if pred.shape != target.shape or mask.shape != pred.shape[:3] + (1,):
    raise ValueError(f"pred and target must have one shape [B, H, W, C] and mask [B, H, W, 1]; "
                     f"got {pred.shape}, {target.shape} and {mask.shape}.")
  mask = mask.astype(jnp.float32)
  squared = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  return jnp.sum(squared * mask) / (jnp.sum(mask) * pred.shape[-1])


def unnormalize_patch_predictions(predicted_patches: jax.Array, images: jax.Array,
                                  patch_size: int) -> jax.Array:
  """Maps `norm_pix_loss` predictions back to pixels with the target patches' mean and std.

  This inverts `patch_targets(..., norm_pix_loss=True)` using the statistics of the real
  patches, as MAE's visualisation does. The Perceptual MAE authors run with `norm_pix_loss:
  False` (configs/models/masked_image.yaml) and their GAN path never reads it, so their
  discriminator always sees raw pixel predictions.
  """
  image_ops.check_patches(images, predicted_patches, patch_size, "predicted_patches")
  mean, std = _patch_statistics(vit.patchify(images.astype(jnp.float32), patch_size))
  return predicted_patches.astype(jnp.float32) * std + mean
