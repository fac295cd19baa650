"""Wide ResNet (Zagoruyko & Komodakis 2016) as FixMatch builds it: WRN-28-2 for CIFAR-10.

Follows google-research/fixmatch `libml/models.py` (`ResNet.classifier`, scales=3, repeat=4,
filters=32 for WRN-28-2), which the semi-supervised papers compare on (Oliver et al. 2018):

* pre-activation blocks: BN -> leaky ReLU(0.1) -> 3x3 conv -> BN -> leaky ReLU -> 3x3 conv, plus
  the shortcut (a strided 1x1 conv where the width changes); the first block of the first stage
  takes its shortcut from the activated input (`activate_before_residual`);
* stage widths `width * 16 * (1, 2, 4)` after a 16-wide 3x3 stem; (depth - 4) / 6 blocks per
  stage; strides 1, 2, 2; a last BN -> leaky ReLU -> global average;
* convolutions keep their bias (tf.layers.conv2d's default) and start from
  N(0, 2 / (k * k * out_channels)) (fixmatch's `conv_args`); 'SAME' padding as TensorFlow;
* BatchNorm momentum 0.999 (TF/Flax convention; PyTorch's 0.001) by default, epsilon 1e-3
  (TF's default);
* optional stochastic depth (`drop_path_rate`, 0 by default: FixMatch has none): block i of L
  drops its residual branch with probability drop_path_rate * i / (L - 1), the linear decay
  rule Noisy Student uses (Xie et al. 2020: survival 0.8 at the last block; Huang et al. 2016).

WRN-28-2 with a 10-class linear head has 1,469,642 parameters (the papers' "1.5M"): the
1,467,610 of the bias-free PyTorch ports (kekmodel/FixMatch-pytorch) plus 2,032 conv biases.
The classifier head is the method's (`ssl_jax.methods.semi_supervised`), not part of the module:
like every registry backbone it returns {'pooled': [B, D], 'feature_map': [B, h, w, D]}.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.models.vit import DropPath

Dtype = Any

BATCH_NORM_MOMENTUM = 0.999
BATCH_NORM_EPSILON = 1e-3
LEAKY_RELU_SLOPE = 0.1


def _conv(features: int, kernel: int, stride: int, dtype, param_dtype, name: str) -> nn.Conv:
  # fixmatch: tf.random_normal_initializer(stddev=rsqrt(0.5 * k * k * filters)).
  init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                 kernel_init=init, dtype=dtype, param_dtype=param_dtype, name=name)


class WideBlock(nn.Module):
  """fixmatch `residual(x0, filters, stride, activate_before_residual)`."""
  features: int
  stride: int = 1
  activate_before_residual: bool = False
  batch_norm_momentum: float = BATCH_NORM_MOMENTUM
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x0: jax.Array, *, train: bool) -> jax.Array:
    norm = lambda name: nn.BatchNorm(use_running_average=not train,
                                     momentum=self.batch_norm_momentum,
                                     epsilon=BATCH_NORM_EPSILON, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name=name)
    act = lambda y: nn.leaky_relu(y, LEAKY_RELU_SLOPE)
    x = act(norm("bn1")(x0))
    if self.activate_before_residual:
      x0 = x
    x = _conv(self.features, 3, self.stride, self.dtype, self.param_dtype, "conv1")(x)
    x = act(norm("bn2")(x))
    x = _conv(self.features, 3, 1, self.dtype, self.param_dtype, "conv2")(x)
    if x0.shape[-1] != self.features:
      x0 = _conv(self.features, 1, self.stride, self.dtype, self.param_dtype, "shortcut")(x0)
    return x0 + DropPath(self.drop_path_rate)(x, train=train)


class WideResNet(nn.Module):
  """WRN-`depth`-`width` encoder returning the pooled features and the last feature map."""
  depth: int = 28
  width: int = 2
  batch_norm_momentum: float = BATCH_NORM_MOMENTUM
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _check_attributes(self):
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f"A Wide ResNet's depth must be 6n + 4 with n >= 1 (10, 16, 28, ...), "
                       f"got {self.depth}.")
    if self.width < 1:
      raise ValueError(f"A Wide ResNet's width must be >= 1, got {self.width}.")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")

  @property
  def feature_dim(self) -> int:
    return 64 * self.width

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    self._check_attributes()
    repeat = (self.depth - 4) // 6
    drop_path_rates = np.linspace(0.0, self.drop_path_rate, 3 * repeat)
    x = _conv(16, 3, 1, self.dtype, self.param_dtype, "stem")(images.astype(self.dtype))
    for scale in range(3):
      features = 16 * self.width << scale
      for index in range(repeat):
        x = WideBlock(features, stride=2 if scale and index == 0 else 1,
                      activate_before_residual=scale == 0 and index == 0,
                      batch_norm_momentum=self.batch_norm_momentum,
                      drop_path_rate=float(drop_path_rates[scale * repeat + index]),
                      dtype=self.dtype,
                      param_dtype=self.param_dtype, name=f"stage{scale + 1}_block{index + 1}")(
                          x, train=train)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                     epsilon=BATCH_NORM_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="final_bn")(x)
    x = nn.leaky_relu(x, LEAKY_RELU_SLOPE)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return {"pooled": pooled, "feature_map": x}
