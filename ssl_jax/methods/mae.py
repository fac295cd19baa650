"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al., 2021).

Semantics follow the official facebookresearch/mae `models_mae.py`:
* per-sample random masking by argsort of uniform noise; `len_keep = int(L * (1 - ratio))`;
  `mask` is 1 on removed patches, 0 on kept ones, in the original patch order;
* the encoder sees only the kept patches (after position embeddings, CLS prepended after);
* a light decoder embeds the encoder tokens, appends mask tokens, unshuffles with `ids_restore`,
  adds its own fixed sin-cos position embeddings, and predicts the p*p*C pixels of each patch;
* the target is the (normalised) input image, optionally normalised per patch
  (`norm_pix_loss`: mean and *unbiased* variance, eps 1e-6, as torch's `var` computes it);
* loss = mean squared error per patch, averaged over the removed patches only (paper Sec. 3).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl_jax.config_lib import ConfigError
from ssl_jax.data import augment, masking
from ssl_jax.losses import reconstruction
from ssl_jax.methods import base, patch_grid
from ssl_jax.models import registry, vit


class MAEDecoder(nn.Module):
  """Lightweight decoder: embed, insert mask tokens, unshuffle, blocks, predict pixels."""
  num_patches: int
  patch_dim: int
  hidden_size: int = 512
  depth: int = 8
  num_heads: int = 16
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  # The encoder's speed levers (registry.vit_speed_options), applied to the decoder blocks too.
  attention_impl: str = "plain"
  remat: str = "none"
  scan_blocks: bool = False
  token_gather: str = "take"

  @nn.compact
  def __call__(self, encoded: jax.Array, ids_restore: jax.Array | None, *,
               train: bool) -> jax.Array:
    """`encoded`: [B, 1 + n_visible, D] in shuffled order, or every patch in order when
    `ids_restore` is None (the encode-all-patches variant)."""
    x = nn.Dense(self.hidden_size, dtype=self.dtype, name="decoder_embed",
                 kernel_init=nn.initializers.xavier_uniform())(encoded)
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.hidden_size))
    if ids_restore is not None:
      batch, num_visible = x.shape[0], x.shape[1] - 1
      mask_tokens = jnp.broadcast_to(mask_token.astype(x.dtype),
                                     (batch, self.num_patches - num_visible, self.hidden_size))
      patches = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)
      patches = masking.select_tokens(patches, ids_restore, self.token_gather)
      x = jnp.concatenate([x[:, :1], patches], axis=1)
    grid = int(round(self.num_patches ** 0.5))
    pos = np.reshape(vit.sincos_pos_embed_2d(self.hidden_size, grid, True),
                     (1, self.num_patches + 1, self.hidden_size))
    x = x + jnp.asarray(pos, x.dtype)
    x = vit.run_blocks(self, x, train=train, depth=self.depth, drop_path_rates=[0.0] * self.depth,
                       name_prefix="decoder_blocks_", remat=self.remat, scan=self.scan_blocks,
                       hidden_size=self.hidden_size, num_heads=self.num_heads,
                       mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                       attention_impl=self.attention_impl)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="decoder_norm")(x)
    x = nn.Dense(self.patch_dim, dtype=self.dtype, name="decoder_pred",
                 kernel_init=nn.initializers.xavier_uniform())(x)
    return x[:, 1:].astype(jnp.float32)


class MaskedAutoencoder(nn.Module):
  """ViT encoder on the visible patches + MAEDecoder. Params: {'encoder', 'decoder'}."""
  encoder: nn.Module
  decoder: MAEDecoder
  # Benchmark baseline only: the encoder runs on every patch (the compute of the paper's
  # "encoder w/ [M]" row, Table 1c) instead of the visible 25%; the loss is unchanged.
  encode_all_patches: bool = False

  def __call__(self, images, keep_ids, ids_restore, *, train: bool):
    if self.encode_all_patches:
      encoded = self.encoder(images, train=train)["tokens"]
      return self.decoder(encoded, None, train=train)
    encoded = self.encoder(images, keep_ids=keep_ids, train=train)["tokens"]
    return self.decoder(encoded, ids_restore, train=train)

  def encode(self, images, *, train: bool = False):
    return self.encoder(images, train=train)


