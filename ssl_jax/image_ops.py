"""Image operations shared by methods, losses and models (NHWC arrays, pure JAX).

* `compose_full_image`: an image from its visible patches and reconstructed masked ones (MAE's
  visualisation paste; Perceptual MAE's "composite" discriminator input);
* `image_pyramid`: the [full, 1/2, 1/4, ...] copies that the MSG discriminator and the
  multi-scale perceptual losses of Perceptual MAE read.

Patches follow MAE's order (`models.vit.patchify`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.models import vit


def check_images(images: jax.Array, name: str = "images") -> None:
  if images.ndim != 4:
    raise ValueError(
        f"{name} must be a batch of NHWC images [B, H, W, C]; got shape {images.shape}. "
        "Add a batch axis or move channels last.")


def check_patches(images: jax.Array, patches: jax.Array, patch_size: int,
                  patches_name: str) -> None:
  """`patches` must be [B, L, p*p*C] for `images` [B, H, W, C] cut into p x p patches."""
  check_images(images)
  batch, height, width, channels = images.shape
  if patch_size <= 0 or height % patch_size or width % patch_size:
    raise ValueError(
        f"patch_size={patch_size} must be positive and divide the image size {height}x{width}; "
        "use the patch size the generator was built with.")
  num_patches = (height // patch_size) * (width // patch_size)
  expected = (batch, num_patches, patch_size * patch_size * channels)
  if patches.shape != expected:
    raise ValueError(
        f"{patches_name} must have shape [B, L, p*p*C] = {expected} for images of shape "
        f"{images.shape} and patch_size={patch_size}; got {patches.shape}.")


def compose_full_image(images: jax.Array, reconstructed_patches: jax.Array, mask: jax.Array,
                       patch_size: int) -> jax.Array:
  """The image made of the original's visible patches and the reconstructed masked patches.

  This is the "reconstruction pasted with visible patches" of MAE's visualisation
  (`im_paste = x * (1 - mask) + y * mask`, repeated in the authors'
  `masked_vision_model.py::visualise_sample`). Note that the authors' adversarial and perceptual
  losses see the decoder's *whole* output (`unpatchify(pred)`, visible patches included), not
  this composite; which one the discriminator sees is the caller's choice.

  Args:
    images: [B, H, W, C] originals.
    reconstructed_patches: [B, L, p*p*C] decoder predictions in pixel space, MAE patch order.
      A decoder trained with `norm_pix_loss` predicts per-patch normalised pixels: map them back
      with `losses.reconstruction.unnormalize_patch_predictions` first.
    mask: [B, L], 1 = masked (removed, to be filled by the reconstruction), 0 = visible.
    patch_size: patch side p.

  Returns:
    [B, H, W, C]: visible patches bit-identical to `images`, masked ones from the reconstruction.
  """
  check_patches(images, reconstructed_patches, patch_size, "reconstructed_patches")
  if mask.shape != reconstructed_patches.shape[:2]:
    raise ValueError(
        f"mask must have shape [B, L] = {reconstructed_patches.shape[:2]} (1 = masked); "
        f"got {mask.shape}.")
  original_patches = vit.patchify(images, patch_size)
  is_masked = mask.astype(bool)[..., None]
  patches = jnp.where(is_masked, reconstructed_patches.astype(images.dtype), original_patches)
  grid_hw = (images.shape[1] // patch_size, images.shape[2] // patch_size)
  return vit.unpatchify(patches, patch_size, images.shape[3], grid_hw)


def _align_corners_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] linear interpolation weights, PyTorch `align_corners=True` semantics."""
  weights = np.zeros((size_out, size_in), np.float32)
  if size_out == 1:
    weights[0, 0] = 1.0
    return weights
  source = np.arange(size_out) * (size_in - 1) / (size_out - 1)
  low = np.floor(source).astype(int)
  high = np.minimum(low + 1, size_in - 1)
  frac = (source - low).astype(np.float32)
  np.add.at(weights, (np.arange(size_out), low), 1.0 - frac)
  np.add.at(weights, (np.arange(size_out), high), frac)
  return weights


def _resize_bilinear_align_corners(images: jax.Array, height: int, width: int) -> jax.Array:
  rows = jnp.asarray(_align_corners_matrix(images.shape[1], height))
  cols = jnp.asarray(_align_corners_matrix(images.shape[2], width))
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", rows, images.astype(jnp.float32), precision=hp)
  x = jnp.einsum("pw,bowc->bopc", cols, x, precision=hp)
  return x.astype(images.dtype)


def image_pyramid(images: jax.Array, num_scales: int, method: str = "area") -> list[jax.Array]:
  """[full, 1/2, 1/4, ...] copies of `images`, `num_scales` levels, finest first.

  Args:
    images: [B, H, W, C].
    num_scales: number of levels (the MSG discriminator's `num_scales`).
    method: "area" averages 2x2 blocks (exact halving; H and W must be divisible by
      2**(num_scales-1)); "bilinear_align_corners" is the authors' `scale_pyramid`
      (src/losses/image_reconstruction.py: F.interpolate to H // 2**s, bilinear,
      align_corners=True).
  """
  check_images(images)
  if num_scales < 1:
    raise ValueError(f"num_scales must be >= 1; got {num_scales}.")
  height, width = images.shape[1:3]
  factor = 2**(num_scales - 1)
  if method == "area":
    if height % factor or width % factor:
      raise ValueError(
          f"area pyramid with {num_scales} scales needs H and W divisible by {factor}; got "
          f"{height}x{width}. Resize the images or use fewer scales.")
    levels = [images]
    for _ in range(num_scales - 1):
      levels.append(nn.avg_pool(levels[-1], (2, 2), strides=(2, 2)))
    return levels
  if method == "bilinear_align_corners":
    if height // factor < 1 or width // factor < 1:
      raise ValueError(
          f"{num_scales} scales would shrink {height}x{width} below one pixel; use fewer scales.")
    return [images] + [
        _resize_bilinear_align_corners(images, height // 2**s, width // 2**s)
        for s in range(1, num_scales)
    ]
  raise ValueError(f"method must be 'area' or 'bilinear_align_corners'; got {method!r}.")
