"""Few-shot linear evaluation by closed-form ridge regression, as in big_vision.

Follows google-research/big_vision `big_vision/evaluators/fewshot_lsr.py` (used for the few-shot
numbers of ViT, Dosovitskiy et al. 2021, Sec. 4.1, and of later big_vision papers):

  * draw `shots` training images per class (one permutation per class and seed, shots taken as
    prefixes, so the 5-shot support is inside the 10-shot one);
  * whiten every feature with the support set's mean and std (+1e-5);
  * append a constant feature of 100 as the bias, so its weight is almost unregularised;
  * regress targets 2 * one_hot - 1 (values in {-1, +1}) by least squares with an L2 penalty:
        W = (X^T X + l2 I)^{-1} X^T Y        (N >= D, primal)
          = X^T (X X^T + l2 I)^{-1} Y        (N < D, dual; the same W by the push-through identity)
    both computed from one eigendecomposition, so every l2 costs only a rescaling;
  * predict argmax of x W on the test set; report accuracy.

big_vision reports one fixed l2 (2^10) for seeds 0..2. Here several l2 values are fitted; for each
seed the one with the best accuracy on a class-balanced hold-out of the train split (disjoint from
the support; ties go to the stronger l2) is chosen, and the test accuracy at that l2 is reported
as mean and std over seeds, alongside the test accuracy at every l2.

The solve runs in float64 numpy on the host (see `ridge_solver`); the support set is small. The
predictions on the (possibly large, possibly sharded) test set and hold-out run under jit on the
devices, at HIGHEST matmul precision (TPU default precision would round to bfloat16). Only the
support rows, labels and masks come to the host.
"""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.data import splits

BIAS_FEATURE = 100.0
_HIGHEST = jax.lax.Precision.HIGHEST


class RidgeSolver(NamedTuple):
  """Everything about one support set that does not depend on the L2 strength (float64, host).

  W(l2) = left @ diag(1 / (eigenvalues + l2)) @ right, where (q, eigenvalues) diagonalise
  X^T X (primal: left = q, right = q^T X^T Y) or X X^T (dual: left = X^T q, right = q^T Y).
  """
  mean: np.ndarray         # [D] support mean.
  std: np.ndarray          # [D] support std + 1e-5.
  eigenvalues: np.ndarray  # [min(N, D + 1)]
  left: np.ndarray         # [D + 1, min(N, D + 1)]
  right: np.ndarray        # [min(N, D + 1), C]


def ridge_design(x: Any, mean: Any, std: Any) -> Any:
  """The regression inputs: features whitened by (mean, std), then the constant bias column.

  Works on numpy (the solve) and jax arrays (the predictions) alike.
  """
  xp = jnp if isinstance(x, jax.Array) else np
  whitened = (x - mean) / std
  return xp.pad(whitened, ((0, 0), (0, 1)), constant_values=BIAS_FEATURE)


def ridge_solver(support_x: np.ndarray, support_y: np.ndarray, *,
                 num_classes: int) -> RidgeSolver:
  """Whitens the support set and diagonalises its Gram matrix (big_vision `_precompute_cache`).

  Computed in float64 on the host. big_vision moves this step to the CPU too, in float32; but the
  bias column of 100 gives the Gram matrix an eigenvalue of 10^4 N, and float32 then loses about
  1% of the weights on a 1000 x 384 support set. The support set is small (shots x classes rows),
  so float64 costs little.
  """
  support_x = np.asarray(support_x, np.float64)
  mean = support_x.mean(axis=0)
  std = support_x.std(axis=0) + 1e-5
  x = ridge_design(support_x, mean, std)
  targets = 2.0 * np.eye(num_classes)[np.asarray(support_y)] - 1.0
  num_points, dim = x.shape
  if num_points >= dim:
    eigenvalues, q = np.linalg.eigh(x.T @ x)
    left, right = q, q.T @ (x.T @ targets)
  else:
    eigenvalues, q = np.linalg.eigh(x @ x.T)
    left, right = x.T @ q, q.T @ targets
  return RidgeSolver(mean, std, eigenvalues, left, right)


def ridge_weights(solver: RidgeSolver, l2_reg: float) -> np.ndarray:
  """[D + 1, C] ridge weights for strength `l2_reg`; the last row multiplies the bias feature."""
  return (solver.left / (solver.eigenvalues + l2_reg)[None, :]) @ solver.right


@jax.jit
def _correct(mean, std, weights, x, labels, mask):
  """Number of masked-in rows of x whose argmax ridge score is the label."""
  scores = jnp.matmul(ridge_design(x.astype(jnp.float32), mean, std), weights,
                      precision=_HIGHEST)
  return jnp.sum((jnp.argmax(scores, axis=1) == labels) & mask)


