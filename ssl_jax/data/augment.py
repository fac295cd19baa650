"""View augmentations as pure JAX functions of (rng, images), run on the device inside jit.

Single-image functions take `image` float32 [H, W, C] in [0, 1] and return the same layout;
`make_views` vmaps a whole recipe over a batch with one independent key per image. The
semantics are torchvision's, which SimCLR, MoCo v2/v3, BYOL and DINO use in their official
PyTorch code (BYOL's JAX code uses TF semantics for brightness; we follow torchvision):

* RandomResizedCrop: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), 10 tries, the
  first that fits wins, else a centre crop clamped to the ratio range; bilinear (antialiased)
  resize of the window.
* ColorJitter: brightness x*f, contrast blend with the mean gray level, saturation blend with
  the grayscale image, hue rotation in HSV; factors f ~ U[max(0, 1-s), 1+s] (hue: U[-h, h]),
  the four ops in a random order, each result clipped to [0, 1].
* RandomGrayscale (ITU-R 601 luma, tiled to 3 channels), GaussianBlur (sigma ~ U(sigma), a
  separable kernel with reflect padding), RandomSolarize (x >= threshold -> 1 - x).

Probabilities and sizes are static Python numbers (from the config); an op whose probability is
0 is left out of the traced program, not computed and discarded. Each op draws all its random
numbers with one `jax.random.uniform` call: every PRNG call site is a separate threefry hash in
the compiled program, and fewer of them compile noticeably faster.
"""

from __future__ import annotations

import difflib
import math
from typing import Callable, Sequence

import chex
import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections

_CROP_TRIES = 10
# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma).
_LUMA_WEIGHTS = (0.2989, 0.587, 0.114)


def _apply_with_prob(uniform: jax.Array, prob: float, transformed: jax.Array,
                     image: jax.Array) -> jax.Array:
  """`transformed` where `uniform` (a U[0,1) draw) < prob, else `image`.

  Under vmap a lax.cond lowers to a select anyway, so a select is no slower and keeps the
  function branch-free.
  """
  return jnp.where(uniform < prob, transformed, image)


def _between(uniform: jax.Array, low: float, high: float) -> jax.Array:
  return low + (high - low) * uniform


def _uniform_int(uniform: jax.Array, count: jax.Array) -> jax.Array:
  """A U[0,1) draw -> a uniform int in [0, count), for a traced count."""
  return jnp.minimum(jnp.floor(uniform * count).astype(jnp.int32), count - 1)


