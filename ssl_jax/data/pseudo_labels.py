"""The labels file of self-training: a teacher's predictions for every record of an image source.

`python -m ssl_jax.label` writes it; the `pseudo_labeled` data stream (`ssl_jax.data.streams`)
reads it beside the same source. One `.npz` holding, in the source's record order:

* `soft`: float32 [N, C], the teacher's class probabilities (averaged over the test-time
  transformations when it ensembles: data distillation, Radosavovic et al. 2018);
* `hard`: int32 [N], argmax of `soft`;
* `confidence`: float32 [N], max of `soft`;
* `meta`: a JSON string: the teacher's workdir, method and checkpoint step, the labelled
  `source` spec and `split`, the `transforms` and `scales`, and `records` (N).

`select` is Noisy Student's data selection (Xie et al. 2020, Sec. 3.1 / App. A.2): drop the
records the teacher is unsure of, then balance the classes to `per_class` records each.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from etils import epath

from ssl_jax.data import sources

ARRAYS = ("soft", "hard", "confidence", "meta")


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
  soft: np.ndarray        # float32 [N, C]
  hard: np.ndarray        # int32 [N]
  confidence: np.ndarray  # float32 [N]
  meta: dict[str, Any]
  path: str

  def __len__(self) -> int:
    return self.hard.shape[0]

  @property
  def num_classes(self) -> int:
    return self.soft.shape[1]


def write(path: epath.PathLike, soft: np.ndarray, meta: dict[str, Any]) -> None:
  """Writes the labels file of probabilities `soft` [N, C] (rows in record order)."""
  soft = np.asarray(soft, np.float32)
  if soft.ndim != 2:
    raise ValueError(f"soft must be [records, classes], got shape {soft.shape}.")
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    np.savez(f, soft=soft, hard=soft.argmax(axis=1).astype(np.int32),
             confidence=soft.max(axis=1), meta=np.asarray(json.dumps(meta, sort_keys=True)))


def read(path: epath.PathLike) -> PseudoLabels:
  """The labels file at `path`; a DataError saying how to make one if it is missing or not one."""
  path = epath.Path(path)
  if not path.exists():
    raise sources.DataNotFoundError(
        f"No labels file {path}. Write one with python -m ssl_jax.label --workdir TEACHER "
        "--data SPEC --out labels.npz, then pass its path.")
  try:
    with path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
      missing = [name for name in ARRAYS if name not in npz.files]
      if missing:
        raise sources.DataError(f"{path} is not a labels file of ssl_jax.label: it lacks "
                                f"{missing} (it has {sorted(npz.files)}).")
      arrays = {name: npz[name] for name in ARRAYS}
  except (OSError, ValueError) as error:
    if isinstance(error, sources.DataError):
      raise
    raise sources.DataError(f"{path} is not a readable .npz labels file ({error}); write it "
                            "with python -m ssl_jax.label.") from error
  soft = arrays["soft"]
  if soft.ndim != 2 or arrays["hard"].shape != soft.shape[:1]:
    raise sources.DataError(f"{path}: 'soft' must be [N, C] and 'hard' [N]; got "
                            f"{soft.shape} and {arrays['hard'].shape}.")
  return PseudoLabels(soft=soft.astype(np.float32), hard=arrays["hard"].astype(np.int32),
                      confidence=arrays["confidence"].astype(np.float32),
                      meta=json.loads(str(arrays["meta"])), path=str(path))


def same_source(recorded: str, spec: str) -> bool:
  """Whether two data specs name the same records: equal, or local `npz:` / `imagefolder:`
  paths that resolve to the same place (a labels file written with '../data/x.npz' serves a
  config that names the absolute path)."""
  if recorded == spec:
    return True
  kinds = [s.split(":", 1)[0] for s in (recorded, spec)]
  if kinds[0] != kinds[1] or kinds[0] not in ("npz", "imagefolder") or "://" in recorded + spec:
    return False
  return len({os.path.realpath(s.split(":", 1)[1]) for s in (recorded, spec)}) == 1


def select(labels: PseudoLabels, *, min_confidence: float, per_class: int) -> np.ndarray:
  """Indices of the records a student trains on (Noisy Student's filtering and balancing).

  Records whose confidence is below `min_confidence` are dropped (the paper: 0.3). With
  `per_class` > 0 every class present then gets exactly `per_class` records: a class with more
  keeps its `per_class` most confident ones, a class with fewer repeats its records (most
  confident first) until it has `per_class` (the paper: "we duplicate images in classes where
  there are not enough images ... take the images with the highest confidence" for the others;
  130K per class on ImageNet). A class left with no record stays empty. `per_class=0` keeps
  every confident record once.

  Returns:
    int64 record indices, class by class (the stream shuffles them).
  """
  kept = np.flatnonzero(labels.confidence >= min_confidence)
  if per_class <= 0:
    return kept.astype(np.int64)
  chosen = []
  for c in range(labels.num_classes):
    members = kept[labels.hard[kept] == c]
    if members.size == 0:
      continue
    # Stable sort: equal confidences keep record order, so the selection is deterministic.
    by_confidence = members[np.argsort(-labels.confidence[members], kind="stable")]
    chosen.append(np.resize(by_confidence, per_class))  # Truncates or repeats cyclically.
  return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros((0,), np.int64)


class PseudoLabeledSource:
  """Records `indices` of an image source with the teacher's labels: what a `pseudo_labeled`
  stream reads. Each record is {'image', 'label': the hard pseudo-label, 'soft': [C]}."""

  def __init__(self, source, labels: PseudoLabels, indices: np.ndarray, *, description: str):
    self._source = source
    self._labels = labels
    self._indices = np.asarray(indices, np.int64)
    self._description = description
    self.num_classes = labels.num_classes
    if hasattr(source, "get_batch"):  # Batch reads only where the parent has them.
      self.get_batch = self._get_batch

  def __len__(self) -> int:
    return self._indices.shape[0]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = int(self._indices[index])
    return {"image": self._source[record]["image"],
            "label": np.asarray(self._labels.hard[record], np.int32),
            "soft": self._labels.soft[record]}

  def _get_batch(self, indices) -> dict[str, np.ndarray]:
    records = self._indices[np.asarray(indices, np.int64)]
    return {"image": self._source.get_batch(records)["image"],
            "label": self._labels.hard[records], "soft": self._labels.soft[records]}

  def __repr__(self) -> str:
    # Grain keeps the repr in the iterator state and checks it on restore.
    return f"PseudoLabeledSource(of={self._source!r}, {self._description}, records={len(self)})"
