"""RandAugment (Cubuk et al. 2020) on the device, as timm's 'rand-m9-mstd0.5-inc1' policy.

MAE and DeiT fine-tune with timm's `rand_augment_transform('rand-m9-mstd0.5-inc1')`: for every
image, `num_layers` (2) ops are drawn uniformly *with replacement* from the 15 "increasing"
ops below; each is applied with probability `prob` (0.5) at a magnitude drawn per application
from N(magnitude, magnitude_std) and clipped to [0, 10]; magnitude_std = inf draws it from
U(0, magnitude) instead (timm's `_randomize_magnitude`; FixMatch's random-magnitude RA). Op arguments follow timm
(`auto_augment.py`, level = magnitude / 10):

  AutoContrast, Equalize, Invert             no argument
  Rotate                                     +-30 * level degrees
  PosterizeIncreasing                        keep 4 - int(4 * level) bits
  SolarizeIncreasing                         invert pixels >= 256 - int(256 * level)
  SolarizeAdd                                add int(110 * level) to pixels < 128
  Color/Contrast/Brightness/SharpnessIncreasing   enhance factor max(0.1, 1 +- 0.9 * level)
  ShearX, ShearY                             shear +-0.3 * level
  TranslateXRel, TranslateYRel               shift +-0.45 * level of the side

(+- : the sign is flipped with probability 1/2.) Pixels are float32 in [0, 1] (the host canvas
after the crop); the ops PIL runs on 8-bit lookup tables (equalize, posterize, solarize,
autocontrast) quantise to 8 bits first and match PIL exactly (autocontrast: up to PIL's
floating-point truncation); the blends match PIL up to its
8-bit rounding. Geometric ops resample bilinearly with PIL's pixel-centre convention and fill
uncovered pixels with `fill` (timm: the dataset mean colour).

On the device, every op of a `lax.switch` is evaluated under `vmap`, so the five geometric ops
are folded into one affine warp per layer (their 2x3 matrices are chosen by the switch, the
colour ops use the identity) and only the cheap colour ops are switched.
"""

from __future__ import annotations

from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp

from ssl_jax.data import augment

MAX_LEVEL = 10.0  # timm's _LEVEL_DENOM: magnitudes live in [0, 10].

OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
            "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
            "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
            "TranslateYRel")


def _to_levels(image: jax.Array) -> jax.Array:
  """[0, 1] floats -> the 8-bit values PIL would hold, as int32."""
  return jnp.clip(jnp.round(image * 255.0), 0, 255).astype(jnp.int32)


def _from_levels(levels: jax.Array) -> jax.Array:
  return levels.astype(jnp.float32) / 255.0


def auto_contrast(image: jax.Array) -> jax.Array:
  """PIL `ImageOps.autocontrast` (cutoff 0): each channel stretched to the full 0..255 range."""
  levels = _to_levels(image)
  low = jnp.min(levels, axis=(0, 1), keepdims=True)
  high = jnp.max(levels, axis=(0, 1), keepdims=True)
  # floor((x - low) * 255 / (high - low)) in exact integers; PIL evaluates it in doubles, so
  # where the quotient is a whole number it may truncate 84.99999... to one level lower.
  stretched = (levels - low) * 255 // jnp.maximum(high - low, 1)
  return _from_levels(jnp.where(high > low, stretched, levels))


