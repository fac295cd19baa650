"""Token masks for masked-image modelling, made on device from the step's rng.

`random_masking` is MAE's per-sample random masking (He et al. 2022, Sec. 3 "Masking";
facebookresearch/mae `models_mae.py::random_masking`): shuffle the patches by argsort of uniform
noise, keep the first `int(L * (1 - ratio))`, and return the permutation that undoes the shuffle
so a decoder can put mask tokens back in place.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def num_kept_patches(num_patches: int, mask_ratio: float) -> int:
  """MAE's `len_keep = int(L * (1 - mask_ratio))`; at least one patch must stay visible."""
  len_keep = int(num_patches * (1 - mask_ratio))
  if not 0 < len_keep <= num_patches:
    raise ValueError(f"mask_ratio={mask_ratio} keeps {len_keep} of {num_patches} patches; "
                     "it must keep at least one.")
  return len_keep


def random_masking(rng: jax.Array, batch_size: int, num_patches: int,
                   mask_ratio: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-sample random masking (MAE `random_masking`).

  Returns:
    keep_ids: [B, len_keep] indices of the visible patches, in shuffled order.
    mask: [B, L] float32, 1 for removed patches, 0 for kept, in the original order.
    ids_restore: [B, L], the permutation that undoes the shuffle.
  """
  len_keep = num_kept_patches(num_patches, mask_ratio)
  noise = jax.random.uniform(rng, (batch_size, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  keep_ids = ids_shuffle[:, :len_keep]
  mask_shuffled = jnp.concatenate(
      [jnp.zeros((batch_size, len_keep)), jnp.ones((batch_size, num_patches - len_keep))], axis=1)
  mask = jnp.take_along_axis(mask_shuffled, ids_restore, axis=1)
  return keep_ids, mask, ids_restore
