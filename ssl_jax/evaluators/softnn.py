"""Soft nearest-neighbour classification over a labelled bank: PAWS's evaluation.

Assran et al. 2021 (Sec. 5, suncet `snn_eval.py`) classify a test image by the soft-NN
classifier the method trains (`ssl_jax.losses.paws.soft_nn`): its L2-normalised embedding is
compared with those of the LABELLED training images (the 1% / 10% / 4000-label subset, not the
whole split), p = softmax(cos / tau) @ one_hot(labels), tau = 0.1, and the predicted class is
argmax p. No parameter is fitted.

The bank and the test features may be global arrays sharded on the batch axis, as
`knn.extract_features` returns them; padding rows (mask False) take no weight.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssl_jax.losses import contrastive


@functools.partial(jax.jit, static_argnames=("temperature",))
def _chunk_probs(test_chunk, bank, bank_one_hot, bank_mask, *, temperature):
  similarity = jnp.matmul(contrastive.l2_normalize(test_chunk), bank.T,
                          precision=jax.lax.Precision.HIGHEST) / temperature
  similarity = jnp.where(bank_mask[None, :], similarity, -jnp.inf)
  return jax.nn.softmax(similarity, axis=-1) @ bank_one_hot


def soft_nn_eval(bank_features: jax.Array, bank_labels: jax.Array, test_features: jax.Array,
                 test_labels: jax.Array, *, num_classes: int, temperature: float = 0.1,
                 bank_mask: jax.Array | None = None, test_mask: jax.Array | None = None,
                 chunk_size: int = 1024) -> dict[str, float]:
  """Top-1 (fraction) of soft-NN predictions of the test set against the labelled bank."""
  if temperature <= 0:
    raise ValueError(f"soft-NN temperature must be > 0, got {temperature}.")
  bank_mask = jnp.ones(bank_labels.shape, bool) if bank_mask is None else bank_mask
  test_mask = jnp.ones(test_labels.shape, bool) if test_mask is None else test_mask
  if not bool(jnp.any(bank_mask)):
    raise ValueError("The soft-NN bank is empty: the labelled subset has no records.")
  bank = contrastive.l2_normalize(bank_features.astype(jnp.float32))
  one_hot = jax.nn.one_hot(bank_labels, num_classes, dtype=jnp.float32)
  correct, count = 0, 0
  for start in range(0, test_features.shape[0], chunk_size):
    chunk = test_features[start:start + chunk_size].astype(jnp.float32)
    probs = _chunk_probs(chunk, bank, one_hot, bank_mask, temperature=float(temperature))
    mask = test_mask[start:start + chunk_size]
    hits = (jnp.argmax(probs, axis=-1) == test_labels[start:start + chunk_size]) & mask
    correct += int(jnp.sum(hits))
    count += int(jnp.sum(mask))
  return {"top1": correct / max(count, 1)}
