"""Deterministic, class-balanced labelled subsets (few-shot supports, 1% / 10% labels, hold-outs).

Every subset is drawn the same way: each class gets its own random order of its indices, fixed by
`(seed, class)` alone, and a subset takes a prefix of each class's order after dropping the indices
in `exclude`. Consequences, all relied on by the evaluators and tested:

* the same `(labels, seed, exclude)` always gives the same indices, on any host;
* subsets are nested for one seed and one `exclude`: the 1% subset is inside the 10% subset, the
  5-shot support inside the 10-shot support (the same prefix property big_vision's few-shot
  evaluator gets from one permutation per class);
* a class's order does not depend on the other classes, so adding a class leaves the others alone;
* nothing in `exclude` is ever returned.

Indices come back sorted ascending, as int64 numpy arrays. Labels may be numpy or jax arrays,
including arrays sharded across hosts; `host_array` gathers them.
"""
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np


def host_array(x: Any) -> np.ndarray:
  """Returns `x` as a numpy array on this host, gathering a multi-host jax.Array if needed.

  Labels and masks are small, so the evaluators bring them to the host to draw splits, while the
  large feature matrices stay on the devices (see `select_rows`).
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def checked_split(x: Any, y: Any, mask: Any, split: str,
                  num_classes: int) -> tuple[Any, np.ndarray, np.ndarray]:
  """Validates one split of frozen features for an evaluator (linear probe, few-shot):
  `x` [N, D], `y` [N] labels in [0, num_classes), `mask` [N] or None (all rows in). Returns
  (features as a jax.Array, host int32 labels, host bool mask); `split` names it in errors."""
  if x.ndim != 2:
    raise ValueError(f"{split}_x must be [N, D] features, got shape {x.shape}.")
  labels = host_array(y)
  if labels.shape != (x.shape[0],):
    raise ValueError(f"{split}_y must have shape [{x.shape[0]}] to match {split}_x, got "
                     f"{labels.shape}.")
  mask = np.ones(labels.shape, bool) if mask is None else host_array(mask).astype(bool)
  if mask.shape != labels.shape:
    raise ValueError(f"{split}_mask must have shape {labels.shape}, got {mask.shape}.")
  if not mask.any():
    raise ValueError(f"{split} split has no (unmasked) records.")
  if labels[mask].min() < 0 or labels[mask].max() >= num_classes:
    raise ValueError(f"{split}_y has labels outside [0, {num_classes}); check num_classes.")
  x = jnp.asarray(x) if isinstance(x, np.ndarray) else x
  return x, labels.astype(np.int32), mask


@jax.jit
def _take_rows(x, indices):
  return jnp.take(x, indices, axis=0)


def select_rows(x: Any, indices: np.ndarray) -> jax.Array:
  """Rows `indices` of `x` (numpy or a possibly sharded jax.Array), computed on the devices.

  The gather runs under jit so it also works on an array spread over several hosts; the result
  stays on the devices.
  """
  return _take_rows(jnp.asarray(x) if isinstance(x, np.ndarray) else x,
                    np.asarray(indices, np.int32))


def _check_labels(labels: Any, num_classes: int | None) -> np.ndarray:
  labels = host_array(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be a 1-D array of class ids, got shape {labels.shape}.")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}; cast them with "
                     "labels.astype(np.int32).")
  if labels.size and labels.min() < 0:
    raise ValueError(f"labels must be >= 0, found {labels.min()}.")
  if num_classes is not None and labels.size and labels.max() >= num_classes:
    raise ValueError(f"found label {labels.max()} but num_classes={num_classes}; labels must "
                     "lie in [0, num_classes).")
  return labels.astype(np.int64)


def _class_orders(labels: np.ndarray, seed: int, exclude: Iterable[int] | None,
                  num_classes: int | None) -> dict[int, tuple[np.ndarray, int]]:
  """For each class: (its indices outside `exclude` in the seeded order, its total count)."""
  excluded = np.zeros(labels.shape[0], bool)
  if exclude is not None:
    exclude = np.asarray(list(exclude) if not isinstance(exclude, np.ndarray) else exclude,
                         np.int64).reshape(-1)
    if exclude.size and (exclude.min() < 0 or exclude.max() >= labels.shape[0]):
      raise ValueError(f"exclude holds indices outside [0, {labels.shape[0]}); it must index "
                       "into labels.")
    excluded[exclude] = True
  classes = range(num_classes) if num_classes is not None else np.unique(labels).tolist()
  # Group indices by class once (a stable sort keeps each group ascending) rather than scanning
  # all labels per class, which is slow for 1000 classes x 1.28M images.
  by_class = np.argsort(labels, kind="stable")
  starts = np.searchsorted(labels[by_class], classes, side="left")
  ends = np.searchsorted(labels[by_class], classes, side="right")
  orders = {}
  for cls, start, end in zip(classes, starts, ends):
    members = by_class[start:end]
    # One generator per (seed, class): a class's order ignores every other class.
    order = np.random.default_rng([seed, cls]).permutation(members)
    orders[cls] = (order[~excluded[order]], members.size)
  return orders


def _round_share(fraction: float, total: int) -> int:
  # Half-up rounding (not Python's round-half-even) so a share of 2.5 is 3 whatever its parity.
  return max(1, int(np.floor(fraction * total + 0.5)))


def _take_prefixes(orders, counts: dict[int, int], what: str) -> np.ndarray:
  chosen = []
  for cls, (available, _) in orders.items():
    need = counts[cls]
    if available.size < need:
      raise ValueError(
          f"class {cls} has only {available.size} samples available (after `exclude`) but "
          f"{what} needs {need}; use fewer samples per class, a smaller exclusion set, or a "
          "larger split.")
    chosen.append(available[:need])
  if not chosen:
    return np.zeros([0], np.int64)
  return np.sort(np.concatenate(chosen))


def per_class_indices(labels: Any, n_per_class: int, seed: int, *,
                      exclude: Iterable[int] | None = None,
                      num_classes: int | None = None) -> np.ndarray:
  """`n_per_class` indices of every class, drawn by `seed` (few-shot supports).

  Args:
    labels: [N] integer class ids.
    n_per_class: how many samples to take from each class (>= 1).
    seed: the draw; equal seeds give equal subsets.
    exclude: indices that must not be chosen (e.g. a validation hold-out).
    num_classes: if given, every class in [0, num_classes) must be able to supply
      `n_per_class` samples, including classes absent from `labels`; otherwise the classes are
      those present in `labels`.

  Returns:
    Sorted int64 indices, `n_per_class` per class.

  Raises:
    ValueError: if a class has fewer than `n_per_class` samples outside `exclude`.
  """
  if int(n_per_class) != n_per_class or n_per_class < 1:
    raise ValueError(f"n_per_class must be a positive integer, got {n_per_class}.")
  labels = _check_labels(labels, num_classes)
  orders = _class_orders(labels, seed, exclude, num_classes)
  return _take_prefixes(orders, {cls: int(n_per_class) for cls in orders},
                        f"n_per_class={n_per_class}")


def fraction_indices(labels: Any, fraction: float, seed: int, *,
                     exclude: Iterable[int] | None = None,
                     num_classes: int | None = None) -> np.ndarray:
  """A class-balanced `fraction` of the data (the 1% / 10% semi-supervised label subsets).

  Class c contributes max(1, round_half_up(fraction * count_c)) samples, where count_c counts
  class c in all of `labels` (excluded indices included), so the subset is a fraction of the
  dataset rather than of what is left after `exclude`. For one seed and one `exclude`, the subset
  for a smaller fraction lies inside the subset for a larger one.

  Args:
    labels: [N] integer class ids.
    fraction: in (0, 1].
    seed: the draw; equal seeds give equal subsets.
    exclude: indices that must not be chosen.
    num_classes: if given, every class in [0, num_classes) must be present.

  Returns:
    Sorted int64 indices.

  Raises:
    ValueError: if a class (after `exclude`) cannot supply its share.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must lie in (0, 1], got {fraction}; for 1% pass 0.01.")
  labels = _check_labels(labels, num_classes)
  orders = _class_orders(labels, seed, exclude, num_classes)
  counts = {cls: _round_share(fraction, total) for cls, (_, total) in orders.items()}
  return _take_prefixes(orders, counts, f"fraction={fraction}")


def holdout_split(labels: Any, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits indices into (kept, held_out), the held-out part a class-balanced fraction.

  Used to choose evaluator hyperparameters without looking at the test split. Every class keeps
  at least one sample on each side.

  Returns:
    (kept, held_out): disjoint sorted int64 index arrays covering range(len(labels)).

  Raises:
    ValueError: if a class has fewer than 2 samples, so it cannot be on both sides.
  """
  if not 0.0 < holdout_fraction < 1.0:
    raise ValueError(f"holdout_fraction must lie in (0, 1), got {holdout_fraction}.")
  labels = _check_labels(labels, None)
  orders = _class_orders(labels, seed, None, None)
  for cls, (_, total) in orders.items():
    if total < 2:
      raise ValueError(f"class {cls} has {total} sample; a hold-out split needs at least 2 per "
                       "class so that both parts see every class.")
  counts = {cls: min(total - 1, _round_share(holdout_fraction, total))
            for cls, (_, total) in orders.items()}
  held_out = _take_prefixes(orders, counts, f"holdout_fraction={holdout_fraction}")
  kept = np.setdiff1d(np.arange(labels.shape[0]), held_out)
  return kept, held_out
