"""Discriminators for Perceptual MAE (their image inputs are built by `ssl_jax.image_ops`).

Perceptual MAE (Tukra, Hoffman & Chatfield, "Improving Visual Representation Learning through
Perceptual Understanding", CVPR 2023) trains an MAE generator against a convolutional
discriminator and matches the discriminator's hidden feature maps between real and
reconstructed images. The authors' code (github.com/tractableai/perceptual-mae, file
`src/models/modules/discriminators.py`) has two discriminators, both rebuilt here:

* `MSGDiscriminator`: the multi-scale-gradient discriminator of MSG-GAN (Karnewar & Wang, CVPR
  2020) as the authors configure it (`discriminator.depth: 6`, `feature_size_ndf: 512`).
* `DCGANDiscriminator`: the single-scale strided-conv `Discriminator` used by the LS-GAN variant.

Both return `(logits, features)`: pre-sigmoid logits of shape [B] (the authors squeeze to [B]
too, `.view(-1)`), and the list of intermediate feature maps the authors match in the perceptual
and style losses (`MSGDiscFeatureExtractor` / `DiscFeatureExtractor` in
`src/losses/image_reconstruction.py`). The sigmoid the authors apply inside the module is left
to the loss (`ssl_jax.losses.perceptual`), so one module serves the least-squares loss (on
sigmoid scores, as the authors do) and the logistic loss (on logits).

All arrays are NHWC. See docs/perceptual_mae_notes.md for every choice and its source line.
"""
from __future__ import annotations

from typing import Sequence, Union

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.image_ops import check_images, image_pyramid

# PyTorch's default Conv2d/Linear weight init (kaiming_uniform with a=sqrt(5)) has variance
# 1/(3 fan_in); the authors never override it, so the discriminators start at the same scale.
_TORCH_DEFAULT_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_LEAKY_SLOPE = 0.2

ImagePyramid = Union[jax.Array, Sequence[jax.Array]]


# ----------------------------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------------------------