def _equalize_channel(levels: jax.Array) -> jax.Array:
  """PIL `ImageOps.equalize` on one [H, W] int channel."""
  histogram = jnp.bincount(levels.reshape(-1), length=256)
  last_present = 255 - jnp.argmax(histogram[::-1] > 0)
  step = (levels.size - histogram[last_present]) // 255
  # lut[i] = (step // 2 + number of pixels below i) // step, PIL's running sum.
  below = jnp.cumsum(histogram) - histogram
  lut = jnp.clip((step // 2 + below) // jnp.maximum(step, 1), 0, 255)
  return jnp.where(step > 0, lut[levels], levels)


def equalize(image: jax.Array) -> jax.Array:
  levels = _to_levels(image)
  return _from_levels(jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(levels))


def invert(image: jax.Array) -> jax.Array:
  return 1.0 - image


def posterize(image: jax.Array, bits: jax.Array) -> jax.Array:
  """PIL `ImageOps.posterize`: keep the `bits` most significant bits (0 bits: black)."""
  drop = 8 - bits
  return _from_levels((_to_levels(image) >> drop) << drop)


def solarize(image: jax.Array, threshold: jax.Array) -> jax.Array:
  """PIL `ImageOps.solarize`: 8-bit values >= threshold become 255 - value."""
  levels = _to_levels(image)
  return _from_levels(jnp.where(levels >= threshold, 255 - levels, levels))


def solarize_add(image: jax.Array, addition: jax.Array, threshold: int = 128) -> jax.Array:
  """timm `solarize_add`: 8-bit values below `threshold` get `addition`, capped at 255."""
  levels = _to_levels(image)
  return _from_levels(jnp.where(levels < threshold, jnp.minimum(levels + addition, 255),
                                levels))


def sharpness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL `ImageEnhance.Sharpness`: blend with the SMOOTH-filtered image (border unchanged)."""
  kernel = jnp.asarray([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  height, width = image.shape[:2]
  interior = sum(kernel[dy, dx] * image[dy:dy + height - 2, dx:dx + width - 2]
                 for dy in range(3) for dx in range(3))
  smooth = image.at[1:-1, 1:-1].set(interior)
  return jnp.clip(smooth + factor * (image - smooth), 0.0, 1.0)


def affine_warp(image: jax.Array, matrix: jax.Array, fill: Sequence[float]) -> jax.Array:
  """PIL `Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR, fillcolor=fill)`.

  Output pixel (x, y) (column, row) reads the input at u = a x' + b y' + c, v = d x' + e y' + f
  with x' = x + 0.5, y' = y + 0.5 (pixel centres). As PIL's bilinear filter, a point outside
  [0, W) x [0, H) is `fill`, and a point inside interpolates its neighbours with edge pixels
  repeated beyond the border.
  """
  height, width, channels = image.shape
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) + 0.5,
                            jnp.arange(width, dtype=jnp.float32) + 0.5, indexing="ij")
  source_x = matrix[0] * cols + matrix[1] * rows + matrix[2]
  source_y = matrix[3] * cols + matrix[4] * rows + matrix[5]
  inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
  coordinates = [source_y - 0.5, source_x - 0.5]
  warped = jnp.stack([jax.scipy.ndimage.map_coordinates(image[..., c], coordinates, order=1,
                                                        mode="nearest")
                      for c in range(channels)], axis=-1)
  return jnp.where(inside[..., None], warped, jnp.asarray(fill, image.dtype))


def rotation_matrix(degrees: jax.Array, height: int, width: int) -> jax.Array:
  """PIL `Image.rotate(degrees)` (counter-clockwise about the centre) as affine coefficients."""
  angle = -jnp.deg2rad(degrees)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  centre_x, centre_y = width / 2.0, height / 2.0
  return jnp.stack([cos, sin, centre_x - cos * centre_x - sin * centre_y,
                    -sin, cos, centre_y + sin * centre_x - cos * centre_y])


def _identity_matrix() -> jax.Array:
  return jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def _geometry(name: str, level: jax.Array, sign: jax.Array, height: int,
              width: int) -> jax.Array:
  """The affine coefficients of op `name` at `level` in [0, 1] (identity for colour ops)."""
  if name == "Rotate":
    return rotation_matrix(sign * 30.0 * level, height, width)
  if name == "ShearX":
    return jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).at[1].set(sign * 0.3 * level)
  if name == "ShearY":
    return jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).at[3].set(sign * 0.3 * level)
  if name == "TranslateXRel":
    return _identity_matrix().at[2].set(sign * 0.45 * level * width)
  if name == "TranslateYRel":
    return _identity_matrix().at[5].set(sign * 0.45 * level * height)
  return _identity_matrix()


def _enhance_factor(level: jax.Array, sign: jax.Array) -> jax.Array:
  return jnp.maximum(0.1, 1.0 + sign * 0.9 * level)


def _colour(name: str, image: jax.Array, level: jax.Array, sign: jax.Array) -> jax.Array:
  """Applies colour op `name` at `level` in [0, 1] (identity for geometric ops)."""
  factor = _enhance_factor(level, sign)
  if name == "AutoContrast":
    return auto_contrast(image)
  if name == "Equalize":
    return equalize(image)
  if name == "Invert":
    return invert(image)
  if name == "PosterizeIncreasing":
    return posterize(image, 4 - jnp.floor(4.0 * level).astype(jnp.int32))
  if name == "SolarizeIncreasing":
    return solarize(image, 256 - jnp.floor(256.0 * level).astype(jnp.int32))
  if name == "SolarizeAdd":
    return solarize_add(image, jnp.floor(110.0 * level).astype(jnp.int32))
  if name == "ColorIncreasing":
    return augment.adjust_saturation(image, factor)
  if name == "ContrastIncreasing":
    return augment.adjust_contrast(image, factor)
  if name == "BrightnessIncreasing":
    return augment.adjust_brightness(image, factor)
  if name == "SharpnessIncreasing":
    return sharpness(image, factor)
  return image


def apply_op(op_index: jax.Array, image: jax.Array, level: jax.Array, sign: jax.Array,
             fill: Sequence[float]) -> jax.Array:
  """Op `OP_NAMES[op_index]` at `level` in [0, 1], with sign +-1 for the signed arguments."""
  height, width = image.shape[:2]
  geometry: list[Callable[[], jax.Array]] = [
      (lambda name=name: _geometry(name, level, sign, height, width)) for name in OP_NAMES]
  colours: list[Callable[[jax.Array], jax.Array]] = [
      (lambda x, name=name: _colour(name, x, level, sign)) for name in OP_NAMES]
  warped = affine_warp(image, jax.lax.switch(op_index, geometry), fill)
  return jnp.clip(jax.lax.switch(op_index, colours, warped), 0.0, 1.0)


def rand_augment(rng: jax.Array, image: jax.Array, *, num_layers: int = 2,
                 magnitude: float = 9.0, magnitude_std: float = 0.5, prob: float = 0.5,
                 fill: Sequence[float] = (0.5, 0.5, 0.5)) -> jax.Array:
  """RandAugment on one float [H, W, 3] image in [0, 1] (see the module docstring)."""
  chex.assert_shape(image, (None, None, 3))
  if num_layers < 0 or not 0.0 <= magnitude <= MAX_LEVEL or magnitude_std < 0:
    raise ValueError(f"RandAugment needs num_layers >= 0, magnitude in [0, {MAX_LEVEL:g}] and "
                     f"magnitude_std >= 0; got {num_layers}, {magnitude}, {magnitude_std}.")
  if not 0.0 <= prob <= 1.0:
    raise ValueError(f"RandAugment op probability must be in [0, 1], got {prob}.")
  if len(fill) != 3:
    raise ValueError(f"fill must be one value per channel (3), got {tuple(fill)}.")
  for layer_rng in jax.random.split(rng, num_layers):
    op_rng, draws_rng, noise_rng = jax.random.split(layer_rng, 3)
    op_index = jax.random.randint(op_rng, (), 0, len(OP_NAMES))
    apply_draw, sign_draw = jax.random.uniform(draws_rng, (2,))
    if magnitude_std == float("inf"):
      level = jax.random.uniform(noise_rng, (), maxval=magnitude)
    else:
      level = magnitude + magnitude_std * jax.random.normal(noise_rng)
    level = jnp.clip(level, 0.0, MAX_LEVEL) / MAX_LEVEL
    sign = jnp.where(sign_draw > 0.5, -1.0, 1.0)  # timm negates when random() > 0.5.
    transformed = apply_op(op_index, image, level, sign, fill)
    image = jnp.where(apply_draw < prob, transformed, image)
  return image


def rand_augment_batch(rng: jax.Array, images: jax.Array, **kwargs) -> jax.Array:
  """`rand_augment` on every image of [B, H, W, 3], each with its own key."""
  chex.assert_rank(images, 4)
  keys = jax.random.split(rng, images.shape[0])
  return jax.vmap(lambda key, image: rand_augment(key, image, **kwargs))(keys, images)

