"""Self-attention maps of a ViT's [CLS] token: DINO's headline picture (Caron et al. 2021, Fig. 1).

As facebookresearch/dino `visualize_attention.py`:
* the attention weights of the LAST block, the [CLS] query's row, patch keys only
  (`attentions[0, :, 0, 1:]`), one map per head;
* thresholding keeps, per head, the smallest set of patches holding `keep_mass` (0.6) of the
  map's mass: sort ascending, normalise, cumulative sum, keep where cumsum > 1 - keep_mass;
* maps and masks are upsampled to the image by nearest-neighbour repetition of each patch.

Everything here is a jnp function, so `Method.visualize` can run it inside jit at eval time; the
grid it renders is [H, W, 3] in [0, 1] for TensorBoard and PNG (`ssl_jax/viz.py`).
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.models import vit

# Perceptually ordered dark-blue -> green -> yellow ramp (viridis' end points and quartiles),
# interpolated linearly: enough to read a heat map without a plotting library.
_HEAT_COLOURS = np.array([[0.267, 0.005, 0.329], [0.230, 0.322, 0.546], [0.128, 0.567, 0.551],
                          [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]], np.float32)
# One colour per head for the mask overlay (cycled when there are more heads).
_HEAD_COLOURS = np.array([[0.90, 0.10, 0.10], [0.10, 0.60, 0.95], [0.20, 0.80, 0.20],
                          [1.00, 0.60, 0.00], [0.70, 0.20, 0.90], [0.00, 0.85, 0.85],
                          [1.00, 0.95, 0.10], [0.95, 0.40, 0.70]], np.float32)


def last_block_attention(encoder: nn.Module, encoder_params: Any, images: jax.Array) -> jax.Array:
  """[B, heads, T, T] softmax attention of the encoder's last block (T = 1 + patches).

  The ViT sows every block's weights into 'intermediates' with its 'plain' attention (the fused
  ones never form them; same params); any grid the position embedding can be resampled to works,
  as DINO's `interpolate_pos_encoding` allows.
  """
  if not isinstance(encoder, vit.VisionTransformer):
    raise ValueError(f"Attention maps need a ViT backbone (model.name='vit_...'); got "
                     f"{type(encoder).__name__}.")
  chex.assert_rank(images, 4)
  encoder = encoder.clone(attention_impl="plain")
  _, variables = encoder.apply({"params": encoder_params}, images, train=False,
                               mutable=["intermediates"])
  return variables["intermediates"][f"blocks_{encoder.depth - 1}"]["attn"]["attention"][0]


def cls_attention(encoder: nn.Module, encoder_params: Any, images: jax.Array) -> jax.Array:
  """[B, heads, N] attention of the [CLS] query on the N patches, renormalised to sum to 1.

  The raw row also gives some weight to [CLS] itself; dividing it out makes each head's map a
  distribution over patches, the quantity `visualize_attention.py` thresholds.
  """
  if not getattr(encoder, "class_token", True):
    raise ValueError("cls_attention needs a ViT with a class token (model.class_token=True).")
  weights = last_block_attention(encoder, encoder_params, images)[:, :, 0, 1:]
  weights = weights.astype(jnp.float32)
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def threshold_attention(attention: jax.Array, keep_mass: float = 0.6) -> jax.Array:
  """Boolean mask [..., N] of the fewest patches that hold at least `keep_mass` of each map.

  visualize_attention.py: `val, idx = sort(attn)`; `cumval = cumsum(val / sum(val))`;
  `th_attn = cumval > 1 - threshold`, scattered back to the patch order. The kept patches are
  the largest ones; their mass is >= keep_mass, and dropping the smallest of them would fall
  below it.
  """
  if not 0.0 < keep_mass <= 1.0:
    raise ValueError(f"keep_mass must be in (0, 1], got {keep_mass}.")
  attention = attention.astype(jnp.float32)
  order = jnp.argsort(attention, axis=-1)
  ascending = jnp.take_along_axis(attention, order, axis=-1)
  ascending = ascending / jnp.sum(ascending, axis=-1, keepdims=True)
  keep_sorted = jnp.cumsum(ascending, axis=-1) > 1.0 - keep_mass
  return jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)


def patch_grid(num_patches: int, image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
  """(rows, cols) of the patch grid, checked against the number of patches."""
  rows, cols = image_size[0] // patch_size, image_size[1] // patch_size
  if rows * cols != num_patches:
    raise ValueError(f"{num_patches} patches do not tile a {image_size[0]}x{image_size[1]} "
                     f"image in {patch_size}x{patch_size} patches ({rows}x{cols} expected).")
  return rows, cols


def upsample_patch_maps(maps: jax.Array, grid: tuple[int, int], patch_size: int) -> jax.Array:
  """[..., rows*cols] per-patch values -> [..., rows*p, cols*p] pixels (nearest, as dino)."""
  maps = maps.reshape(*maps.shape[:-1], *grid)
  return jnp.repeat(jnp.repeat(maps, patch_size, axis=-2), patch_size, axis=-1)


def heat_colours(values: jax.Array) -> jax.Array:
  """Values in [0, 1] -> RGB [..., 3] along the heat ramp."""
  stops = jnp.linspace(0.0, 1.0, len(_HEAT_COLOURS))
  values = jnp.clip(values, 0.0, 1.0)
  return jnp.stack([jnp.interp(values, stops, jnp.asarray(_HEAT_COLOURS[:, c]))
                    for c in range(3)], axis=-1)


def render_attention_grid(images: jax.Array, attention: jax.Array, patch_size: int, *,
                          keep_mass: float = 0.6, overlay_alpha: float = 0.6) -> jax.Array:
  """One row per image: image | one heat map per head | thresholded masks over the image.

  Args:
    images: [B, H, W, 3] display images in [0, 1].
    attention: [B, heads, N] CLS attention (e.g. `cls_attention`), N = (H/p) * (W/p).
    patch_size: p.
    keep_mass: mass kept by `threshold_attention` for the overlay.
    overlay_alpha: opacity of the head colours where a head's mask is on.

  Returns:
    [B * H, (heads + 2) * W, 3] in [0, 1]. Each heat map is min-max scaled on its own (as
    `plt.imsave` does); in the overlay, each head's kept patches are tinted with its own colour
    (averaged where heads overlap).
  """
  chex.assert_rank([images, attention], [4, 3])
  batch, height, width, _ = images.shape
  if attention.shape[0] != batch:
    raise ValueError(f"attention has batch {attention.shape[0]} but images have {batch}.")
  num_heads = attention.shape[1]
  grid = patch_grid(attention.shape[-1], (height, width), patch_size)

  low = jnp.min(attention, axis=-1, keepdims=True)
  high = jnp.max(attention, axis=-1, keepdims=True)
  scaled = (attention - low) / jnp.maximum(high - low, 1e-12)
  heat = heat_colours(upsample_patch_maps(scaled, grid, patch_size))        # [B, h, H, W, 3]

  masks = upsample_patch_maps(threshold_attention(attention, keep_mass).astype(jnp.float32),
                              grid, patch_size)                             # [B, h, H, W]
  colours = jnp.asarray(_HEAD_COLOURS[np.arange(num_heads) % len(_HEAD_COLOURS)])
  coverage = jnp.sum(masks, axis=1)[..., None]                              # [B, H, W, 1]
  tint = jnp.einsum("bhyx,hc->byxc", masks, colours) / jnp.maximum(coverage, 1.0)
  alpha = overlay_alpha * (coverage > 0)
  overlay = (1.0 - alpha) * images + alpha * tint

  columns = [images] + [heat[:, h] for h in range(num_heads)] + [overlay]
  rows = jnp.concatenate(columns, axis=2)                                   # [B, H, (h+2)W, 3]
  return jnp.clip(rows.reshape(batch * height, -1, 3), 0.0, 1.0)