def minibatch_stddev(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Appends one channel holding the batch's mean feature standard deviation (ProGAN/MSG-GAN).

  Matches the authors' `MinibatchStdDev`: the std over the batch of every (h, w, c) entry,
  sqrt(mean((x - mean_b x)^2) + eps), averaged to one scalar and broadcast as a new channel.
  Computed over the whole (global) batch, so a sharded step sees the same statistic.
  """
  x32 = x.astype(jnp.float32)
  centred = x32 - jnp.mean(x32, axis=0, keepdims=True)
  stddev = jnp.mean(jnp.sqrt(jnp.mean(jnp.square(centred), axis=0) + eps))
  stat_channel = jnp.broadcast_to(stddev, x.shape[:-1] + (1,)).astype(x.dtype)
  return jnp.concatenate([x, stat_channel], axis=-1)


class EqualizedConv(nn.Module):
  """Conv with the equalised learning rate of ProGAN: N(0, 1) weights scaled by sqrt(2/fan_in).

  The authors' `_equalized_conv2d`, selected by `discriminator.conv_layer_type: equal`.
  """
  features: int
  kernel_size: int
  padding: str = "SAME"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_features = x.shape[-1]
    shape = (self.kernel_size, self.kernel_size, in_features, self.features)
    kernel = self.param("kernel", nn.initializers.normal(1.0), shape, self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    scale = np.sqrt(2.0 / (self.kernel_size * self.kernel_size * in_features))
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), (kernel * scale).astype(self.dtype), (1, 1), self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


def _conv(features, kernel_size, padding, equalized_lr, dtype, param_dtype, name):
  if equalized_lr:
    return EqualizedConv(features, kernel_size, padding, dtype, param_dtype, name=name)
  return nn.Conv(features, (kernel_size, kernel_size), padding=padding, use_bias=True,
                 kernel_init=_TORCH_DEFAULT_KERNEL_INIT, dtype=dtype, param_dtype=param_dtype,
                 name=name)


class MSGConvBlock(nn.Module):
  """MSG-GAN discriminator block: two 3x3 convs with LeakyReLU(0.2), then 2x2 average pooling.

  The authors' `MSGGAN_DisGeneralConvBlock`: conv(in -> in), conv(in -> out), AvgPool2d(2).
  """
  features: int
  equalized_lr: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda f, name: _conv(f, 3, "SAME", self.equalized_lr, self.dtype, self.param_dtype,
                                 name)
    x = nn.leaky_relu(conv(x.shape[-1], "conv_1")(x), _LEAKY_SLOPE)
    x = nn.leaky_relu(conv(self.features, "conv_2")(x), _LEAKY_SLOPE)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class MSGFinalBlock(nn.Module):
  """MSG-GAN final block: [minibatch std], 3x3 conv, 4x4 valid conv, 1x1 conv to one channel,
  then a linear layer over the flattened map (the authors' `MSGGAN_DisFinalBlock` followed by
  `final_linear = nn.Linear(4 * 4, 1)`; the input size is inferred here instead of fixed to 4x4).
  """
  features: int
  minibatch_std: bool = True
  equalized_lr: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, pad, name: _conv(f, k, pad, self.equalized_lr, self.dtype,
                                         self.param_dtype, name)
    if self.minibatch_std:
      x = minibatch_stddev(x)
    x = nn.leaky_relu(conv(self.features, 3, "SAME", "conv_1")(x), _LEAKY_SLOPE)
    x = nn.leaky_relu(conv(self.features, 4, "VALID", "conv_2")(x), _LEAKY_SLOPE)
    x = conv(1, 1, "VALID", "conv_3")(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(1, kernel_init=_TORCH_DEFAULT_KERNEL_INIT, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="final_linear")(x)
    return x[:, 0]


def msg_block_widths(num_scales: int, feature_size: int) -> list[int]:
  """Output channels of the MSG discriminator's blocks, finest scale first.

  The authors' channel plan (`MSGDiscriminator.__init__`), written per scale: block s outputs
  feature_size / 2**max(1, num_scales - 3 - s) channels, so for num_scales=6, feature_size=512
  the blocks give 64, 128, 256, 256, 256 (the comments in their feature extractor list the last
  four) and the final block sees feature_size = 512 channels.
  """
  return [feature_size // 2**max(1, num_scales - 3 - s) for s in range(num_scales - 1)]


# ----------------------------------------------------------------------------------------------
# Discriminators.
# ----------------------------------------------------------------------------------------------


class MSGDiscriminator(nn.Module):
  """Multi-scale-gradient discriminator (MSG-GAN) as configured by Perceptual MAE.

  Processing runs from the finest scale to the coarsest. The full image goes through a 1x1
  from-RGB conv and block 0; at every coarser scale s the image of that scale goes through its
  own from-RGB conv, is concatenated (image features first) with the running feature map, and
  goes through block s, which halves the resolution; the coarsest image joins before the final
  block. Feature maps for the perceptual loss are the outputs of all `num_scales - 1` blocks,
  finest first (the authors' `MSGDiscFeatureExtractor` returns the same maps).

  Paper size: num_scales=6, feature_size=512 at 224x224 (coarsest 7x7, final 4x4 conv -> 4x4).
  Smoke size: num_scales=4, feature_size=16 at 32x32.

  Attributes:
    num_scales: pyramid levels (the authors' `discriminator.depth`).
    feature_size: channels entering the final block (`feature_size_ndf`), a power of two.
    minibatch_std: append the minibatch-stddev channel before the final block (MSG-GAN, authors).
    equalized_lr: equalised-learning-rate convs (`conv_layer_type: equal`; authors default off).
  """
  num_scales: int = 6
  feature_size: int = 512
  minibatch_std: bool = True
  equalized_lr: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _check_config(self):
    if self.num_scales < 2:
      raise ValueError(f"MSGDiscriminator needs num_scales >= 2; got {self.num_scales}.")
    f = self.feature_size
    if f <= 0 or f & (f - 1):
      raise ValueError(f"feature_size must be a power of two; got {f}.")
    if min(msg_block_widths(self.num_scales, f)) < 1:
      raise ValueError(
          f"feature_size={f} is too small for num_scales={self.num_scales}: the finest block "
          f"would have no channels. Use feature_size >= {2**max(1, self.num_scales - 3)}.")

  def _check_pyramid(self, levels):
    if len(levels) != self.num_scales:
      raise ValueError(
          f"MSGDiscriminator(num_scales={self.num_scales}) got {len(levels)} images; pass "
          "image_pyramid(images, num_scales) (finest first) or a single [B, H, W, C] array.")
    for level in levels:
      check_images(level, "every pyramid level")
    batch, height, width, channels = levels[0].shape
    for s, level in enumerate(levels):
      expected = (batch, height // 2**s, width // 2**s, channels)
      if level.shape != expected:
        raise ValueError(
            f"pyramid level {s} must have shape {expected} (finest first, halving per level); "
            f"got {level.shape}.")
    if height % 2**(self.num_scales - 1) or width % 2**(self.num_scales - 1):
      raise ValueError(
          f"image size {height}x{width} must be divisible by 2**(num_scales-1) = "
          f"{2**(self.num_scales - 1)} so every block's output matches the next scale.")
    if min(levels[-1].shape[1:3]) < 4:
      raise ValueError(
          f"the coarsest scale is {levels[-1].shape[1]}x{levels[-1].shape[2]} but the final "
          "block's 4x4 valid conv needs at least 4x4; use fewer scales or larger images.")

  @nn.compact
  def __call__(self, images: ImagePyramid) -> tuple[jax.Array, list[jax.Array]]:
    """Args: a list [finest, ..., coarsest] of [B, H/2**s, W/2**s, C] images, or one [B, H, W, C]
    array whose area pyramid is built here. Returns (logits [B] float32, features list)."""
    self._check_config()
    levels = (image_pyramid(jnp.asarray(images), self.num_scales) if hasattr(images, "shape")
              else list(images))
    self._check_pyramid(levels)
    widths = msg_block_widths(self.num_scales, self.feature_size)
    from_rgb = lambda features, s: _conv(features, 1, "VALID", self.equalized_lr, self.dtype,
                                         self.param_dtype, f"from_rgb_{s}")
    block = lambda s: MSGConvBlock(widths[s], self.equalized_lr, self.dtype, self.param_dtype,
                                   name=f"block_{s}")
    x = block(0)(from_rgb(widths[0], 0)(levels[0]))
    features = [x]
    for s in range(1, self.num_scales - 1):
      x = jnp.concatenate([from_rgb(widths[s - 1], s)(levels[s]), x], axis=-1)
      x = block(s)(x)
      features.append(x)
    last = self.num_scales - 1
    x = jnp.concatenate([from_rgb(widths[-1], last)(levels[last]), x], axis=-1)
    logits = MSGFinalBlock(self.feature_size, self.minibatch_std, self.equalized_lr, self.dtype,
                           self.param_dtype, name="final_block")(x)
    return logits.astype(jnp.float32), features


class BatchStatNorm(nn.Module):
  """BatchNorm in training mode without running averages: normalise by this batch's statistics.

  The authors' single-scale discriminator uses `nn.BatchNorm2d` and only ever computes losses in
  training mode, where PyTorch normalises with the current batch's mean and biased variance over
  (N, H, W); the running averages are never read. Dropping them keeps the module stateless (no
  `batch_stats` collection) with the same forward pass. Real and fake batches are normalised
  separately because the losses call the discriminator on each separately, as the authors do.
  """
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale + bias).astype(self.dtype)


class DCGANDiscriminator(nn.Module):
  """Single-scale strided-conv discriminator (the authors' `Discriminator`, LS-GAN variant).

  Blocks of stride-2 conv (no bias) + norm + LeakyReLU(0.2), no norm on the first block; then a
  head: a `head_kernel_size` valid conv (no bias) to one channel, flattened, and a linear layer
  to one logit. Defaults are the authors' layers for 224x224 (kernels 7,5,5,3,3, paddings
  1,1,0,0,1, widths 64..512: maps of 110, 54, 25, 12, 6 pixels, head 4x4 -> `Linear(16, 1)`).
  Features for the perceptual loss are the outputs of all blocks but the last (the authors'
  `DiscFeatureExtractor` takes conv1..conv4 of conv1..conv5).

  Smoke size for 32x32 or 64x64: widths=(16, 32, 64), kernel_sizes=(4, 4, 4),
  paddings=(1, 1, 1).

  Attributes:
    widths, kernel_sizes, paddings: one entry per block.
    head_kernel_size: kernel of the valid head conv (authors: 3).
    norm: "batch" (`BatchStatNorm`, the authors' BatchNorm2d in training mode) or "layer"
      (per-example GroupNorm with one group, independent of the other batch members).
  """
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  kernel_sizes: Sequence[int] = (7, 5, 5, 3, 3)
  paddings: Sequence[int] = (1, 1, 0, 0, 1)
  head_kernel_size: int = 3
  norm: str = "batch"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _check(self, images):
    check_images(images)
    n = len(self.widths)
    if n < 2 or len(self.kernel_sizes) != n or len(self.paddings) != n:
      raise ValueError(
          "widths, kernel_sizes and paddings need one entry per block and at least two blocks; "
          f"got {len(self.widths)}, {len(self.kernel_sizes)}, {len(self.paddings)}.")
    if self.norm not in ("batch", "layer"):
      raise ValueError(f"norm must be 'batch' or 'layer'; got {self.norm!r}.")
    sizes = [tuple(images.shape[1:3])]
    for kernel, pad in zip(self.kernel_sizes, self.paddings):
      sizes.append(tuple((d + 2 * pad - kernel) // 2 + 1 for d in sizes[-1]))
    if min(sizes[-1]) < self.head_kernel_size or min(min(s) for s in sizes) < 1:
      raise ValueError(
          f"input {images.shape[1]}x{images.shape[2]} shrinks through the blocks to "
          f"{sizes[1:]}, too small for the {self.head_kernel_size}x{self.head_kernel_size} head; "
          "use fewer blocks, smaller kernels or larger images (the defaults are for 224x224).")

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """Args: [B, H, W, C]. Returns (logits [B] float32, features list)."""
    self._check(images)
    x = images.astype(self.dtype)
    features = []
    for i, (width, kernel, pad) in enumerate(zip(self.widths, self.kernel_sizes, self.paddings)):
      x = nn.Conv(width, (kernel, kernel), strides=(2, 2), padding=((pad, pad), (pad, pad)),
                  use_bias=False, kernel_init=_TORCH_DEFAULT_KERNEL_INIT, dtype=self.dtype,
                  param_dtype=self.param_dtype, name=f"conv_{i}")(x)
      if i > 0:
        if self.norm == "batch":
          x = BatchStatNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=f"norm_{i}")(x)
        else:
          x = nn.GroupNorm(num_groups=1, epsilon=1e-5, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=f"norm_{i}")(x)
      x = nn.leaky_relu(x, _LEAKY_SLOPE)
      if i < len(self.widths) - 1:
        features.append(x)
    k = self.head_kernel_size
    x = nn.Conv(1, (k, k), padding="VALID", use_bias=False, kernel_init=_TORCH_DEFAULT_KERNEL_INIT,
                dtype=self.dtype, param_dtype=self.param_dtype, name="head_conv")(x)
    x = x.reshape(x.shape[0], -1)
    logits = nn.Dense(1, kernel_init=_TORCH_DEFAULT_KERNEL_INIT, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="final_linear")(x)[:, 0]
    chex.assert_shape(logits, (images.shape[0],))
    return logits.astype(jnp.float32), features
