"""PAWS: soft nearest-neighbour predictions over a labelled support set, sharpened targets and
the mean-entropy-maximisation regulariser (Assran et al. 2021, "Semi-Supervised Learning of
Visual Features by Non-Parametrically Predicting View Assignments with Support Samples").

Follows facebookresearch/suncet `src/losses.py` (`init_paws_loss`) and `src/paws_train.py`
(`make_labels_matrix`, the view pairing); equation numbers are the paper's:

* labels (`support_label_matrix`): the support set holds `classes` classes, and its label matrix
  has one column per class OF THE STEP (not of the dataset), one-hot with label smoothing
  `y (1 - s) + s / classes` (suncet `make_labels_matrix`, s = 0.1);
* soft nearest neighbours (`soft_nn`, Eq. 1): p = softmax(cos(z, z_S) / tau) @ y_S, tau = 0.1;
* sharpening (`sharpen`, Eq. 2): rho(p)_k = p_k^(1/T) / sum_j p_j^(1/T), T = 0.25;
* targets (`paws_targets`): each global view's target is the sharpened prediction of the OTHER
  global view; every local view's target is the mean of the two global views' targets; entries
  below 1e-4 are zeroed (suncet's "numerical stability" step, without renormalising);
* loss (`paws_loss`, Eq. 3 + 4): mean over anchors of H(target, p) minus the entropy of the
  mean SHARPENED anchor prediction, H(mean rho(p)) (me-max; suncet `losses.py`: `rloss -=
  torch.sum(torch.log(avg_probs**(-avg_probs)))`), so the loss can be negative.

Everything works on global arrays inside jit: the support set and the mean for me-max span all
devices, as suncet's AllGather / AllReduce make them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl_jax.losses import contrastive

# suncet zeroes target probabilities below this before the cross-entropy.
TARGET_FLOOR = 1e-4


def support_label_matrix(labels: jax.Array, classes: int, smoothing: float) -> jax.Array:
  """[N, classes] smoothed one-hot labels of a sample-major support set.

  Column c is the class of row c: the support stream (ssl_jax.data.streams, kind `support`)
  orders its rows sample-major, so the first `classes` rows hold each class of the step once
  and row r holds class labels[r % classes]. Rows of several support views are stacked whole
  support sets, so the same holds for them.
  """
  if not 0.0 <= smoothing < 1.0:
    raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}.")
  if labels.shape[0] % classes:
    raise ValueError(f"{labels.shape[0]} support rows are not whole sets of {classes} classes.")
  one_hot = (labels[:, None] == labels[None, :classes]).astype(jnp.float32)
  return one_hot * (1.0 - smoothing) + smoothing / classes


def soft_nn(queries: jax.Array, supports: jax.Array, support_labels: jax.Array,
            temperature: float) -> jax.Array:
  """Soft nearest-neighbour class probabilities [Q, C] (PAWS Eq. 1, suncet `snn`).

  Args:
    queries: [Q, D] embeddings (any norm; L2-normalised here).
    supports: [N, D] support embeddings (L2-normalised here).
    support_labels: [N, C] label distributions of the supports (rows sum to 1).
    temperature: tau; the cosine similarities are divided by it.
  """
  queries = contrastive.l2_normalize(queries.astype(jnp.float32))
  supports = contrastive.l2_normalize(supports.astype(jnp.float32))
  weights = jax.nn.softmax(queries @ supports.T / temperature, axis=-1)
  return weights @ support_labels


def sharpen(probs: jax.Array, temperature: float) -> jax.Array:
  """rho(p) = p^(1/T) / sum p^(1/T) over the last axis (PAWS Eq. 2)."""
  sharp = probs ** (1.0 / temperature)
  return sharp / jnp.sum(sharp, axis=-1, keepdims=True)


def paws_targets(global_target_probs: jax.Array, num_local: int,
                 sharpen_temperature: float) -> jax.Array:
  """Targets [(2 + num_local) B, C] for the anchors, crop-major like the anchors.

  Args:
    global_target_probs: [2B, C] soft-NN predictions of the target branch for global view 1
      (rows :B) and global view 2 (rows B:); no gradient flows through the result.
  """
  probs = jax.lax.stop_gradient(global_target_probs)
  batch = probs.shape[0] // 2
  if probs.shape[0] != 2 * batch:
    raise ValueError(f"PAWS needs the predictions of exactly 2 global views, got "
                     f"{probs.shape[0]} rows (odd).")
  targets = sharpen(probs, sharpen_temperature)
  view1, view2 = targets[:batch], targets[batch:]
  # The pairing: view 1 is taught by view 2 and vice versa; local views by both.
  parts = [view2, view1] + [0.5 * (view1 + view2)] * num_local
  targets = jnp.concatenate(parts, axis=0)
  return jnp.where(targets < TARGET_FLOOR, 0.0, targets)


def cross_entropy(targets: jax.Array, probs: jax.Array) -> jax.Array:
  """Mean over rows of H(targets, probs) = -sum_k t_k log p_k (0 log 0 = 0)."""
  log_probs = jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))
  return jnp.mean(jnp.sum(-targets * log_probs, axis=-1))


def mean_entropy(probs: jax.Array, sharpen_temperature: float) -> jax.Array:
  """H(mean_i rho(p_i)): the entropy me-max maximises (PAWS Eq. 4, suncet `me_max`)."""
  mean = jnp.mean(sharpen(probs, sharpen_temperature), axis=0)
  return -jnp.sum(mean * jnp.log(jnp.maximum(mean, jnp.finfo(jnp.float32).tiny)))


def paws_loss(anchors: jax.Array, anchor_supports: jax.Array, targets_from: jax.Array,
              target_supports: jax.Array, support_labels: jax.Array, *, num_local: int,
              temperature: float = 0.1, sharpen_temperature: float = 0.25,
              me_max: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The PAWS objective on one step's embeddings.

  Args:
    anchors: [(2 + num_local) B, D] anchor-branch embeddings (suncet `z`: after the prediction
      head when there is one), crop-major: global view 1, global view 2, then the local views.
    anchor_supports: [N, D] the support images' anchor-branch embeddings.
    targets_from: [2B, D] target-branch embeddings (suncet `h`, before the prediction head) of
      global view 1 then global view 2; detached here.
    target_supports: [N, D] the support images' target-branch embeddings; detached here.
    support_labels: [N, C] `support_label_matrix`.
    num_local: local views per image.

  Returns:
    (loss, metrics): loss = H(targets, p) - H(mean rho(p)) (the second term only if me_max);
    metrics `paws_ce`, `me_max_entropy` and `target_max` (the mean largest target probability:
    1 means confident targets, 1 / C collapsed ones).
  """
  num_views = 2 + num_local
  if anchors.shape[0] * 2 != targets_from.shape[0] * num_views:
    raise ValueError(f"{anchors.shape[0]} anchors are not {num_views} views of the "
                     f"{targets_from.shape[0] // 2} images of the 2 target views.")
  probs = soft_nn(anchors, anchor_supports, support_labels, temperature)
  target_probs = soft_nn(jax.lax.stop_gradient(targets_from),
                         jax.lax.stop_gradient(target_supports), support_labels, temperature)
  targets = paws_targets(target_probs, num_local, sharpen_temperature)
  ce = cross_entropy(targets, probs)
  entropy = mean_entropy(probs, sharpen_temperature)
  loss = ce - entropy if me_max else ce
  return loss, {"paws_ce": ce, "me_max_entropy": entropy,
                "target_max": jnp.mean(jnp.max(targets, axis=-1))}
