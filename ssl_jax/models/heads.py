"""Projection / prediction heads of the joint-embedding methods.

Batch statistics: under `jax.jit` with a batch-sharded global array, `nn.BatchNorm` reduces over
the global batch, i.e. it is the synchronised BN of SimCLR (`global_bn`), BYOL (cross-replica
statistics), MoCo v3 and SimSiam (`SyncBatchNorm`). BN uses PyTorch's momentum 0.1 (Flax
`momentum=0.9`) and epsilon 1e-5, also BYOL's haiku and SimCLR's TF settings.
"""
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.losses.contrastive import l2_normalize

Dtype = Any

_BATCH_NORM_MOMENTUM = 0.9
_BATCH_NORM_EPSILON = 1e-5

# PyTorch's default nn.Linear weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which the official
# SwAV prototypes and DINO's weight-normalised last layer keep.
_torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

_OUTPUT_NORMS = ("none", "batch_norm", "batch_norm_scale_only", "batch_norm_no_affine")


class MLPHead(nn.Module):
  """Linear -> [BN] -> ReLU, repeated, then Linear -> [output BN]: the heads of SimCLR ... SwAV.

  Layers: `num_layers` Linear layers, the first `num_layers - 1` to `hidden_dim` followed by
  (BatchNorm if `hidden_batch_norm`) and ReLU, the last to `out_dim` followed by `output_norm`.
  A Linear layer followed by BatchNorm has no bias (BN's mean subtraction cancels it: SimCLR's
  `use_bias and not use_bn`, moco-v3, SimSiam); the others have a bias iff `use_bias`.

  output_norm: "none"; "batch_norm" (scale and offset); "batch_norm_scale_only" (SimCLR v2's last
  layer, `center=False`); "batch_norm_no_affine" (moco-v3 "removed gamma", SimSiam `affine=False`).

  The official heads, as settings (hidden, out dims are the papers' ImageNet values):
    SimCLR v2 projector: 3 layers, hidden = input dim (2048), out 128, hidden BN,
      output "batch_norm_scale_only" (google-research/simclr tf2 `ProjectionHead`).
    MoCo v2 projector: 2 layers, 2048 -> 128, no hidden BN, use_bias (moco `--mlp`).
    MoCo v3 projector: 2 layers (ResNet) / 3 (ViT), 4096 -> 256, hidden BN, use_bias=False,
      output "batch_norm_no_affine"; predictor 2 layers, 4096 -> 256, output "none" (ResNet) or
      "batch_norm_no_affine" (ViT) (moco-v3 `_build_mlp`).
    BYOL projector and predictor: 2 layers, 4096 -> 256, hidden BN, use_bias=False (the haiku
      `MLP`'s last Linear has `with_bias=False`).
    SimSiam projector: 3 layers, 2048 -> 2048, hidden BN, output "batch_norm_no_affine";
      predictor: 2 layers, 512 -> 2048, hidden BN, use_bias, output "none".
    SwAV projector: 2 layers, 2048 -> 128, hidden BN, use_bias (then `Prototypes`).
  """
  num_layers: int
  hidden_dim: int
  out_dim: int
  hidden_batch_norm: bool = True
  output_norm: str = "none"
  use_bias: bool = True
  input_batch_norm: bool = False   # BN on the input first (suncet's PAWS `pred` head, `bn1`).
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.num_layers < 1:
      raise ValueError(f"MLPHead needs num_layers >= 1, got {self.num_layers}.")
    if self.output_norm not in _OUTPUT_NORMS:
      raise ValueError(f"Unknown output_norm {self.output_norm!r}; choose one of {_OUTPUT_NORMS}.")
    if x.ndim != 2:
      raise ValueError(f"MLPHead expects [batch, features], got shape {x.shape}.")

    batch_norm = functools.partial(_batch_norm, train=train, dtype=self.dtype,
                                   param_dtype=self.param_dtype)
    if self.input_batch_norm:
      x = batch_norm("input_batch_norm")(x)
    x = _hidden_layers(self, x, self.num_layers - 1, train=train)
    last = self.num_layers - 1
    x = nn.Dense(self.out_dim, use_bias=self.use_bias and self.output_norm == "none",
                 dtype=self.dtype, param_dtype=self.param_dtype, name=f"linear_{last}")(x)
    if self.output_norm == "batch_norm":
      x = batch_norm(f"batch_norm_{last}")(x)
    elif self.output_norm == "batch_norm_scale_only":
      x = batch_norm(f"batch_norm_{last}", use_bias=False)(x)
    elif self.output_norm == "batch_norm_no_affine":
      x = batch_norm(f"batch_norm_{last}", use_scale=False, use_bias=False)(x)
    return x


