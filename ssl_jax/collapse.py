"""Representation-collapse metrics, computed in the step, and the loop's one-time warning.

Two dimensionless numbers, logged as `train/collapse_*` by the methods that have them:

* `collapse_std` (methods with embeddings: SimCLR, MoCo v2/v3, BYOL, SimSiam, SwAV, PAWS,
  LeJEPA): the per-dimension batch std of the L2-normalised embeddings, averaged over the d
  dimensions and multiplied by sqrt(d). Embeddings spread uniformly over the unit sphere have
  std 1/sqrt(d) per dimension, so this is about 1 when spread and 0 when every image maps to one
  point (SimSiam, Chen & He 2021, Sec. 4.1 and Fig. 2, which plots the unscaled std against
  1/sqrt(d)).
* `collapse_teacher_entropy` (DINO): the entropy of the centred, sharpened teacher
  distribution over the K prototypes, divided by log K: 0 when one dimension dominates, 1 when
  the output is uniform (Caron et al. 2021, Sec. 5.3 and Fig. 7: without centring the entropy
  falls to 0; without sharpening it rises to log K).

`Monitor` compares the logged values with `config.collapse.min_std` and
`config.collapse.min_teacher_entropy` (0 disables a check) and logs one warning line per metric
and run the first time one falls below its threshold.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

STD = "train/collapse_std"
TEACHER_ENTROPY = "train/collapse_teacher_entropy"


def embedding_std(embeddings: jax.Array) -> jax.Array:
  """sqrt(d) x mean over dims of the batch std of the L2-normalised [N, d] embeddings (~1
  spread, 0 collapsed)."""
  x = embeddings.astype(jnp.float32)
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  return jnp.mean(jnp.std(x, axis=0)) * jnp.sqrt(jnp.float32(x.shape[-1]))


def normalised_entropy(probs: jax.Array) -> jax.Array:
  """Mean over rows of H(p) / log K for [..., K] probabilities (0 one-hot, 1 uniform)."""
  probs = probs.astype(jnp.float32)
  entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-12)), axis=-1)
  return jnp.mean(entropy) / jnp.log(jnp.float32(probs.shape[-1]))


class Monitor:
  """Warns once per metric when a logged collapse metric falls below its threshold."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._thresholds = {STD: float(config.collapse.min_std),
                        TEACHER_ENTROPY: float(config.collapse.min_teacher_entropy)}
    self._warned: set[str] = set()

  def check(self, step: int, scalars: Mapping[str, float]) -> list[str]:
    """Logs (and returns) the warnings newly due at `step`."""
    lines = []
    for name, threshold in self._thresholds.items():
      if name in self._warned or name not in scalars or threshold <= 0:
        continue
      value = float(scalars[name])
      if value < threshold:
        self._warned.add(name)
        key = "min_std" if name == STD else "min_teacher_entropy"
        lines.append(f"Possible collapse at step {step}: {name[6:]} = {value:.4f} < "
                     f"collapse.{key} = {threshold:g} (docs/methods.md, 'Collapse metrics'); "
                     "check the lr, the augmentations and the method's anti-collapse terms.")
        logging.warning("%s", lines[-1])
    return lines
