"""Labelled subsets of a training source: the 1% / 10% / N-per-class semi-supervised splits.

`config.data.train_subset` names the subset the training loop reads:

  ''              the whole split
  'fraction:F'    a class-balanced fraction F in (0, 1] (SimCLR / PAWS use 0.01 and 0.1)
  'per_class:N'   N records of every class

Indices come from `ssl_jax.data.splits` (a fixed random order per (seed, class)), so the same
seed gives the same subset on every host and in every run, the 1% subset lies inside the 10%
one, and the subset is a plain random-access source that grain shards and checkpoints like any
other (its `repr`, stored in the iterator state, names the spec, seed and size).
"""

from __future__ import annotations

import concurrent.futures

import numpy as np

from ssl_jax import errors
from ssl_jax.data import splits

SPEC_FORMS = ("'' (whole split)", "'fraction:F' with F in (0, 1]", "'per_class:N' with N >= 1")
_LABEL_READ_THREADS = 16


class SubsetError(errors.UserError, ValueError):
  """`data.train_subset` cannot be drawn from the training source (the message says why)."""


class SubsetSource:
  """Records `indices` of `source`, in that order; a random-access source itself."""

  def __init__(self, source, indices: np.ndarray, *, description: str):
    indices = np.asarray(indices, np.int64)
    if indices.ndim != 1 or indices.size == 0:
      raise ValueError(f"A subset needs a non-empty 1-D index array, got shape {indices.shape}.")
    if indices.min() < 0 or indices.max() >= len(source):
      raise ValueError(f"Subset indices must lie in [0, {len(source)}).")
    self._source = source
    self.indices = indices
    self.num_classes = getattr(source, "num_classes", None)
    self._description = description
    if hasattr(source, "get_batch"):  # Batch reads only where the parent has them.
      self.get_batch = self._get_batch

  def __len__(self) -> int:
    return int(self.indices.size)

  def __getitem__(self, index: int):
    return self._source[int(self.indices[index])]

  def _get_batch(self, indices):
    return self._source.get_batch(self.indices[np.asarray(indices, np.int64)])

  def __repr__(self) -> str:
    return f"SubsetSource({self._description}, num_records={len(self)}, of={self._source!r})"


def source_labels(source) -> np.ndarray:
  """Every record's label: the source's `labels` array when it has one, else read per record.

  Reading records decodes their images, which is fine for in-memory arrays and slow for large
  image folders; a source that knows its labels should expose them as `labels`.
  """
  labels = getattr(source, "labels", None)
  if labels is None:
    with concurrent.futures.ThreadPoolExecutor(_LABEL_READ_THREADS) as pool:
      labels = list(pool.map(lambda i: int(source[i]["label"]), range(len(source))))
  return np.asarray(labels, np.int64)


def parse_spec(spec: str) -> tuple[str, float] | None:
  """'' -> None; 'fraction:0.01' -> ('fraction', 0.01); 'per_class:10' -> ('per_class', 10)."""
  spec = (spec or "").strip()
  if not spec:
    return None
  kind, _, value = spec.partition(":")
  try:
    if kind == "fraction":
      fraction = float(value)
      if not 0.0 < fraction <= 1.0:
        raise ValueError
      return kind, fraction
    if kind == "per_class":
      count = int(value)
      if count < 1:
        raise ValueError
      return kind, count
  except ValueError:
    pass
  raise ValueError(f"Bad data.train_subset {spec!r}; valid forms: {', '.join(SPEC_FORMS)}, "
                   "e.g. 'fraction:0.01' for the 1% labelled split.")


def subset_indices(labels: np.ndarray, spec: str, seed: int) -> np.ndarray | None:
  """Sorted indices of the subset `spec` of `labels` drawn with `seed` (None: everything)."""
  parsed = parse_spec(spec)
  if parsed is None:
    return None
  labels = np.asarray(labels)
  if labels.size == 0 or labels.min() < 0:
    raise SubsetError(f"data.train_subset={spec!r} draws a class-balanced labelled subset, but "
                      "the training source has unlabelled records (label -1). Use a labelled "
                      "source or set data.train_subset=''.")
  kind, value = parsed
  try:
    if kind == "fraction":
      return splits.fraction_indices(labels, value, seed)
    return splits.per_class_indices(labels, int(value), seed)
  except ValueError as error:  # e.g. a class with fewer records than per_class:N asks for.
    raise SubsetError(f"data.train_subset={spec!r}: {error}") from None


def apply_subset(source, spec: str, seed: int):
  """`source` itself for spec '', else a `SubsetSource` of the subset drawn with `seed`."""
  if parse_spec(spec) is None:
    return source
  indices = subset_indices(source_labels(source), spec, seed)
  return SubsetSource(source, indices, description=f"{spec.strip()}, seed={seed}")