def _crop_window(rng: chex.PRNGKey, height: int, width: int, scale: Sequence[float],
                 ratio: Sequence[float]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """torchvision RandomResizedCrop.get_params, with its 10 tries drawn at once.

  Returns (top, left, crop_height, crop_width) as int32 scalars.
  """
  uniforms = jax.random.uniform(rng, (2 * _CROP_TRIES + 2,))
  area_draws, ratio_draws = uniforms[:_CROP_TRIES], uniforms[_CROP_TRIES:2 * _CROP_TRIES]
  top_draw, left_draw = uniforms[-2], uniforms[-1]
  target_area = float(height * width) * _between(area_draws, scale[0], scale[1])
  aspect = jnp.exp(_between(ratio_draws, math.log(ratio[0]), math.log(ratio[1])))
  # jnp.round rounds half to even, as Python's round() in torchvision does.
  crop_widths = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
  crop_heights = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
  fits = ((crop_widths > 0) & (crop_widths <= width) & (crop_heights > 0)
          & (crop_heights <= height))
  first_fit = jnp.argmax(fits)

  # The fallback depends only on static shapes: compute it in Python.
  in_ratio = width / height
  if in_ratio < min(ratio):
    fallback_w, fallback_h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    fallback_w, fallback_h = int(round(height * max(ratio))), height
  else:
    fallback_w, fallback_h = width, height

  any_fit = fits.any()
  crop_h = jnp.where(any_fit, crop_heights[first_fit], fallback_h)
  crop_w = jnp.where(any_fit, crop_widths[first_fit], fallback_w)
  top = jnp.where(any_fit, _uniform_int(top_draw, height - crop_h + 1), (height - fallback_h) // 2)
  left = jnp.where(any_fit, _uniform_int(left_draw, width - crop_w + 1), (width - fallback_w) // 2)
  return top, left, crop_h, crop_w


def _window_weights(start: jax.Array, length: jax.Array, in_size: int,
                    out_size: int) -> jax.Array:
  """[out_size, in_size] weights resampling input pixels [start, start + length) to out_size.

  The triangle (bilinear) kernel is widened by the downscaling factor, which is how PIL and
  `jax.image.resize(..., antialias=True)` antialias; pixels outside the window get no weight, so
  this equals cropping first and resizing the crop, as torchvision does.
  """
  start = start.astype(jnp.float32)
  length = length.astype(jnp.float32)
  step = length / out_size
  # Pixel centres sit at integer + 0.5 in continuous coordinates.
  centres = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * step - 0.5
  positions = jnp.arange(in_size, dtype=jnp.float32)
  kernel_width = jnp.maximum(step, 1.0)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(positions[None, :] - centres[:, None]) / kernel_width)
  weights = jnp.where((positions >= start) & (positions < start + length), weights, 0.0)
  return weights / jnp.sum(weights, axis=1, keepdims=True)


def crop_and_resize(image: jax.Array, top: jax.Array, left: jax.Array, crop_h: jax.Array,
                    crop_w: jax.Array, out_size: int) -> jax.Array:
  """Bilinear (antialiased) resize of the window [top, top+crop_h) x [left, left+crop_w).

  The window may be traced: it only changes the entries of two small resampling matrices, so
  the output shape stays static and the work is two matmuls (MXU-friendly on TPU).
  """
  row_weights = _window_weights(jnp.asarray(top), jnp.asarray(crop_h), image.shape[0], out_size)
  col_weights = _window_weights(jnp.asarray(left), jnp.asarray(crop_w), image.shape[1],
                                out_size)
  # HIGHEST: TPUs would otherwise multiply f32 in bfloat16 and blur 8-bit pixel values.
  return jnp.einsum("oh,hwc,pw->opc", row_weights, image, col_weights,
                    precision=jax.lax.Precision.HIGHEST)


def random_resized_crop(rng: chex.PRNGKey, image: jax.Array, *, out_size: int,
                        scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> jax.Array:
  """Inception-style random crop (Szegedy et al. 2015; torchvision RandomResizedCrop)."""
  chex.assert_rank(image, 3)
  if not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}.")
  if not 0 < ratio[0] <= ratio[1]:
    raise ValueError(f"crop ratio must satisfy 0 < low <= high, got {tuple(ratio)}.")
  height, width = image.shape[:2]
  top, left, crop_h, crop_w = _crop_window(rng, height, width, scale, ratio)
  return crop_and_resize(image, top, left, crop_h, crop_w, out_size)


def random_flip(rng: chex.PRNGKey, image: jax.Array, prob: float = 0.5) -> jax.Array:
  """Horizontal (left-right) flip with probability `prob`."""
  return _apply_with_prob(jax.random.uniform(rng), prob, image[:, ::-1], image)


def random_translate(rng: chex.PRNGKey, image: jax.Array, max_shift: int) -> jax.Array:
  """Shifts [H, W, C] by up to `max_shift` pixels each way, reflecting at the borders.

  FixMatch's weak augmentation (google-research/fixmatch `libml/data.py` `augment_shift`):
  reflect-pad by `max_shift`, then a uniformly placed H x W crop.
  """
  if max_shift <= 0:
    return image
  height, width = image.shape[:2]
  padded = jnp.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                   mode="reflect")
  top, left = jax.random.randint(rng, (2,), 0, 2 * max_shift + 1)
  return jax.lax.dynamic_slice(padded, (top, left, 0), (height, width, image.shape[2]))


def cutout(rng: chex.PRNGKey, image: jax.Array, max_fraction: float,
           fill: float = 0.5) -> jax.Array:
  """Sets a square of side U(0, max_fraction) * width, centred anywhere, to `fill` (gray).

  FixMatch's Cutout (Sohn et al. 2020, Table 12: side L * width, L in [0, 0.5]), clipped at
  the image border as DeVries & Taylor 2017 do.
  """
  height, width = image.shape[:2]
  size_key, y_key, x_key = jax.random.split(rng, 3)
  half = jax.random.uniform(size_key, (), minval=0.0, maxval=max_fraction) * width / 2
  cy = jax.random.uniform(y_key, (), maxval=height)
  cx = jax.random.uniform(x_key, (), maxval=width)
  rows = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
  cols = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
  inside = (jnp.abs(rows - cy) < half) & (jnp.abs(cols - cx) < half)
  return jnp.where(inside[..., None], jnp.asarray(fill, image.dtype), image)


def grayscale(image: jax.Array) -> jax.Array:
  """Luma (torchvision weights) tiled back to 3 channels."""
  luma = jnp.tensordot(image, jnp.asarray(_LUMA_WEIGHTS, image.dtype), axes=(-1, 0))
  return jnp.repeat(luma[..., None], image.shape[-1], axis=-1)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision adjust_brightness: blend with black, i.e. x * factor."""
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision adjust_contrast: blend with the image's mean gray level."""
  mean_gray = jnp.mean(grayscale(image)[..., 0])
  return jnp.clip(factor * image + (1.0 - factor) * mean_gray, 0.0, 1.0)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision adjust_saturation: blend with the grayscale image."""
  return jnp.clip(factor * image + (1.0 - factor) * grayscale(image), 0.0, 1.0)


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
  """torchvision adjust_hue: rotate hue by `shift` turns (in [-0.5, 0.5]) in HSV space."""
  hsv = pix.rgb_to_hsv(image)
  hsv = hsv.at[..., 0].set((hsv[..., 0] + shift) % 1.0)
  return jnp.clip(pix.hsv_to_rgb(hsv), 0.0, 1.0)


def color_jitter(rng: chex.PRNGKey, image: jax.Array, *, brightness: float, contrast: float,
                 saturation: float, hue: float, prob: float = 1.0) -> jax.Array:
  """torchvision ColorJitter (random order of the four ops), applied with probability `prob`.

  An op whose strength is 0 is skipped, as torchvision does.
  """
  chex.assert_shape(image, (None, None, 3))
  if not 0 <= hue <= 0.5:
    raise ValueError(f"hue jitter must be in [0, 0.5] (a fraction of a turn), got {hue}.")
  for name, strength in (("brightness", brightness), ("contrast", contrast),
                         ("saturation", saturation)):
    if strength < 0:
      raise ValueError(f"{name} jitter must be >= 0, got {strength}.")
  # Draws: [apply, factor x 4, order key x 4].
  uniforms = jax.random.uniform(rng, (9,))
  ops: list[Callable[[jax.Array], jax.Array]] = []
  for draw, strength, adjust in ((uniforms[1], brightness, adjust_brightness),
                                 (uniforms[2], contrast, adjust_contrast),
                                 (uniforms[3], saturation, adjust_saturation)):
    if strength > 0:
      factor = _between(draw, max(0.0, 1.0 - strength), 1.0 + strength)
      ops.append(lambda x, adjust=adjust, factor=factor: adjust(x, factor))
  if hue > 0:
    shift = _between(uniforms[4], -hue, hue)
    ops.append(lambda x: adjust_hue(x, shift))
  if not ops:
    return image
  # The argsort of i.i.d. uniforms is a uniformly random permutation.
  order = jnp.argsort(uniforms[5:5 + len(ops)])
  # A loop rather than unrolled steps: under vmap each switch evaluates every op, and one loop
  # body keeps the traced program (and its compile time) four times smaller.
  jittered = jax.lax.fori_loop(
      0, len(ops), lambda position, x: jax.lax.switch(order[position], ops, x), image)
  return _apply_with_prob(uniforms[0], prob, jittered, image)


def random_grayscale(rng: chex.PRNGKey, image: jax.Array, prob: float) -> jax.Array:
  """torchvision RandomGrayscale: luma tiled to all channels with probability `prob`."""
  return _apply_with_prob(jax.random.uniform(rng), prob, grayscale(image), image)


def default_blur_kernel_size(image_size: int) -> int:
  """An odd kernel about 10% of the image side (SimCLR; BYOL uses 23 at 224)."""
  size = int(0.1 * image_size)
  return max(3, size + 1 - size % 2)


def blur(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
  """Separable Gaussian blur with reflect padding (torchvision gaussian_blur)."""
  radius = kernel_size // 2
  height, width = image.shape[:2]
  if radius >= min(height, width):
    raise ValueError(f"blur kernel_size {kernel_size} is too large for a {height}x{width} "
                     "image; it must be at most 2 * min(H, W) - 1.")
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * (offsets / sigma) ** 2)
  weights = weights / jnp.sum(weights)
  padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
  image = sum(weights[t] * padded[t:t + height] for t in range(kernel_size))
  padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
  return sum(weights[t] * padded[:, t:t + width] for t in range(kernel_size))


def gaussian_blur(rng: chex.PRNGKey, image: jax.Array, *, prob: float,
                  sigma: Sequence[float] = (0.1, 2.0),
                  kernel_size: int | None = None) -> jax.Array:
  """Blur with sigma ~ U(sigma) with probability `prob` (SimCLR / BYOL GaussianBlur)."""
  if kernel_size is None:
    kernel_size = default_blur_kernel_size(image.shape[0])
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(f"blur kernel_size must be a positive odd int, got {kernel_size}.")
  apply_draw, sigma_draw = jax.random.uniform(rng, (2,))
  drawn_sigma = _between(sigma_draw, sigma[0], sigma[1])
  return _apply_with_prob(apply_draw, prob, blur(image, drawn_sigma, kernel_size), image)


def solarize(rng: chex.PRNGKey, image: jax.Array, *, prob: float,
             threshold: float = 0.5) -> jax.Array:
  """torchvision RandomSolarize: pixels >= threshold become 1 - x, with probability `prob`."""
  solarized = jnp.where(image >= threshold, 1.0 - image, image)
  return _apply_with_prob(jax.random.uniform(rng), prob, solarized, image)


def normalize(image: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """(x - mean) / std per channel."""
  if len(mean) != image.shape[-1] or len(std) != image.shape[-1]:
    raise ValueError(f"normalize: mean {tuple(mean)} and std {tuple(std)} need one value per "
                     f"channel ({image.shape[-1]}).")
  if not all(float(s) > 0 for s in std):
    raise ValueError(f"normalize: std {tuple(std)} must be > 0 in every channel (it divides).")
  mean = jnp.asarray(mean, image.dtype)
  std = jnp.asarray(std, image.dtype)
  return (image - mean) / std


_VIEW_DEFAULTS = dict(
    size=32, crop_scale=(0.08, 1.0), crop_ratio=(0.75, 1.3333), flip_prob=0.5, jitter_prob=0.0,
    brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_prob=0.0, blur_prob=0.0,
    blur_sigma=(0.1, 2.0), solarize_prob=0.0, mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225))


def view_config(**overrides) -> ml_collections.ConfigDict:
  """A view recipe; unknown fields are an error naming the closest valid ones.

  The defaults are a plain random-resized-crop + flip view; e.g. the BYOL views are
  `view_config(size=224, jitter_prob=0.8, grayscale_prob=0.2, blur_prob=1.0)` and
  `view_config(size=224, jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.1,
  solarize_prob=0.2)`.
  """
  unknown = sorted(set(overrides) - set(_VIEW_DEFAULTS))
  if unknown:
    hints = {k: difflib.get_close_matches(k, list(_VIEW_DEFAULTS), n=3) for k in unknown}
    raise ValueError(f"Unknown view field(s) {unknown}; closest valid: {hints}. Valid fields: "
                     f"{sorted(_VIEW_DEFAULTS)}.")
  config = ml_collections.ConfigDict({**_VIEW_DEFAULTS, **overrides})
  config.lock()
  return config


def _check_probabilities(view: ml_collections.ConfigDict) -> None:
  for field in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
    if not 0.0 <= view[field] <= 1.0:
      raise ValueError(f"view.{field} must be a probability in [0, 1], got {view[field]}.")


def _view_of_one_image(rng: chex.PRNGKey, image: jax.Array,
                       view: ml_collections.ConfigDict) -> jax.Array:
  crop_key, flip_key, jitter_key, gray_key, blur_key, solarize_key = jax.random.split(rng, 6)
  image = random_resized_crop(crop_key, image, out_size=view.size, scale=tuple(view.crop_scale),
                              ratio=tuple(view.crop_ratio))
  if view.flip_prob > 0:
    image = random_flip(flip_key, image, view.flip_prob)
  if view.jitter_prob > 0:
    image = color_jitter(jitter_key, image, brightness=view.brightness, contrast=view.contrast,
                         saturation=view.saturation, hue=view.hue, prob=view.jitter_prob)
  if view.grayscale_prob > 0:
    image = random_grayscale(gray_key, image, view.grayscale_prob)
  if view.blur_prob > 0:
    image = gaussian_blur(blur_key, image, prob=view.blur_prob, sigma=tuple(view.blur_sigma))
  if view.solarize_prob > 0:
    image = solarize(solarize_key, image, prob=view.solarize_prob)
  return image


def uint8_to_unit(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, C] (as the host pipeline yields) -> float32 in [0, 1]."""
  if images.dtype != jnp.uint8:
    raise ValueError(f"Expected uint8 images (as the host pipeline yields), got {images.dtype}.")
  chex.assert_rank(images, 4)
  return images.astype(jnp.float32) / 255.0


def make_views(rng: chex.PRNGKey, images: jax.Array,
               view: ml_collections.ConfigDict) -> jax.Array:
  """uint8 [B,H,W,C] -> float32 [B, view.size, view.size, C], augmented and normalized.

  Each image gets its own key (`jax.random.split(rng, B)`), so views are independent across
  the batch and a function of `rng` alone.
  """
  _check_probabilities(view)
  unit = uint8_to_unit(images)
  keys = jax.random.split(rng, unit.shape[0])
  views = jax.vmap(lambda key, image: _view_of_one_image(key, image, view))(keys, unit)
  return normalize(views, tuple(view.mean), tuple(view.std))


def eval_view(images: jax.Array, *, size: int, mean: Sequence[float],
              std: Sequence[float]) -> jax.Array:
  """The deterministic view: uint8 [B,H,W,C] -> float32 [B,size,size,C], resized if needed."""
  unit = uint8_to_unit(images)
  if unit.shape[1:3] != (size, size):
    unit = jax.image.resize(unit, (unit.shape[0], size, size, unit.shape[-1]), method="linear",
                            antialias=True)
  return normalize(unit, mean, std)
