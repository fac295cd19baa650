"""Vision Transformer (Dosovitskiy et al., 2021) laid out like timm's `VisionTransformer`.

Numerics and names follow timm / MAE so that weights can be moved between this module and
PyTorch with a fixed renaming table:

  timm                          here (Flax params)
  patch_embed.proj.{weight,bias} patch_embed/{kernel [p,p,C,D], bias}
  cls_token, pos_embed          cls_token [1,1,D], pos_embed [1,1+N,D] (only when 'learn')
  blocks.{i}.norm1 / norm2      blocks_{i}/norm1, blocks_{i}/norm2 (LayerNorm eps 1e-6)
  blocks.{i}.attn.qkv / proj    blocks_{i}/attn/qkv [D,3D] + bias, blocks_{i}/attn/proj
  blocks.{i}.mlp.fc1 / fc2      blocks_{i}/mlp/fc1, blocks_{i}/mlp/fc2 (exact GELU between)
  norm                          norm (with a class token)
  fc_norm                       fc_norm (class_token=False: timm's global_pool='avg', whose
                                final `norm` is the identity and has no weights)

Initialisation follows MAE's `_init_weights` (xavier-uniform Dense, zero bias, patch-embedding
kernel xavier-uniform over its flattened [p*p*C, D] view, cls token N(0, 0.02)) and timm for the
learned position embedding (truncated normal, std 0.02).
"""
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.data import masking
from ssl_jax.models import splash

Dtype = Any

LAYER_NORM_EPSILON = 1e-6

# MAE: `torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))` on the patch-embedding conv, i.e.
# fan_in = p*p*C and fan_out = D, which differs from Flax's conv fans (receptive field counted in
# both), hence the explicit axes.
_patch_embed_init = nn.initializers.variance_scaling(
    1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1)
_dense_init = nn.initializers.xavier_uniform()


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """Cuts [B, H, W, C] images into [B, N, p*p*C] flattened non-overlapping patches.

  Same ordering as MAE's `patchify` (einsum 'nchpwq->nhwpqc' on NCHW): patches in row-major
  order over the (H/p, W/p) grid, and each patch flattened as (row p, column q, channel c). This is
  also the order in which a [p, p, C, D] patch-embedding kernel reshaped to [p*p*C, D] reads it.
  """
  if images.ndim != 4:
    raise ValueError(f"patchify expects images [B, H, W, C], got shape {images.shape}.")
  batch, height, width, channels = images.shape
  if height % patch_size or width % patch_size:
    raise ValueError(
        f"Image size {height}x{width} is not divisible by patch size {patch_size}; "
        "resize or crop the images to a multiple of the patch size.")
  grid_h, grid_w = height // patch_size, width // patch_size
  x = images.reshape(batch, grid_h, patch_size, grid_w, patch_size, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, grid_h * grid_w, patch_size * patch_size * channels)


def unpatchify(patches: jax.Array, patch_size: int, channels: int,
               grid_hw: tuple[int, int] | None = None) -> jax.Array:
  """Inverse of `patchify`: [B, N, p*p*C] -> [B, H, W, C].

  The patch grid is square (as in MAE's `unpatchify`) unless `grid_hw` = (H/p, W/p) is given.
  """
  if patches.ndim != 3:
    raise ValueError(f"unpatchify expects patches [B, N, p*p*C], got shape {patches.shape}.")
  batch, num_patches, patch_dim = patches.shape
  if patch_dim != patch_size * patch_size * channels:
    raise ValueError(
        f"Patch dimension {patch_dim} != patch_size**2 * channels = "
        f"{patch_size}**2 * {channels}; check patch_size and channels.")
  if grid_hw is None:
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
      raise ValueError(
          f"{num_patches} patches do not form a square grid; pass grid_hw=(rows, cols).")
    grid_hw = (side, side)
  grid_h, grid_w = grid_hw
  if grid_h * grid_w != num_patches:
    raise ValueError(f"grid_hw={grid_hw} does not hold {num_patches} patches.")
  x = patches.reshape(batch, grid_h, grid_w, patch_size, patch_size, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, grid_h * patch_size, grid_w * patch_size, channels)


