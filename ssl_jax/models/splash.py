"""TPU flash attention: jax's Pallas splash-attention kernel, for `model.attention_impl='splash'`.

Splash attention (jax.experimental.pallas.ops.tpu.splash_attention, the kernel MaxText trains
with) computes softmax(q k^T / sqrt(d)) v (Vaswani et al., 2017, eq. 1) block by block in the
TPU's vector memory, as FlashAttention does (Dao et al., 2022, Algorithm 1): the [T, T]
logits and weights never reach HBM, forward or backward. That is the cost the plain path pays
most for in MAE's decoder (197 tokens, 16 heads of 32: its float32 softmax passes were the
costliest fusions of an H200 profile, docs/performance.md).

Three things the kernel needs that a ViT does not give it:
  * lengths in whole 128-token blocks (TPU lanes): tokens are zero-padded to the next multiple
    of 128 and the padding put in its own segment (`SegmentIds`), so real queries attend real
    keys only and the padded rows, dropped afterwards, attend each other and stay finite;
  * one example at a time ([heads, T, head_dim]): vmapped over the batch;
  * its own sharding: XLA's partitioner cannot split a Pallas call, so under a multi-device
    mesh (`parallel.current_mesh()`, set while the train step and the evaluators' feature
    functions trace) the batch is `shard_map`ped over the mesh's batch axes, each device running
    the kernel on its own rows, as MaxText does.
The scale is folded into q before the kernel (it has no scale argument), again as MaxText.

Off a TPU the kernel runs in Pallas' interpreter (`interpret=True`): exact but slow, for the CPU
tests only; `registry.vit_speed_options` turns 'splash' into 'xla' off a TPU for real runs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ssl_jax import parallel

# TPU vector lanes: the kernel's sequence blocks are multiples of 128 tokens.
SPLASH_LENGTH_MULTIPLE = 128
# Largest first: fewer, larger blocks keep the matrix unit busier (MaxText's default is 512).
_BLOCK_CHOICES = (512, 256, 128)


def padded_length(num_tokens: int) -> int:
  """`num_tokens` rounded up to whole kernel blocks."""
  return -(-num_tokens // SPLASH_LENGTH_MULTIPLE) * SPLASH_LENGTH_MULTIPLE


def _splash_modules():
  # Imported on first use, so that the ViT imports wherever jax lacks Pallas' TPU ops.
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel, splash_attention_mask)
  return splash_attention_kernel, splash_attention_mask


@functools.lru_cache(maxsize=None)
def _kernel(length: int, num_heads: int, interpret: bool):
  """The splash kernel for one example of `num_heads` x `length` tokens, no mask but segments."""
  splash_attention_kernel, splash_attention_mask = _splash_modules()
  block = next(size for size in _BLOCK_CHOICES if length % size == 0)
  block_sizes = splash_attention_kernel.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block,
      block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
      block_q_dq=block, block_kv_dq=block)
  mask = splash_attention_mask.MultiHeadMask(
      [splash_attention_mask.FullMask((length, length)) for _ in range(num_heads)])
  # The kernel holds its mask metadata as arrays: made concrete here, not as tracers of the
  # trace that first asks for the kernel, so the cached kernel serves every later trace.
  with jax.ensure_compile_time_eval():
    return splash_attention_kernel.make_splash_mha(
        mask, block_sizes=block_sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_attention(query, key, value, *, scale: float, num_tokens: int, interpret: bool):
  """Splash attention of [b, T, heads, head_dim] rows held by one device (or the whole batch)."""
  length = padded_length(num_tokens)
  widths = ((0, 0), (0, length - num_tokens), (0, 0), (0, 0))
  # [b, T, heads, d] -> [b, heads, T_padded, d], the kernel's layout.
  to_kernel = lambda t: jnp.pad(t, widths).transpose(0, 2, 1, 3)
  query = to_kernel(query * jnp.asarray(scale, query.dtype))
  key, value = to_kernel(key), to_kernel(value)
  segment_ids = None
  if length != num_tokens:
    segments = (jnp.arange(length) >= num_tokens).astype(jnp.int32)  # 0 real, 1 padding
    segment_ids = _splash_modules()[0].SegmentIds(q=segments, kv=segments)
  kernel = _kernel(length, query.shape[1], interpret)
  out = jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=segment_ids))(query, key, value)
  return out.transpose(0, 2, 1, 3)[:, :num_tokens]


def splash_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, scale: float,
                     interpret: bool | None = None) -> jax.Array:
  """softmax(scale * q k^T) v over [B, T, heads, head_dim] self-attention inputs, by the splash
  kernel; [B, T, heads, head_dim] out, in q's dtype.

  `interpret` (default: off a TPU) runs the kernel in Pallas' interpreter. Under a
  `parallel.on_mesh` mesh of more than one device each device runs its own rows; a batch that
  does not split evenly over the mesh (the loop's batches always do) is attended whole, where
  XLA places it."""
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  attend = functools.partial(_local_attention, scale=scale, num_tokens=query.shape[1],
                             interpret=interpret)
  mesh = parallel.current_mesh()
  if mesh is None or mesh.size == 1 or query.shape[0] % mesh.size:
    return attend(query, key, value)
  rows = P(parallel.BATCH_AXES)
  # check_vma=False: the kernel's custom VJP carries no varying-axes annotations.
  return jax.shard_map(attend, mesh=mesh, in_specs=(rows, rows, rows), out_specs=rows,
                       check_vma=False)(query, key, value)
