"""Colorful Image Colorization (Zhang, Isola & Efros, ECCV 2016): ab bins, targets, loss, decoding.

* `ab_gamut_bins`: the output classes, the centres of a grid-10 quantisation of the ab plane that
  are in the sRGB gamut (Sec. 2.1). The paper keeps Q = 313 bins from its released
  `pts_in_hull.npy`, whose derivation is not published; here the set is derived: a 65^3 grid of
  the RGB cube (levels 0, 1/64, ..., 1 per channel) is converted to Lab (`ssl_jax.colorspace`, D65)
  and each ab value is rounded to the nearest multiple of 10; the bins hit are kept. That gives
  Q = 261 bins (finer RGB grids, up to all 256^3 colours, add none), a in [-90, 100] and
  b in [-110, 90]. The official 313 include bins that no sRGB colour rounds to (their set is
  wider than the sRGB gamut's ab projection); with this derived set every class is reachable.
* `soft_encode`: Eq. (2)'s target Z, the 5 nearest bins weighted by a Gaussian (sigma 5) of
  their distance to the true ab (the authors' `NNEncode(NN=10, sigma=5)` with NN=5 per paper).
* `rebalancing_weights`: Eq. (3)-(4), w ∝ ((1 - lambda) p~ + lambda / Q)^-1 with p~ the empirical
  ab prior smoothed by a Gaussian (sigma 5) and E_p~[w] = 1; lambda = 0.5.
* `rebalanced_cross_entropy`: Eq. (2) with v(Z) = w of each pixel's most likely target bin.
* `annealed_mean`: Eq. (5), the mean of the distribution re-tempered to temperature T (0.38).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import colorspace

GRID_SIZE = 10.0
RGB_SAMPLES_PER_AXIS = 65


@functools.lru_cache(maxsize=None)
def _ab_gamut_bins(grid_size: float, samples_per_axis: int) -> np.ndarray:
  levels = np.linspace(0.0, 1.0, samples_per_axis, dtype=np.float32)
  rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
  # On the CPU backend so the set (and Q) is the same whatever accelerator the run uses; eagerly
  # even when first asked for inside a jitted function.
  with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
    ab = np.asarray(colorspace.rgb_to_lab(jnp.asarray(rgb)))[:, 1:]
  centres = np.unique(np.round(ab / grid_size).astype(np.int64), axis=0) * grid_size
  return centres.astype(np.float32)  # Sorted by a, then b.


def ab_gamut_bins(grid_size: float = GRID_SIZE,
                  samples_per_axis: int = RGB_SAMPLES_PER_AXIS) -> np.ndarray:
  """[Q, 2] ab centres (a, b) of the in-gamut grid bins, sorted by a then b (see module doc)."""
  if grid_size <= 0 or samples_per_axis < 2:
    raise ValueError(f"grid_size must be > 0 and samples_per_axis >= 2; got {grid_size}, "
                     f"{samples_per_axis}.")
  return _ab_gamut_bins(float(grid_size), int(samples_per_axis)).copy()


def _squared_distances(ab: jax.Array, centres: jax.Array) -> jax.Array:
  """[..., Q] squared ab distances of every value to every bin centre."""
  diff = ab[..., None, :].astype(jnp.float32) - jnp.asarray(centres, jnp.float32)
  return jnp.sum(jnp.square(diff), axis=-1)


def nearest_bin(ab: jax.Array, centres: jax.Array) -> jax.Array:
  """[...] index of the closest bin centre (the hard quantisation H^-1 of the paper)."""
  return jnp.argmin(_squared_distances(ab, centres), axis=-1)


def soft_encode(ab: jax.Array, centres: jax.Array, *, num_neighbours: int = 5,
                sigma: float = 5.0) -> jax.Array:
  """[..., 2] ab -> [..., Q] soft targets: Gaussian weights on the nearest bins, summing to 1."""
  if ab.shape[-1] != 2:
    raise ValueError(f"ab must have 2 channels last [..., 2]; got shape {ab.shape}.")
  d2 = _squared_distances(ab, centres)
  neg_d2, idx = jax.lax.top_k(-d2, num_neighbours)
  weights = jax.nn.softmax(neg_d2 / (2.0 * sigma**2), axis=-1)  # exp(-d^2 / 2 sigma^2), normed.
  one_hot = jax.nn.one_hot(idx, centres.shape[0], dtype=jnp.float32)
  return jnp.einsum("...k,...kq->...q", weights, one_hot)


def histogram(bins: jax.Array, num_bins: int) -> jax.Array:
  """[Q] empirical distribution of hard bin indices (any shape)."""
  counts = jnp.zeros((num_bins,), jnp.float32).at[bins.reshape(-1)].add(1.0)
  return counts / bins.size


def rebalancing_weights(prior: jax.Array, centres: jax.Array, *, mix: float = 0.5,
                        sigma: float = 5.0) -> jax.Array:
  """[Q] class weights w (Eq. 4): smooth `prior` with a Gaussian of `sigma` ab units over the bin
  centres, mix with the uniform distribution (`mix` = lambda), invert, normalise E_p~[w] = 1."""
  kernel = jnp.exp(-_squared_distances(jnp.asarray(centres), centres) / (2.0 * sigma**2))
  smoothed = kernel @ prior
  smoothed = smoothed / jnp.sum(smoothed)
  num_bins = prior.shape[0]
  weights = 1.0 / ((1.0 - mix) * smoothed + mix / num_bins)
  return weights / jnp.sum(smoothed * weights)


def rebalanced_cross_entropy(logits: jax.Array, targets: jax.Array,
                             class_weights: jax.Array) -> jax.Array:
  """Eq. (2): mean over pixels of -v(Z) sum_q Z_q log softmax(logits)_q, v(Z) = w[argmax_q Z]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  per_pixel = -jnp.sum(targets * log_probs, axis=-1)
  pixel_weights = jnp.take(class_weights, jnp.argmax(targets, axis=-1))
  return jnp.mean(pixel_weights * per_pixel)


def annealed_mean(logits: jax.Array, centres: jax.Array, temperature: float = 0.38) -> jax.Array:
  """Eq. (5): [..., Q] logits -> [..., 2] ab, the mean of softmax(logits / T).

  f_T(z) = exp(log z / T) / sum exp(log z / T) applied to z = softmax(logits) is
  softmax(logits / T); T = 1 is the mean, T -> 0 the mode.
  """
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0; got {temperature}.")
  probs = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return probs @ jnp.asarray(centres, jnp.float32)