def _sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
  """Transformer sine-cosine code of 1-D positions: [sin(pos * w_k), cos(pos * w_k)], k < D/2."""
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000 ** omega
  angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int | Sequence[int],
                        with_cls_token: bool) -> np.ndarray:
  """Fixed 2-D sine-cosine position embedding of MAE's `get_2d_sincos_pos_embed`.

  The first D/2 channels code the column (w) index and the last D/2 the row (h) index, patches in
  row-major order; MAE gets this from `np.meshgrid(grid_w, grid_h)` ("here w goes first").

  Args:
    embed_dim: D, a multiple of 4 (sin and cos for each of the two axes).
    grid_size: patches per side, or (rows, cols).
    with_cls_token: prepend an all-zero row for the CLS token.

  Returns:
    float32 array [1, (1 +) rows*cols, D].
  """
  if embed_dim % 4:
    raise ValueError(f"sincos position embedding needs embed_dim % 4 == 0, got {embed_dim}.")
  if isinstance(grid_size, (int, np.integer)):
    grid_size = (grid_size, grid_size)
  rows, cols = (int(n) for n in grid_size)
  row_index, col_index = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
  embedding = np.concatenate(
      [_sincos_1d(embed_dim // 2, col_index), _sincos_1d(embed_dim // 2, row_index)], axis=1)
  if with_cls_token:
    embedding = np.concatenate([np.zeros((1, embed_dim)), embedding], axis=0)
  return embedding[None].astype(np.float32)


def resize_pos_embed(patch_pos_embed: jax.Array, old_grid: tuple[int, int],
                     new_grid: tuple[int, int]) -> jax.Array:
  """Bicubically resamples [1, old_h*old_w, D] patch position embeddings to a new grid.

  DINO's `interpolate_pos_encoding`: lets a ViT whose learned embedding was created for the
  global-crop grid also encode smaller local crops (multi-crop). Without antialiasing, as
  `torch.nn.functional.interpolate(mode='bicubic')`.
  """
  if tuple(old_grid) == tuple(new_grid):
    return patch_pos_embed
  dim = patch_pos_embed.shape[-1]
  grid = patch_pos_embed.reshape(1, *old_grid, dim)
  grid = jax.image.resize(grid, (1, *new_grid, dim), method="cubic", antialias=False)
  return grid.reshape(1, new_grid[0] * new_grid[1], dim)


class DropPath(nn.Module):
  """Stochastic depth (Huang et al., 2016) as timm's `DropPath`.

  Zeroes the whole residual branch of a sample with probability `rate` and rescales survivors by
  1 / (1 - rate), so the expected output is unchanged; identity unless `train`. `rate` may be a
  traced scalar (a block of a scanned stack, whose rate is scanned over with its params).
  """
  rate: float | jax.Array

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not train or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
      return x
    keep_prob = 1.0 - self.rate
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, mask_shape)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


class MlpBlock(nn.Module):
  """timm `Mlp`: fc1 -> exact (erf) GELU -> fc2, back to the input width."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_dense_init,
        bias_init=nn.initializers.zeros, name=name)
    y = dense(self.mlp_dim, "fc1")(x)
    y = nn.gelu(y, approximate=False)
    return dense(x.shape[-1], "fc2")(y)


ATTENTION_IMPLS = ("plain", "xla", "cudnn", "splash")
REMAT_POLICIES = {
    # Every activation of a block is recomputed in the backward pass (jax.checkpoint's default).
    "full": None,
    # Matmul outputs are kept, the elementwise work between them is recomputed.
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    # As dots_saveable, but batched matmuls (attention's q k^T and weights @ v) are recomputed.
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
REMAT_CHOICES = ("none",) + tuple(REMAT_POLICIES)


class PatchEmbed(nn.Module):
  """Linear projection of flattened p x p patches, x_p E + b (Dosovitskiy et al. 2021, eq. 1).

  Input: `patchify`'s [B, N, p*p*C]; output [B, N, D]. The params are those of a [p, p, C, D]
  stride-p 'VALID' convolution (timm's `patch_embed.proj`, MAE's init): such a convolution reads
  every patch once, so it is this per-patch matmul. Written as a matmul it runs on the matrix
  units (cuDNN ran the 3-channel convolution at 34 TFLOP/s on an H200, MAE ViT-B/16's costliest
  single op) and lets MAE embed only its visible patches.
  """
  patch_size: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    channels, remainder = divmod(patches.shape[-1], self.patch_size ** 2)
    if remainder:
      raise ValueError(f"Patch dimension {patches.shape[-1]} is not patch_size**2 * channels "
                       f"for patch_size {self.patch_size}.")
    kernel = self.param("kernel", _patch_embed_init,
                        (self.patch_size, self.patch_size, channels, self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    patches, kernel, bias = nn.dtypes.promote_dtype(patches, kernel, bias, dtype=self.dtype)
    return jnp.einsum("bnk,kd->bnd", patches, kernel.reshape(-1, self.features)) + bias


# jax's cuDNN attention refuses training at an odd sequence length (measured on an H200 with jax
# 0.11: "Unsupported sequence length Q 197, KV 197", MAE's decoder). Its check reads the custom
# VJP's empty placeholder bias as a bias, and cuDNN's bias path needs even lengths; padding to an
# even length passes it with no bias at all.
CUDNN_LENGTH_MULTIPLE = 2


def fused_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, scale: float,
                    implementation: str, length_multiple: int = 1) -> jax.Array:
  """`jax.nn.dot_product_attention` over [B, T, heads, head_dim] self-attention inputs.

  With `length_multiple` > 1 and T not a multiple of it, the tokens are zero-padded to the next
  multiple and the padded keys masked out through `key_value_seq_lengths` (cuDNN's padding mask;
  no bias), then the padded query rows are dropped: the real tokens' outputs and gradients are
  those of the unpadded attention (the padded rows attend the real keys, so everything stays
  finite).
  """
  batch, num_tokens = query.shape[:2]
  padding = -num_tokens % length_multiple
  if not padding:
    return jax.nn.dot_product_attention(query, key, value, scale=scale,
                                        implementation=implementation)
  widths = ((0, 0), (0, padding), (0, 0), (0, 0))
  query, key, value = (jnp.pad(t, widths) for t in (query, key, value))
  out = jax.nn.dot_product_attention(
      query, key, value, scale=scale, implementation=implementation,
      key_value_seq_lengths=jnp.full((batch,), num_tokens, jnp.int32))
  return out[:, :num_tokens]


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection, as timm's `Attention`.

  softmax(q k^T / sqrt(d_head)) v per head (Vaswani et al., 2017, eq. 1). The qkv output is laid
  out as (3, heads, head_dim), matching timm's `reshape(B, N, 3, H, hd)`, so its kernel transfers
  as-is.

  `attention_impl`:
    'plain': einsums here, logits and softmax in float32; the weights [B, heads, T, T] are sown
      into 'intermediates'/'attention' for attention-map visualisation (DINO Fig. 1);
    'xla' / 'cudnn': `fused_attention` with that implementation ('cudnn': the fused
      flash-attention kernel of cuDNN on NVIDIA GPUs, bf16/fp16 only, odd token counts padded to
      even; 'xla': the same math as 'plain' for XLA to fuse, any backend). The weights are never
      materialised, so nothing is sown: `ssl_jax.attention` renders maps with a 'plain' clone of
      the encoder;
    'splash': the Pallas splash-attention kernel of TPUs (`splash.splash_attention`; tokens
      padded to whole 128-token blocks, the padding masked as its own segment). Off a TPU it
      runs in Pallas' interpreter (tests); `registry.vit_speed_options` picks 'xla' there.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "plain"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, num_tokens, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"Width {width} is not divisible by num_heads={self.num_heads}.")
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=_dense_init, bias_init=nn.initializers.zeros, name="qkv")(x)
    qkv = qkv.reshape(batch, num_tokens, 3, self.num_heads, head_dim)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got "
                       f"{self.attention_impl!r}.")
    if self.attention_impl == "plain":
      out = self._plain(query, key, value, head_dim)
    elif self.attention_impl == "splash":
      out = splash.splash_attention(query, key, value, scale=head_dim ** -0.5)
    else:
      out = fused_attention(
          query, key, value, scale=head_dim ** -0.5, implementation=self.attention_impl,
          length_multiple=CUDNN_LENGTH_MULTIPLE if self.attention_impl == "cudnn" else 1)
    out = out.reshape(batch, num_tokens, width)
    return nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=_dense_init, bias_init=nn.initializers.zeros, name="proj")(out)

  def _plain(self, query, key, value, head_dim):
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key,
                        preferred_element_type=jnp.float32) * head_dim ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    self.sow("intermediates", "attention", weights)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), value)


class Block(nn.Module):
  """Pre-norm Transformer block (timm `Block`): x + DropPath(attn(norm1 x)), then the MLP."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path_rate: float | jax.Array = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "plain"

  # `train` may be given by position: `nn.remat` needs it there to hold it static.
  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    chex.assert_rank(x, 3)
    if x.shape[-1] != self.hidden_size:
      raise ValueError(f"Block of width {self.hidden_size} got tokens of width {x.shape[-1]}.")
    norm = lambda name: nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name=name)
    drop_path = DropPath(self.drop_path_rate)
    y = Attention(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                  attention_impl=self.attention_impl, name="attn")(norm("norm1")(x))
    x = x + drop_path(y, train=train)
    y = MlpBlock(int(self.hidden_size * self.mlp_ratio), dtype=self.dtype,
                 param_dtype=self.param_dtype, name="mlp")(norm("norm2")(x))
    return x + drop_path(y, train=train)


def run_blocks(parent: nn.Module, x: jax.Array, *, train: bool, depth: int,
               drop_path_rates: Sequence[float], name_prefix: str = "blocks_",
               remat: str = "none", scan: bool = False, **block_kwargs) -> jax.Array:
  """`depth` Blocks named `{name_prefix}{i}`, called from `parent`'s compact method.

  The two speed levers leave the params (names, shapes, values) and the math unchanged:
    remat: a `jax.checkpoint` policy per block (`REMAT_CHOICES`): activations inside a block are
      recomputed in the backward pass instead of stored (memory for FLOPs; flax `nn.remat`);
    scan: the blocks run as one `lax.scan` over their params stacked at call time, so XLA
      compiles one block instead of `depth` (compile time; MaxText/praxis scan their layers for
      the same reason). The params stay `{name_prefix}{i}`, so checkpoints, exports, timm interop
      and layer-wise lr decay see the same tree. Stochastic depth in a scan draws its masks from
      keys split per block (same distribution, other masks than the loop).
  Both fall back to the plain loop where they cannot apply: at init (the params are created by
  the loop), and when 'intermediates' are collected (per-block captures and attention maps need
  the blocks as modules).
  """
  if remat not in REMAT_CHOICES:
    raise ValueError(f"remat must be one of {REMAT_CHOICES}, got {remat!r}.")
  capturing = parent.is_mutable_collection("intermediates")
  if scan and not capturing and not parent.is_initializing():
    return _scan_blocks(parent, x, train=train, depth=depth, drop_path_rates=drop_path_rates,
                        name_prefix=name_prefix, remat=remat, block_kwargs=block_kwargs)
  block_cls = Block
  if remat != "none" and not capturing:
    # static_argnums counts the module as 0: `train` (argument 2) selects Python branches.
    block_cls = nn.remat(Block, policy=REMAT_POLICIES[remat], static_argnums=(2,))
  for index in range(depth):
    x = block_cls(drop_path_rate=float(drop_path_rates[index]), name=f"{name_prefix}{index}",
                  **block_kwargs)(x, train)
  return x


def _scan_blocks(parent, x, *, train, depth, drop_path_rates, name_prefix, remat, block_kwargs):
  params = parent.variables["params"]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                         *[params[f"{name_prefix}{index}"] for index in range(depth)])
  drop = train and any(float(rate) > 0.0 for rate in drop_path_rates)
  rates = jnp.asarray(drop_path_rates, jnp.float32)
  keys = (jax.random.split(parent.make_rng("dropout"), depth) if drop
          else jnp.zeros((depth,), jnp.int32))  # Unused placeholder: scan needs an array.

  def body(tokens, layer):
    block_params, rate, key = layer
    block = Block(drop_path_rate=rate if drop else 0.0, parent=None, **block_kwargs)
    rngs = {"dropout": key} if drop else {}
    return block.apply({"params": block_params}, tokens, train, rngs=rngs), None

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
  x, _ = jax.lax.scan(body, x, (stacked, rates, keys))
  return x


