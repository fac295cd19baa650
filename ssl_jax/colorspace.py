"""sRGB <-> CIE Lab on device (pure JAX), the conversions of scikit-image's `rgb2lab`/`lab2rgb`.

D65 white, 2-degree observer: sRGB companding (IEC 61966-2-1), the sRGB -> XYZ matrix of
`skimage.color.colorconv.xyz_from_rgb`, white point (0.95047, 1.0, 1.08883) and the CIE Lab
function with skimage's constants (threshold 0.008856, slope 7.787). `lab_to_rgb` clips negative
Z and the final sRGB to [0, 1] as skimage does. Channels are last: [..., 3].

Colorful Image Colorization (Zhang et al. 2016) works in this space: the network sees L and
predicts ab (the authors' caffe code converts with skimage too).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_channels(x: jax.Array, name: str) -> None:
  if x.shape[-1] != 3:
    raise ValueError(f"{name} must have 3 channels last [..., 3]; got shape {x.shape}.")


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
  """sRGB in [0, 1] -> Lab (L in [0, 100], a and b roughly in [-110, 100])."""
  _check_channels(rgb, "rgb")
  rgb = jnp.asarray(rgb, jnp.float32)
  linear = jnp.where(rgb > 0.04045, ((jnp.maximum(rgb, 0.04045) + 0.055) / 1.055)**2.4,
                     rgb / 12.92)
  xyz = jnp.einsum("...c,dc->...d", linear, jnp.asarray(XYZ_FROM_RGB / D65_WHITE[:, None],
                                                        jnp.float32), precision=_HIGHEST)
  f = jnp.where(xyz > 0.008856, jnp.cbrt(jnp.maximum(xyz, 0.008856)), 7.787 * xyz + 16.0 / 116.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: jax.Array) -> jax.Array:
  """Lab -> sRGB in [0, 1] (out-of-gamut colours clipped, as skimage's `lab2rgb`)."""
  _check_channels(lab, "lab")
  lab = jnp.asarray(lab, jnp.float32)
  fy = (lab[..., 0] + 16.0) / 116.0
  fx = fy + lab[..., 1] / 500.0
  fz = jnp.maximum(fy - lab[..., 2] / 200.0, 0.0)  # skimage clips negative Z to 0.
  f = jnp.stack([fx, fy, fz], axis=-1)
  xyz = jnp.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / 7.787)
  linear = jnp.einsum("...c,dc->...d", xyz, jnp.asarray(RGB_FROM_XYZ * D65_WHITE[None, :],
                                                        jnp.float32), precision=_HIGHEST)
  rgb = jnp.where(linear > 0.0031308,
                  1.055 * jnp.maximum(linear, 0.0031308)**(1.0 / 2.4) - 0.055, 12.92 * linear)
  return jnp.clip(rgb, 0.0, 1.0)