def _batch_norm(name, *, train, dtype, param_dtype, use_scale=True, use_bias=True):
  return nn.BatchNorm(use_running_average=not train, momentum=_BATCH_NORM_MOMENTUM,
                      epsilon=_BATCH_NORM_EPSILON, use_scale=use_scale, use_bias=use_bias,
                      dtype=dtype, param_dtype=param_dtype, name=name)


def _hidden_layers(module, x: jax.Array, count: int, *, train: bool) -> jax.Array:
  """The first `count` [Linear -> (BN) -> ReLU] layers of an `MLPHead`-like `module`, created
  inside its compact call so that their params are `linear_<i>` / `batch_norm_<i>` of it."""
  for layer in range(count):
    x = nn.Dense(module.hidden_dim, use_bias=module.use_bias and not module.hidden_batch_norm,
                 dtype=module.dtype, param_dtype=module.param_dtype, name=f"linear_{layer}")(x)
    if module.hidden_batch_norm:
      x = _batch_norm(f"batch_norm_{layer}", train=train, dtype=module.dtype,
                      param_dtype=module.param_dtype)(x)
    x = nn.relu(x)
  return x


class MLPTrunk(nn.Module):
  """The first `num_layers` hidden layers of an `MLPHead` (same settings, same param names):
  a projection head cut at a middle layer, which SimCLR v2 fine-tunes from (Chen et al. 2020b,
  Sec. 2: "fine-tuning from a middle layer of the projection head"; google-research/simclr
  tf2 `ProjectionHead`, `supervised_head_input = hiddens_list[ft_proj_selector]`)."""
  num_layers: int
  hidden_dim: int
  hidden_batch_norm: bool = True
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return _hidden_layers(self, x, self.num_layers, train=train)


def weight_normalized_kernel(direction: jax.Array, scale: jax.Array | None = None) -> jax.Array:
  """W = g * v / ||v||, each output column normalised (torch `weight_norm`, dim=0 of [out, in]).

  Args:
    direction: [in, out] kernel v.
    scale: [out] gains g, or None for g fixed to 1 (DINO's `norm_last_layer=True`).
  """
  column_norms = jnp.linalg.norm(direction.astype(jnp.float32), axis=0, keepdims=True)
  kernel = direction / column_norms
  if scale is not None:
    kernel = kernel * scale[None, :]
  return kernel