class VisionTransformer(nn.Module):
  """ViT encoder, optionally run on a subset of patches (MAE encoder).

  With a class token (the default) the tokens go through the final LayerNorm `norm` and the
  summary is the CLS token or the mean of the normed patch tokens. Without one (timm's
  `class_token=False, global_pool='avg'`, whose `fc_norm` defaults to on) there is no final
  `norm`: the patch tokens are averaged, then normalised by the LayerNorm `fc_norm`, the order
  of timm's `forward_head` (pool, then fc_norm).

  Attributes:
    patch_size: side of the square patches.
    hidden_size: token width D; also the feature dimension (`feature_dim`).
    depth: number of blocks.
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / D.
    pos_embed: 'learn' (a `pos_embed` param, timm) or 'sincos' (fixed 2-D sine-cosine, MAE; not a
      param, recomputed for the input's grid).
    pool: which summary is returned as 'pooled': 'cls' or 'mean' (of the patch tokens);
      'mean' without a class token.
    class_token: prepend a learned CLS token (timm `class_token`); without one the position
      embedding has no CLS slot and 'pooled' is fc_norm(mean of the patch tokens).
    drop_path_rate: stochastic-depth rate of the last block, linear from 0 over depth (timm).
    dtype: computation dtype; params are kept in `param_dtype`.
    attention_impl: 'plain' | 'xla' | 'cudnn' (`Attention`).
    remat: 'none' or a `REMAT_POLICIES` name, per block (`run_blocks`).
    scan_blocks: run the blocks as one `lax.scan` (`run_blocks`); same params, same outputs.
    token_gather: how `keep_ids` picks the visible patches, 'take' | 'onehot'
      (`masking.select_tokens`); same outputs.
  """
  patch_size: int
  hidden_size: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  pos_embed: str = "learn"
  pool: str = "cls"
  class_token: bool = True
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "plain"
  remat: str = "none"
  scan_blocks: bool = False
  token_gather: str = "take"

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches: the CLS token or none (timm's `num_prefix_tokens`)."""
    return int(self.class_token)

  @property
  def feature_dim(self) -> int:
    return self.hidden_size

  def _check_attributes(self):
    if self.pos_embed not in ("learn", "sincos"):
      raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {self.pos_embed!r}.")
    if self.pool not in ("cls", "mean"):
      raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}.")
    if not self.class_token and self.pool != "mean":
      raise ValueError("A ViT without a class token has no CLS to pool: use pool='mean' "
                       "(timm's class_token=False, global_pool='avg').")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.")

  def _position_embedding(self, grid: tuple[int, int]) -> jax.Array:
    """[1, prefix + rows*cols, D] position embedding for the input's patch grid, the CLS slot
    first when there is a class token (prefix = `num_prefix_tokens`)."""
    prefix = self.num_prefix_tokens
    if self.pos_embed == "sincos":
      return jnp.asarray(sincos_pos_embed_2d(self.hidden_size, grid,
                                             with_cls_token=self.class_token))
    # The learned table is created for the grid seen at init (initialise with the largest
    # crop); other grids (e.g. DINO local crops) get a bicubic resample of it. Flax checks a
    # stored param against the init shape, so a later call declares the stored shape.
    shape = (1, prefix + grid[0] * grid[1], self.hidden_size)
    if self.has_variable("params", "pos_embed"):
      shape = jnp.shape(self.get_variable("params", "pos_embed"))
    learned = self.param("pos_embed", nn.initializers.truncated_normal(0.02), shape,
                         self.param_dtype)
    num_learned = learned.shape[1] - prefix
    side = int(round(num_learned ** 0.5))
    learned_grid = grid if num_learned == grid[0] * grid[1] else (side, side)
    if learned_grid[0] * learned_grid[1] != num_learned:
      raise ValueError(
          f"Learned pos_embed holds {num_learned} patches, not a square grid, and cannot be "
          f"resampled to the input grid {grid}.")
    patch_part = resize_pos_embed(learned[:, prefix:], learned_grid, grid)
    return jnp.concatenate([learned[:, :prefix], patch_part], axis=1)

  @nn.compact
  def __call__(self, images: jax.Array, *, keep_ids: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """Encodes images; with `keep_ids` only those patches, as MAE's `forward_encoder`.

    Args:
      images: [B, H, W, C] float, H and W multiples of `patch_size`.
      keep_ids: optional [B, n_keep] integer indices (row-major) of the patches to encode.
        Only those patches are embedded, with their position embeddings (MAE embeds all, adds,
        then gathers: the same sums); the CLS token (plus its position embedding) is prepended
        after, as in MAE.
      train: enables stochastic depth (needs the 'dropout' rng when drop_path_rate > 0).

    Returns:
      With a class token: dict with 'tokens' [B, 1+n, D] (final LayerNorm applied, CLS first),
      'cls' [B, D], 'mean' [B, D] (mean of normed patch tokens, CLS excluded) and 'pooled'
      (= 'cls' or 'mean'). Without one: 'tokens' [B, n, D] (the last block's output: timm's
      `norm` is the identity there) and 'mean' = 'pooled' = fc_norm(mean of 'tokens').
    """
    self._check_attributes()
    if images.ndim != 4:
      raise ValueError(f"VisionTransformer expects images [B, H, W, C], got {images.shape}.")
    batch, height, width, _ = images.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(
          f"Image size {height}x{width} is not divisible by patch size {self.patch_size}.")
    grid = (height // self.patch_size, width // self.patch_size)

    patches = patchify(images, self.patch_size)
    pos_embed = self._position_embedding(grid).astype(self.dtype)
    patch_pos_embed = pos_embed[:, self.num_prefix_tokens:]
    if keep_ids is not None:
      chex.assert_rank(keep_ids, 2)
      if keep_ids.shape[0] != batch:
        raise ValueError(f"keep_ids has batch {keep_ids.shape[0]} but images have {batch}.")
      if not jnp.issubdtype(keep_ids.dtype, jnp.integer):
        raise ValueError(f"keep_ids must be integer patch indices, got dtype {keep_ids.dtype}.")
      # The embedding is per patch, so gathering pixels and position embeddings first gives
      # MAE's embed-add-gather sums while embedding only the kept patches (a quarter in MAE).
      patches = masking.select_tokens(patches, keep_ids, self.token_gather)
      patch_pos_embed = masking.select_tokens(
          jnp.broadcast_to(patch_pos_embed, (batch,) + patch_pos_embed.shape[1:]), keep_ids,
          self.token_gather)
    x = PatchEmbed(self.patch_size, self.hidden_size, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="patch_embed")(patches)
    x = x + patch_pos_embed

    if self.class_token:
      cls_token = self.param("cls_token", nn.initializers.normal(0.02),
                             (1, 1, self.hidden_size), self.param_dtype)
      cls_token = cls_token.astype(self.dtype) + pos_embed[:, :1]
      x = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, self.hidden_size)), x],
                          axis=1)

    # timm's stochastic-depth decay rule: rate grows linearly with depth.
    x = run_blocks(self, x, train=train, depth=self.depth,
                   drop_path_rates=np.linspace(0.0, self.drop_path_rate, self.depth),
                   remat=self.remat, scan=self.scan_blocks, hidden_size=self.hidden_size,
                   num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                   param_dtype=self.param_dtype, attention_impl=self.attention_impl)
    norm = lambda name: nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name=name)
    if not self.class_token:
      # timm `forward_head` with global_pool='avg': average the tokens, then `fc_norm`.
      mean = jnp.mean(x, axis=1, dtype=jnp.float32).astype(x.dtype)
      pooled = norm("fc_norm")(mean)
      return {"tokens": x, "mean": pooled, "pooled": pooled}
    tokens = norm("norm")(x)

    cls = tokens[:, 0]
    mean = jnp.mean(tokens[:, 1:], axis=1, dtype=jnp.float32).astype(tokens.dtype)
    return {"tokens": tokens, "cls": cls, "mean": mean,
            "pooled": cls if self.pool == "cls" else mean}
