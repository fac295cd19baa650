"""Colorful Image Colorization (Zhang, Isola & Efros, ECCV 2016) as a pretext task.

The encoder sees the lightness L of a view only (L / 50 - 1, one channel) and predicts, for
every cell of a grid at 1/`output_stride` of the input (the paper's 56x56 for 224 input is
stride 4), a distribution over the Q in-gamut ab bins; the loss is the class-rebalanced
multinomial cross-entropy against soft-encoded targets (Eq. 2-4,
`ssl_jax.losses.colorization`). The target ab of a cell is the mean ab of its pixels.

Backbone: a ViT (`model.name = vit_*`); a linear head maps each patch token to the
(patch / stride)^2 cells it covers, one Q-way logit vector per cell (the paper's network is a
fully convolutional VGG-style stack with a 1x1 conv to Q; per-token cells are its ViT analogue).
`features` are the encoder's pooled features of the L channel alone, for k-NN and linear probes.

The empirical ab prior p (Eq. 4) is the running mean of the hard-bin histograms of every
training batch seen so far, the current one included, kept in the method state (`ab_prior`,
`prior_batches`); the paper precomputes it over all of ImageNet's training pixels, which this
estimate converges to. `visualize` decodes with the annealed mean (Eq. 5, T = 0.38).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import colorspace
from ssl_jax.config_lib import ConfigError
from ssl_jax.data import augment
from ssl_jax.losses import colorization as color_losses
from ssl_jax.methods import patch_grid
from ssl_jax.models import registry


class ColorizationNet(nn.Module):
  """ViT encoder on L + linear per-cell head. Params: {'encoder', 'head'}."""
  encoder: nn.Module
  num_bins: int
  cells_per_patch: int  # cells per patch side: patch_size // output_stride.

  @nn.compact
  def __call__(self, lightness, *, train: bool):
    """[B, H, W, 1] normalised L -> logits [B, H / stride, W / stride, Q]."""
    tokens = self.encoder(lightness, train=train)["tokens"][:, 1:]
    c, q = self.cells_per_patch, self.num_bins
    logits = nn.Dense(c * c * q, name="head")(tokens.astype(jnp.float32))
    batch, height, width = lightness.shape[:3]
    grid_h = grid_w = int(round(tokens.shape[1]**0.5))
    logits = logits.reshape(batch, grid_h, grid_w, c, c, q).transpose(0, 1, 3, 2, 4, 5)
    return logits.reshape(batch, grid_h * c, grid_w * c, q)

  def encode(self, lightness, *, train: bool = False):
    return self.encoder(lightness, train=train)


def default_method_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "colorization"
  m.output_stride = 4            # Predictions at 1/4 resolution, as the paper's 56x56 of 224.
  m.grid_size = 10.0             # ab quantisation step (Sec. 2.1).
  m.soft_neighbours = 5          # Soft-encoding: 5 nearest bins ...
  m.soft_sigma = 5.0             # ... Gaussian-weighted with sigma 5 (Sec. 2.1).
  m.rebalance_mix = 0.5          # lambda of Eq. (4).
  m.prior_sigma = 5.0            # Gaussian smoothing of the empirical prior (Sec. 2.2).
  m.temperature = 0.38           # Annealed-mean decoding of the pictures (Eq. 5).
  # Crop + flip only: colour jitter would change the very targets. Unit RGB (mean 0, std 1) is
  # what the Lab conversion reads.
  m.view = augment.view_config(crop_scale=(0.2, 1.0), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  return m


def lightness_input(lab: jax.Array) -> jax.Array:
  """[..., 3] Lab -> [..., 1] the network input, L / 50 - 1 in [-1, 1] (paper: L - 50)."""
  return lab[..., :1] / 50.0 - 1.0


@dataclasses.dataclass(frozen=True)
class Colorization(patch_grid.PatchGridMethod):

  def __post_init__(self):
    m = self.config.method
    if tuple(m.view.mean) != (0.0, 0.0, 0.0) or tuple(m.view.std) != (1.0, 1.0, 1.0):
      raise ConfigError("colorization converts unit RGB to Lab: method.view.mean must be "
                        f"(0, 0, 0) and method.view.std (1, 1, 1); got {m.view.mean}, "
                        f"{m.view.std}.")
    if not self.config.model.name.startswith("vit_"):
      raise ConfigError(f"colorization needs a ViT backbone (model.name = vit_*); got "
                        f"{self.config.model.name!r}.")
    if self.patch_size % m.output_stride or self.image_size % self.patch_size:
      raise ConfigError(
          f"method.output_stride={m.output_stride} must divide the patch size {self.patch_size}, "
          f"which must divide method.view.size={self.image_size}.")

  @property
  def bins(self) -> jax.Array:
    return jnp.asarray(color_losses.ab_gamut_bins(self.config.method.grid_size))

  @property
  def model(self) -> ColorizationNet:
    return ColorizationNet(encoder=registry.build_encoder(self.config.model),
                           num_bins=int(self.bins.shape[0]),
                           cells_per_patch=self.patch_size // int(self.config.method.output_stride))

  def init(self, rng, batch):
    del batch
    lightness = jnp.zeros((1, self.image_size, self.image_size, 1), jnp.float32)
    params = self.model.init({"params": rng, "dropout": rng}, lightness, train=False)["params"]
    num_bins = self.bins.shape[0]
    state = {"ab_prior": jnp.zeros((num_bins,), jnp.float32),
             "prior_batches": jnp.zeros((), jnp.float32)}
    return params, state

  def targets(self, lab: jax.Array) -> jax.Array:
    """[B, H, W, 3] Lab -> [B, H / s, W / s, 2] cell-mean ab at the prediction resolution."""
    s = int(self.config.method.output_stride)
    return nn.avg_pool(lab[..., 1:], (s, s), strides=(s, s))

  def loss(self, params, state, batch, rng, step):
    del step
    m = self.config.method
    view_rng, drop_rng = jax.random.split(rng)
    lab = colorspace.rgb_to_lab(augment.make_views(view_rng, batch["image"], m.view))
    bins = self.bins
    ab = self.targets(lab)
    soft = color_losses.soft_encode(ab, bins, num_neighbours=m.soft_neighbours, sigma=m.soft_sigma)
    batch_prior = color_losses.histogram(jnp.argmax(soft, axis=-1), bins.shape[0])
    seen = state["prior_batches"] + 1.0
    prior = state["ab_prior"] + (batch_prior - state["ab_prior"]) / seen
    class_weights = color_losses.rebalancing_weights(prior, bins, mix=m.rebalance_mix,
                                                     sigma=m.prior_sigma)
    logits = self.model.apply({"params": params}, lightness_input(lab), train=True,
                              rngs={"dropout": drop_rng})
    loss = color_losses.rebalanced_cross_entropy(logits, soft, class_weights)
    unweighted = color_losses.rebalanced_cross_entropy(logits, soft, jnp.ones_like(class_weights))
    new_state = {"ab_prior": prior, "prior_batches": seen}
    return loss, ({"unweighted_ce": unweighted}, new_state)

  def _eval_lab(self, images):
    return colorspace.rgb_to_lab(self.eval_inputs(images))

  def features(self, params, state, images):
    del state
    out = self.model.apply({"params": params}, lightness_input(self._eval_lab(images)),
                           train=False, method=ColorizationNet.encode)
    return out["pooled"].astype(jnp.float32)

  def colorize(self, params, lab: jax.Array, temperature: float) -> jax.Array:
    """[B, H, W, 3] Lab -> [B, H, W, 3] RGB from L and the annealed-mean ab (upsampled)."""
    logits = self.model.apply({"params": params}, lightness_input(lab), train=False)
    ab = color_losses.annealed_mean(logits, self.bins, temperature)
    ab = jax.image.resize(ab, lab.shape[:3] + (2,), method="linear")
    return colorspace.lab_to_rgb(jnp.concatenate([lab[..., :1], ab], axis=-1))

  def visualize(self, params, state, images, rng):
    """One row per image: original | its L (grey) | colourised (annealed mean, T = 0.38)."""
    del state, rng
    lab = self._eval_lab(images)
    grey = colorspace.lab_to_rgb(lab * jnp.asarray([1.0, 0.0, 0.0]))
    columns = [colorspace.lab_to_rgb(lab), grey,
               self.colorize(params, lab, self.config.method.temperature)]
    rows = jnp.concatenate(columns, axis=2)
    return {"colorization": jnp.concatenate(list(rows), axis=0)}
