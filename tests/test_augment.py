"""On-device augmentation: exact ops against numpy, crop geometry, recipes under jit."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ssl_jax.data import augment

KEY = jax.random.PRNGKey(0)
# Functions under test are jitted whole: on CPU one compile is several times cheaper than the
# per-primitive compiles of eager mode, and jit is how the training step runs them.


def _image(seed=0, shape=(12, 12, 3)):
  return np.random.RandomState(seed).uniform(0.0, 1.0, shape).astype(np.float32)


# ----------------------------------------------------------------------------- crops


def test_crop_window_translation_is_exact_at_unit_scale():
  image = _image(1, (16, 16, 3))
  crop = jax.jit(augment.crop_and_resize, static_argnums=5)
  np.testing.assert_allclose(crop(image, 4, 2, 8, 8, 8), image[4:12, 2:10], atol=1e-6)
  # Shrinking the window 10x6 at (3, 5) to 5x5 equals resizing the cut-out alone.
  expected = jax.image.resize(image[3:13, 5:11], (5, 5, 3), method="linear", antialias=True)
  np.testing.assert_allclose(crop(image, 3, 5, 10, 6, 5), expected, atol=1e-5)


def _whole_image_crop(image, out_size):
  return jax.jit(lambda key, x: augment.random_resized_crop(
      key, x, out_size=out_size, scale=(1.0, 1.0), ratio=(1.0, 1.0)))(KEY, image)


def test_full_crop_is_the_resized_image():
  image = jnp.asarray(_image(2, (16, 16, 3)))
  expected = jax.image.resize(image, (8, 8, 3), method="linear", antialias=True)
  np.testing.assert_allclose(_whole_image_crop(image, 8), expected, atol=1e-6)


def test_crop_that_never_fits_falls_back_to_the_centre_square():
  # 12x16 at scale 1 and ratio 1 asks for a 14x14 window, which never fits: torchvision's
  # fallback keeps the ratio inside [1, 1], i.e. the centred 12x12 square (columns 2..13).
  image = jnp.asarray(_image(3, (12, 16, 3)))
  expected = jax.image.resize(image[:, 2:14], (6, 6, 3), method="linear", antialias=True)
  np.testing.assert_allclose(_whole_image_crop(image, 6), expected, atol=1e-5)


def test_crop_windows_respect_scale_ratio_and_bounds():
  height, width = 40, 30
  keys = jax.random.split(KEY, 2000)
  windows = jax.jit(jax.vmap(
      lambda k: augment._crop_window(k, height, width, (0.2, 0.6), (0.5, 2.0))))(keys)
  top, left, crop_h, crop_w = (np.asarray(w) for w in windows)
  assert np.all(top >= 0) and np.all(left >= 0)
  assert np.all(top + crop_h <= height) and np.all(left + crop_w <= width)
  area = crop_h * crop_w / (height * width)
  # Integer rounding of each side moves the area and ratio a little past the sampled range.
  assert area.min() > 0.17 and area.max() < 0.65
  aspect = crop_w / crop_h
  assert aspect.min() > 0.45 and aspect.max() < 2.2
  # Offsets are spread over the free range, not pinned to the centre.
  assert len(np.unique(top)) > 10 and len(np.unique(left)) > 10


# ----------------------------------------------------------------------------- exact ops


def _np_gray(image):
  return 0.2989 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]


def _np_contrast(image, factor):
  return np.clip(factor * image + (1 - factor) * _np_gray(image).mean(), 0, 1)


def _np_hue(image, shift):
  pixels = [colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
            for h, s, v in (colorsys.rgb_to_hsv(*pixel) for pixel in image.reshape(-1, 3))]
  return np.asarray(pixels).reshape(image.shape)


def test_flip_grayscale_solarize_exact_at_prob_one():
  image = _image(4)
  np.testing.assert_array_equal(augment.random_flip(KEY, image, prob=1.0), image[:, ::-1])
  np.testing.assert_array_equal(augment.random_flip(KEY, image, prob=0.0), image)
  luma = 0.2989 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
  np.testing.assert_allclose(augment.random_grayscale(KEY, image, prob=1.0),
                             np.repeat(luma[..., None], 3, -1), atol=1e-6)
  np.testing.assert_array_equal(augment.random_grayscale(KEY, image, prob=0.0), image)
  np.testing.assert_allclose(augment.solarize(KEY, image, prob=1.0, threshold=0.4),
                             np.where(image >= 0.4, 1.0 - image, image), atol=1e-7)
  np.testing.assert_array_equal(augment.solarize(KEY, image, prob=0.0), image)


def test_normalize_exact():
  image = _image(5)
  mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
  expected = (image - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  np.testing.assert_allclose(augment.normalize(image, mean, std), expected, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="one value per channel"):
    augment.normalize(image, (0.5,), (0.5,))
  with pytest.raises(ValueError, match="must be > 0 in every channel"):
    augment.normalize(image, mean, (0.2, 0.0, 0.4))


def test_colour_adjustments_match_torchvision_formulas():
  image = _image(6)
  brightness, contrast, saturation, hue = jax.jit(lambda x: (
      augment.adjust_brightness(x, 1.3), augment.adjust_contrast(x, 0.6),
      augment.adjust_saturation(x, 1.7), augment.adjust_hue(x, 0.3)))(image)
  np.testing.assert_allclose(brightness, np.clip(image * 1.3, 0, 1), atol=1e-6)
  np.testing.assert_allclose(contrast, _np_contrast(image, 0.6), atol=1e-6)
  np.testing.assert_allclose(
      saturation, np.clip(1.7 * image - 0.7 * _np_gray(image)[..., None], 0, 1), atol=1e-6)
  np.testing.assert_allclose(hue, _np_hue(image, 0.3), atol=1e-5)


def test_gaussian_blur_matches_scipy_with_reflect_padding():
  image = _image(7, (10, 9, 3))
  blurred = jax.jit(lambda key, x: augment.gaussian_blur(key, x, prob=1.0, sigma=(1.0, 1.0),
                                                         kernel_size=5))(KEY, image)
  # scipy's 'mirror' mode is numpy's / torch's 'reflect'; truncate=2 gives radius 2.
  expected = ndimage.gaussian_filter(image, sigma=(1.0, 1.0, 0.0), mode="mirror", truncate=2.0)
  np.testing.assert_allclose(blurred, expected, atol=1e-5)
  constant = np.full((10, 9, 3), 0.25, np.float32)
  np.testing.assert_allclose(augment.blur(constant, 1.7, 5), constant, atol=1e-6)
  assert [augment.default_blur_kernel_size(s) for s in (32, 96, 224)] == [3, 9, 23]
  with pytest.raises(ValueError, match="odd"):
    augment.gaussian_blur(KEY, image, prob=1.0, kernel_size=4)


def test_color_jitter_semantics():
  image = _image(8)
  # prob 0: untouched.
  np.testing.assert_array_equal(jax.jit(lambda key, x: augment.color_jitter(
      key, x, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, prob=0.0))(KEY, image),
                                image)
  # Brightness alone scales every unclipped pixel by one factor in [1 - b, 1 + b].
  brighten = jax.jit(lambda key, x: augment.color_jitter(key, x, brightness=0.5, contrast=0.0,
                                                         saturation=0.0, hue=0.0, prob=1.0))
  factors = []
  for key in jax.random.split(KEY, 8):
    out = np.asarray(brighten(key, image))
    unclipped = out < 1.0
    ratios = out[unclipped] / image[unclipped]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-4)
    factors.append(ratios[0])
  assert min(factors) >= 0.5 and max(factors) <= 1.5 and np.std(factors) > 0.05
  # Saturation and hue leave a gray image gray and (up to the luma weights summing to 0.9999,
  # as in torchvision) unchanged.
  gray_image = np.repeat(image[..., :1], 3, axis=-1)
  out = jax.jit(lambda key, x: augment.color_jitter(
      key, x, brightness=0.0, contrast=0.0, saturation=0.8, hue=0.4, prob=1.0))(KEY, gray_image)
  np.testing.assert_allclose(out, gray_image, atol=2e-4)
  # Contrast and hue do not commute (a hue turn changes the mean gray level): replay the
  # documented draws [apply, factors x 4, order keys x 4] and check both orders occur.
  jitter = jax.jit(lambda key, x: augment.color_jitter(key, x, brightness=0.0, contrast=0.5,
                                                       saturation=0.0, hue=0.3, prob=1.0))
  orders_seen = set()
  for key in jax.random.split(jax.random.PRNGKey(3), 6):
    draws = np.asarray(jax.random.uniform(key, (9,)))
    contrast_factor, hue_shift = 0.5 + draws[2], -0.3 + 0.6 * draws[4]
    contrast_first = draws[5] < draws[6]
    if contrast_first:
      expected = _np_hue(_np_contrast(image, contrast_factor), hue_shift)
    else:
      expected = _np_contrast(_np_hue(image, hue_shift), contrast_factor)
    np.testing.assert_allclose(jitter(key, image), expected, atol=1e-5)
    orders_seen.add(bool(contrast_first))
  assert orders_seen == {True, False}
  with pytest.raises(ValueError, match="hue"):
    augment.color_jitter(KEY, image, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.7)


# ----------------------------------------------------------------------------- recipes


def _uint8_batch(batch=4, size=16, seed=9):
  return np.random.RandomState(seed).randint(0, 256, (batch, size, size, 3), dtype=np.uint8)


def test_make_views_full_recipe_under_jit():
  view = augment.view_config(size=8, jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5,
                             solarize_prob=0.2)
  images = _uint8_batch()
  images[1] = images[0]  # Same picture twice: still two independent views.
  make = jax.jit(lambda rng, x: augment.make_views(rng, x, view))
  views = np.asarray(make(KEY, images))
  assert views.shape == (4, 8, 8, 3) and views.dtype == np.float32
  np.testing.assert_array_equal(views, make(KEY, images))  # A function of the key alone.
  assert not np.allclose(views, make(jax.random.PRNGKey(1), images))
  assert not np.allclose(views[0], views[1])
  mean, std = np.array(view.mean), np.array(view.std)
  assert np.all(views >= (0 - mean) / std - 1e-5) and np.all(views <= (1 - mean) / std + 1e-5)


def test_make_views_identity_recipe_is_normalization():
  view = augment.view_config(size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                             flip_prob=0.0)
  images = _uint8_batch()
  views = jax.jit(lambda key, x: augment.make_views(key, x, view))(KEY, images)
  expected = (images / 255.0 - np.array(view.mean)) / np.array(view.std)
  np.testing.assert_allclose(views, expected, atol=1e-5)


def test_eval_view():
  images = _uint8_batch(batch=2, size=16)
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  np.testing.assert_allclose(augment.eval_view(images, size=16, mean=mean, std=std),
                             (images / 255.0 - 0.5) / 0.25, atol=1e-5)
  resized = augment.eval_view(images, size=8, mean=mean, std=std)
  expected = jax.image.resize(images / 255.0, (2, 8, 8, 3), method="linear", antialias=True)
  np.testing.assert_allclose(resized, (np.asarray(expected) - 0.5) / 0.25, atol=1e-5)
  with pytest.raises(ValueError, match="uint8"):
    augment.eval_view(images.astype(np.float32), size=8, mean=mean, std=std)


def test_view_config_overrides_and_validation():
  view = augment.view_config(size=64, blur_prob=1.0)
  assert view.size == 64 and view.blur_prob == 1.0 and view.flip_prob == 0.5
  with pytest.raises(ValueError, match="'blur_prob'"):
    augment.view_config(blur_prb=1.0)
  with pytest.raises(ValueError, match="view.flip_prob must be a probability"):
    augment.make_views(KEY, _uint8_batch(), augment.view_config(flip_prob=1.5))