class WeightNormDense(nn.Module):
  """Bias-free Linear with weight normalisation (Salimans & Kingma 2016), as DINO's last layer.

  Params: `direction` [in, out]; `scale` [out] initialised to 1 only when `trainable_scale`
  (otherwise g is the constant 1, dino's `weight_g.requires_grad = False`).
  """
  features: int
  trainable_scale: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    direction = self.param("direction", _torch_linear_init, (x.shape[-1], self.features),
                           self.param_dtype)
    scale = (self.param("scale", nn.initializers.ones, (self.features,), self.param_dtype)
             if self.trainable_scale else None)
    kernel = weight_normalized_kernel(direction, scale)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class DINOHead(nn.Module):
  """DINO's projection head (facebookresearch/dino `vision_transformer.DINOHead`).

  MLP in -> hidden (GELU) -> ... -> bottleneck (`num_layers` Linear layers, optional BN after the
  hidden ones, exact GELU as torch `nn.GELU`), L2 normalisation of the bottleneck, then a
  weight-normalised bias-free Linear to `out_dim` whose gains are fixed to 1 when
  `norm_last_layer` (the default) and trainable otherwise. MLP weights are truncated-normal
  std 0.02 with zero biases, as `DINOHead._init_weights`. The last layer's params live under
  `last_layer` so that DINO's `freeze_last_layer` (no update during the first epoch) can mask them.
  """
  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  num_layers: int = 3
  use_bn: bool = False
  norm_last_layer: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.num_layers < 1:
      raise ValueError(f"DINOHead needs num_layers >= 1, got {self.num_layers}.")
    if x.ndim != 2:
      raise ValueError(f"DINOHead expects [batch, features], got shape {x.shape}.")
    dense = lambda features, name: nn.Dense(
        features, kernel_init=nn.initializers.truncated_normal(0.02),
        bias_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name)
    for layer in range(self.num_layers - 1):
      x = dense(self.hidden_dim, f"linear_{layer}")(x)
      if self.use_bn:
        x = nn.BatchNorm(use_running_average=not train, momentum=_BATCH_NORM_MOMENTUM,
                         epsilon=_BATCH_NORM_EPSILON, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=f"batch_norm_{layer}")(x)
      x = nn.gelu(x, approximate=False)
    x = dense(self.bottleneck_dim, f"linear_{self.num_layers - 1}")(x)
    # Normalise in float32: a bf16 norm of a 256-d vector is off by up to ~1%.
    x = l2_normalize(x.astype(jnp.float32)).astype(self.dtype)
    return WeightNormDense(self.out_dim, trainable_scale=not self.norm_last_layer,
                           dtype=self.dtype, param_dtype=self.param_dtype, name="last_layer")(x)


class Prototypes(nn.Module):
  """SwAV's prototypes: bias-free Linear on the L2-normalised embedding (swav `forward_head`).

  Returns the [B, num_prototypes] scores <z/|z|, c_k>. The prototype vectors c_k (the columns of
  `kernel` [dim, num_prototypes]) are kept on the unit sphere by calling `normalize_prototypes`
  on these params before every training step, as swav's `main_swav.train` does.
  """
  num_prototypes: int = 3000
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, embeddings: jax.Array) -> jax.Array:
    if embeddings.ndim != 2:
      raise ValueError(f"Prototypes expects [batch, dim] embeddings, got {embeddings.shape}.")
    embeddings = l2_normalize(embeddings.astype(jnp.float32)).astype(self.dtype)
    kernel = self.param("kernel", _torch_linear_init,
                        (embeddings.shape[-1], self.num_prototypes), self.param_dtype)
    return jnp.dot(embeddings, kernel.astype(self.dtype))


def normalize_prototypes(prototype_params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Returns `Prototypes` params with every prototype (kernel column) of unit L2 norm.

  swav `main_swav.train`: `w = normalize(prototypes.weight, dim=1, p=2)` under `no_grad`, i.e.
  each row of torch's [K, dim] weight, each column of the Flax [dim, K] kernel.

  Args:
    prototype_params: the params of one `Prototypes` module, {"kernel": [dim, K]}.
  """
  if "kernel" not in prototype_params or jnp.ndim(prototype_params["kernel"]) != 2:
    raise ValueError("normalize_prototypes expects the params of a Prototypes module, "
                     "{'kernel': [dim, num_prototypes]}, e.g. params['prototypes']; got keys "
                     f"{list(prototype_params)}.")
  kernel = prototype_params["kernel"]
  normalized = l2_normalize(kernel.astype(jnp.float32), axis=0).astype(kernel.dtype)
  return {**prototype_params, "kernel": normalized}
