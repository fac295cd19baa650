"""Token masks for masked-image modelling, made on device from the step's rng.

`random_masking` is MAE's per-sample random masking (He et al. 2022, Sec. 3 "Masking";
facebookresearch/mae `models_mae.py::random_masking`): shuffle the patches by argsort of uniform
noise, keep the first `int(L * (1 - ratio))`, and return the permutation that undoes the shuffle
so a decoder can put mask tokens back in place.

`select_tokens` is the gather both halves of MAE run with those indices, as an indexed gather
or (`model.token_gather='onehot'`) as a one-hot matmul: same values, and on TPUs and GPUs a
batched matmul on the matrix units instead of a gather whose gradient is a scatter-add.
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
  # MAE unshuffles a [0]*keep + [1]*remove row with ids_restore; a patch's shuffled position is
  # ids_restore itself, so it is removed exactly when that position is past len_keep.
  mask = (ids_restore >= len_keep).astype(jnp.float32)
  return keep_ids, mask, ids_restore


TOKEN_GATHERS = ("take", "onehot")


def select_tokens(tokens: jax.Array, ids: jax.Array, impl: str = "take") -> jax.Array:
  """tokens[b, ids[b, k]] for every b, k: [B, L, D] and [B, K] integer ids -> [B, K, D].

  impl: 'take' (`jnp.take_along_axis`, a gather) or 'onehot' (`einsum` with one_hot(ids, L), a
  [B, K, L] x [B, L, D] matmul; its gradient is the transposed matmul, not a scatter-add). Both
  give the same values: each output row is 1 x one token plus exact zeros, at full precision
  (a float32 matmul on a TPU or an NVIDIA GPU would otherwise round operands to bf16/tf32).
  """
  if impl == "take":
    return jnp.take_along_axis(tokens, ids[:, :, None], axis=1)
  if impl == "onehot":
    one_hot = jax.nn.one_hot(ids, tokens.shape[1], dtype=tokens.dtype)
    return jnp.einsum("bkl,bld->bkd", one_hot, tokens, precision=jax.lax.Precision.HIGHEST)
  raise ValueError(f"token_gather must be one of {TOKEN_GATHERS}, got {impl!r}.")