def fewshot_eval(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, num_classes: int,
                 shots: tuple[int, ...] = (1, 5, 10, 25), seeds: tuple[int, ...] = (0, 1, 2),
                 l2_regs: tuple[float, ...] = (2.0**4, 2.0**7, 2.0**10, 2.0**13),
                 holdout_fraction: float = 0.1, train_mask: Any = None,
                 test_mask: Any = None) -> dict[str, float]:
  """Few-shot accuracies of ridge classifiers on frozen features.

  Args:
    train_x, test_x: [N, D] features (numpy or jax.Array, possibly sharded).
    train_y, test_y: [N] integer labels in [0, num_classes).
    num_classes: number of classes; every class must have enough train samples for the largest
      shot count outside the hold-out.
    shots: support sizes per class.
    seeds: support draws (and hold-out draws); results are mean / std over them.
    l2_regs: ridge strengths; big_vision's default is 2^10.
    holdout_fraction: class-balanced share of the train split used to choose l2 per seed.
    train_mask, test_mask: [N] 0/1, 0 for padding records, which are never used.

  Returns:
    Flat dict of floats, for every s in `shots`:
      '{s}shot/top1', '{s}shot/top1_std': test accuracy at the l2 chosen on the hold-out;
      '{s}shot/l2_{l2:g}/top1', '{s}shot/l2_{l2:g}/top1_std': test accuracy at each l2;
      '{s}shot/seed_{seed}/l2': the l2 chosen for each seed.
  """
  if not shots or min(shots) < 1:
    raise ValueError(f"shots must be a non-empty sequence of positive ints, got {shots}.")
  if not seeds:
    raise ValueError("seeds must not be empty.")
  if not l2_regs or min(l2_regs) <= 0:
    raise ValueError(f"l2_regs must be a non-empty sequence of positive values, got {l2_regs}.")
  train_x, train_labels, train_mask = splits.checked_split(train_x, train_y, train_mask, "train",
                                                           num_classes)
  test_x, test_labels, test_mask = splits.checked_split(test_x, test_y, test_mask, "test",
                                                        num_classes)
  if train_x.shape[1] != test_x.shape[1]:
    raise ValueError(f"train_x and test_x differ in width ({train_x.shape[1]} vs "
                     f"{test_x.shape[1]}); they must come from the same encoder.")
  records = np.flatnonzero(train_mask)
  test_count = int(test_mask.sum())
  test_labels, test_mask = jnp.asarray(test_labels), jnp.asarray(test_mask)

  chosen = {s: [] for s in shots}
  per_l2 = {(s, l2): [] for s in shots for l2 in l2_regs}
  for seed in seeds:
    _, held_out = splits.holdout_split(train_labels[records], holdout_fraction, seed)
    val_x = splits.select_rows(train_x, records[held_out])
    val_labels = jnp.asarray(train_labels[records[held_out]])
    val_mask = jnp.ones(val_labels.shape, bool)
    for num_shots in shots:
      # Same seed for every shot count: supports are nested prefixes, as in big_vision.
      support = records[splits.per_class_indices(
          train_labels[records], num_shots, seed, exclude=held_out, num_classes=num_classes)]
      support_x = splits.host_array(splits.select_rows(train_x, support))
      solver = ridge_solver(support_x, train_labels[support], num_classes=num_classes)
      mean, std = np.float32(solver.mean), np.float32(solver.std)
      best_val, best_test, best_l2 = -1.0, None, None
      # Strongest first, so that on a hold-out tie the strongest regularisation is kept.
      for l2 in sorted(l2_regs, reverse=True):
        weights = np.float32(ridge_weights(solver, l2))
        score = functools.partial(_correct, mean, std, weights)
        test_top1 = int(score(test_x, test_labels, test_mask)) / test_count
        val_top1 = int(score(val_x, val_labels, val_mask)) / val_labels.shape[0]
        per_l2[num_shots, l2].append(test_top1)
        if val_top1 > best_val:
          best_val, best_test, best_l2 = val_top1, test_top1, l2
      chosen[num_shots].append((best_test, best_l2))

  results = {}
  for num_shots in shots:
    accuracies = [acc for acc, _ in chosen[num_shots]]
    results[f"{num_shots}shot/top1"] = float(np.mean(accuracies))
    results[f"{num_shots}shot/top1_std"] = float(np.std(accuracies))
    for l2 in l2_regs:
      results[f"{num_shots}shot/l2_{l2:g}/top1"] = float(np.mean(per_l2[num_shots, l2]))
      results[f"{num_shots}shot/l2_{l2:g}/top1_std"] = float(np.std(per_l2[num_shots, l2]))
    for seed, (_, l2) in zip(seeds, chosen[num_shots]):
      results[f"{num_shots}shot/seed_{seed}/l2"] = float(l2)
  return results