def default_method_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "mae"
  m.mask_ratio = 0.75
  m.norm_pix_loss = True
  m.decoder_dim = 512
  m.decoder_depth = 8
  m.decoder_heads = 16
  m.encode_all_patches = False  # Speed baseline for bench/train_step.py; keep False to train.
  # MAE pretraining augmentation: RandomResizedCrop(scale=(0.2, 1.0)) + horizontal flip only.
  m.view = augment.view_config(crop_scale=(0.2, 1.0))
  return m


@dataclasses.dataclass(frozen=True)
class MAE(patch_grid.PatchGridMethod):
  """The MAE method (Method contract); the model is built once from the config."""

  @property
  def num_patches(self) -> int:
    if self.image_size % self.patch_size:
      raise ConfigError(f"method.view.size={self.image_size} is not divisible by the patch size "
                        f"{self.patch_size} of {self.config.model.name}.")
    return (self.image_size // self.patch_size) ** 2

  @property
  def model(self) -> MaskedAutoencoder:
    m = self.config.method
    dtype = base.compute_dtype(self.config.model)
    return MaskedAutoencoder(
        encoder=registry.build_encoder(self.config.model),
        decoder=MAEDecoder(num_patches=self.num_patches, patch_dim=self.patch_size**2 * 3,
                           hidden_size=m.decoder_dim, depth=m.decoder_depth,
                           num_heads=m.decoder_heads, dtype=dtype,
                           **registry.vit_speed_options(self.config.model)),
        encode_all_patches=m.encode_all_patches)

  def _views(self, rng, batch):
    return augment.make_views(rng, batch["image"], self.config.method.view)

  def init(self, rng, batch):
    images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
    keep_ids, _, ids_restore = masking.random_masking(rng, 1, self.num_patches,
                                                      self.config.method.mask_ratio)
    variables = self.model.init({"params": rng, "dropout": rng}, images, keep_ids, ids_restore,
                                train=False)
    return variables["params"], {}

  def forward(self, params, images, rng, *, train: bool):
    """Masks, encodes, decodes. Returns (pred, target, mask) for the loss and the pictures."""
    mask_rng, drop_rng = jax.random.split(rng)
    keep_ids, mask, ids_restore = masking.random_masking(
        mask_rng, images.shape[0], self.num_patches, self.config.method.mask_ratio)
    pred = self.model.apply({"params": params}, images, keep_ids, ids_restore, train=train,
                            rngs={"dropout": drop_rng})
    target = reconstruction.patch_targets(images, self.patch_size,
                                          self.config.method.norm_pix_loss)
    return pred, target, mask

  def loss(self, params, state, batch, rng, step):
    del step
    view_rng, model_rng = jax.random.split(rng)
    images = self._views(view_rng, batch)
    pred, target, mask = self.forward(params, images, model_rng, train=True)
    loss = reconstruction.masked_mse(pred, target, mask)
    return loss, ({"mae_loss": loss}, state)

  def features(self, params, state, images):
    del state
    out = self.model.apply({"params": params}, self.eval_inputs(images), train=False,
                           method=MaskedAutoencoder.encode)
    return out["pooled"].astype(jnp.float32)

  def visualize(self, params, state, images, rng):
    """One row per image: original | masked | reconstruction | reconstruction + visible."""
    del state
    view = self.config.method.view
    inputs = self.eval_inputs(images)
    pred, _, mask = self.forward(params, inputs, rng, train=False)
    p = self.patch_size
    patches = vit.patchify(inputs, p)
    if self.config.method.norm_pix_loss:  # Undo the per-patch normalisation for display.
      pred = reconstruction.unnormalize_patch_predictions(pred, inputs, p)
    mask = mask[..., None]
    masked = vit.unpatchify(patches * (1 - mask), p, 3)
    recon = vit.unpatchify(pred, p, 3)
    pasted = vit.unpatchify(patches * (1 - mask) + pred * mask, p, 3)
    mean = jnp.asarray(view.mean, jnp.float32)
    std = jnp.asarray(view.std, jnp.float32)
    columns = [vit.unpatchify(patches, p, 3), masked, recon, pasted]
    columns = [jnp.clip(c * std + mean, 0.0, 1.0) for c in columns]
    rows = jnp.concatenate(columns, axis=2)      # [B, H, 4W, 3]
    return {"reconstruction": jnp.concatenate(list(rows), axis=0)}  # [B*H, 4W, 3]
