"""What one training step reads: the single-stream batch, or several named streams.

`config.data.streams` is empty by default: the step then reads `{'image', 'label'}` batches of
`batch_size` records from `data.source` / `data.train_split` / `data.train_subset`, exactly as
before streams existed (same iterator, same checkpoint layout).

A config that declares streams gives each a name (the key the method reads) and a kind::

  config.data.streams = ml_collections.ConfigDict({
      "labeled": streams.stream_config("labeled", batch_size=64),
      "unlabeled": streams.stream_config("unlabeled", batch_size=448)})

and the step receives one global pytree `{name: {'image': uint8 [b,S,S,3], 'label': int32 [b]}}`
with `b` that stream's global batch. The kinds:

* `unlabeled`: every record of the split, shuffled, labels hidden (-1) so that no method can
  train on them by accident (FixMatch's and PAWS's unlabelled batches).
* `labeled`: the class-balanced subset `data.train_subset` of the split (`fraction:0.01` is the
  1% split of `ssl_jax.data.subsets`; '' is the whole split), shuffled, its own batch size
  (FixMatch's labelled batch).
* `support`: every step, `classes` classes drawn without replacement and `per_class` records of
  each, from the same labelled subset; a fresh draw every step (PAWS's class-stratified support
  set, Assran et al. 2021, `ClassStratifiedSampler` with `unique_classes=False`). The draw is a
  pure function of (seed, step) and is the same on every process; process p reads its
  contiguous share of the rows, which are ordered sample-major (row r holds sample r // C of
  class r % C), so every process's share holds the same classes whenever the process count
  divides `per_class`.
* `pseudo_labeled`: the records of the split zipped with the labels file `labels_file` that
  `python -m ssl_jax.label` wrote for the same source and split (`ssl_jax.data.pseudo_labels`):
  records below `min_confidence` dropped, and with `per_class` > 0 each class balanced to
  `per_class` records (Noisy Student's data selection), shuffled. Its rows carry the hard
  pseudo-label as `label` and the teacher's probabilities as `soft` (float32
  [b, method.num_classes]). The record count and the source / split recorded in the file must
  match the stream's.

Per-stream keys (see `stream_config`): `kind`, `batch_size` (global; 0 = `config.batch_size`;
support streams have `classes * per_class` rows instead), `source` / `split` ('' = the data
section's), `classes` (support only), `per_class` (support and pseudo_labeled),
`labels_file` and `min_confidence` (pseudo_labeled only).

Every stream is sharded per process (each process reads its share of each stream's global
batch) and shuffled with its own seed, derived from `config.seed` and the stream's name. The
labelled subset itself is drawn with `config.seed`, as the single-stream loop draws it. An
epoch is one pass over the stream that takes the most steps to read (support streams, which
have no passes, do not count).

Resumption: `MultiStreamIterator.get_state()` is one JSON object holding every stream's state
(grain's for the shuffled streams, the step count for support streams); the Checkpointer saves
it as the `data` item, one file per process, like a single grain iterator.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import json
import zlib
from typing import Any, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from ssl_jax.data import pipeline, pseudo_labels, sources, subsets

KINDS = ("unlabeled", "labeled", "support", "pseudo_labeled")
# A stream's keys and their defaults; `stream_config` fills the ones a config leaves out.
STREAM_DEFAULTS = {"kind": "", "batch_size": 0, "source": "", "split": "", "classes": 0,
                   "per_class": 0, "labels_file": "", "min_confidence": 0.0}
_SUPPORT_READ_THREADS = 8


class StreamConfigError(ValueError):
  """`data.streams` is malformed (config_lib re-raises it as a ConfigError)."""


def stream_config(kind: str, **values) -> ml_collections.ConfigDict:
  """A stream entry for `config.data.streams` with every key present (so overrides work)."""
  unknown = sorted(set(values) - set(STREAM_DEFAULTS))
  if unknown:
    raise StreamConfigError(f"stream_config got unknown keys {unknown}; a stream has "
                            f"{sorted(STREAM_DEFAULTS)}.")
  return ml_collections.ConfigDict({**STREAM_DEFAULTS, **values, "kind": kind})


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """One validated stream: its name, kind, global batch and where it reads from."""
  name: str
  kind: str
  batch_size: int            # Global rows per step.
  source: str
  split: str
  classes: int = 0           # support only
  per_class: int = 0         # support; pseudo_labeled: records per class after balancing
  labels_file: str = ""      # pseudo_labeled only
  min_confidence: float = 0.0  # pseudo_labeled only


def parse_streams(config: ml_collections.ConfigDict) -> tuple[StreamSpec, ...]:
  """The declared streams, sorted by name; () for a single-stream config.

  Raises:
    StreamConfigError: naming the stream and key that is wrong and how to fix it.
  """
  declared = config.data.get("streams")
  if declared is None or len(declared) == 0:
    return ()
  specs = []
  for name in sorted(declared):
    entry = declared[name]
    where = f"data.streams.{name}"
    if not name.isidentifier() or name in ("image", "label"):
      raise StreamConfigError(f"Stream name {name!r} must be a Python identifier other than "
                              "'image' and 'label' (the method reads batch[name]), e.g. "
                              "'labeled' or 'unlabeled'.")
    if not isinstance(entry, (ml_collections.ConfigDict, Mapping)):
      raise StreamConfigError(f"{where} must be a ConfigDict of stream keys, e.g. "
                              "streams.stream_config('unlabeled', batch_size=256); got "
                              f"{type(entry).__name__}.")
    values = entry.to_dict() if isinstance(entry, ml_collections.ConfigDict) else dict(entry)
    for key in values:
      if key not in STREAM_DEFAULTS:
        close = difflib.get_close_matches(key, list(STREAM_DEFAULTS), n=1, cutoff=0.5)
        hint = f" Did you mean {where}.{close[0]}?" if close else ""
        raise StreamConfigError(f"Unknown key {where}.{key}; a stream has "
                                f"{', '.join(STREAM_DEFAULTS)}.{hint}")
    values = {**STREAM_DEFAULTS, **values}
    kind = values["kind"]
    if kind not in KINDS:
      raise StreamConfigError(f"{where}.kind={kind!r}; choose one of {', '.join(KINDS)}.")
    for key in ("batch_size", "classes", "per_class"):
      value = values[key]
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StreamConfigError(f"{where}.{key} must be an int >= 0, got {value!r}.")
    if kind == "support":
      if values["classes"] < 1 or values["per_class"] < 1:
        raise StreamConfigError(
            f"{where} is a support stream: set {where}.classes (classes per step) and "
            f"{where}.per_class (records of each class) to at least 1, got "
            f"classes={values['classes']}, per_class={values['per_class']}.")
      if values["batch_size"]:
        raise StreamConfigError(
            f"{where}.batch_size={values['batch_size']}: a support stream's batch is "
            f"classes * per_class rows; leave batch_size at 0.")
      batch_size = values["classes"] * values["per_class"]
    else:
      for key in ("classes",) if kind == "pseudo_labeled" else ("classes", "per_class"):
        if values[key]:
          raise StreamConfigError(f"{where}.{key} applies to support streams only; this "
                                  f"stream is {kind!r}. Remove it or set it to 0.")
      batch_size = values["batch_size"] or int(config.batch_size)
    confidence = values["min_confidence"]
    if kind != "pseudo_labeled" and (values["labels_file"] or confidence):
      raise StreamConfigError(f"{where}.labels_file and .min_confidence apply to "
                              f"pseudo_labeled streams only; this stream is {kind!r}.")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not (
        0.0 <= confidence <= 1.0):
      raise StreamConfigError(f"{where}.min_confidence must be a probability in [0, 1], got "
                              f"{confidence!r}.")
    specs.append(StreamSpec(name=name, kind=kind, batch_size=batch_size,
                            source=values["source"] or config.data.source,
                            split=values["split"] or config.data.train_split,
                            classes=values["classes"], per_class=values["per_class"],
                            labels_file=values["labels_file"],
                            min_confidence=float(confidence)))
  if config.data.train_subset and not any(s.kind != "unlabeled" for s in specs):
    raise StreamConfigError(
        f"data.train_subset={config.data.train_subset!r} selects the records of 'labeled' "
        "and 'support' streams, and every declared stream is 'unlabeled'. Set "
        "data.train_subset='' or declare a labeled stream.")
  accum = config.optim.grad_accum_steps
  for spec in specs:
    if accum > 1 and spec.batch_size % accum:
      raise StreamConfigError(f"data.streams.{spec.name} has {spec.batch_size} rows per step, "
                              f"not divisible by optim.grad_accum_steps={accum}.")
  if config.eval.online_probe:
    raise StreamConfigError("eval.online_probe trains on a single-stream batch's "
                            "{'image', 'label'}; with data.streams set eval.online_probe=False.")
  return tuple(specs)


def batch_sizes(config: ml_collections.ConfigDict) -> dict[str, int] | int:
  """Global rows per step: an int for single-stream configs, else {stream: rows}."""
  specs = parse_streams(config)
  if not specs:
    return int(config.batch_size)
  return {spec.name: spec.batch_size for spec in specs}


def batch_shapes(config: ml_collections.ConfigDict, *, process_count: int = 1,
                 rows: int | None = None) -> Any:
  """`jax.ShapeDtypeStruct`s of the batch one process reads per step (process_count=1: the
  global batch), in the structure the step receives; `rows` replaces every stream's batch."""
  size = int(config.data.image_size)

  def shapes(batch_size, kind=""):
    local = rows if rows is not None else pipeline.per_process_batch_size(batch_size,
                                                                          process_count)
    shape = {"image": jax.ShapeDtypeStruct((local, size, size, 3), np.uint8),
             "label": jax.ShapeDtypeStruct((local,), np.int32)}
    if kind == "pseudo_labeled":
      shape["soft"] = jax.ShapeDtypeStruct((local, int(config.method.num_classes)), np.float32)
    return shape

  specs = parse_streams(config)
  if not specs:
    return shapes(int(config.batch_size))
  return {spec.name: shapes(spec.batch_size, spec.kind) for spec in specs}


def zeros_batch(config: ml_collections.ConfigDict, *, process_count: int = 1,
                rows: int | None = None) -> Any:
  """A host batch of zeros shaped like `batch_shapes`: what methods are initialised on."""
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                      batch_shapes(config, process_count=process_count, rows=rows))


def stream_seed(seed: int, name: str) -> int:
  """A shuffle seed in [0, 2**32) for stream `name`: independent streams, stable under renames
  of other streams."""
  return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1)[0])


# ----------------------------------------------------------------------------- sources


class UnlabeledSource:
  """`source` with every label hidden (-1): what an 'unlabeled' stream reads."""

  def __init__(self, source):
    self._source = source
    self.num_classes = None
    if hasattr(source, "get_batch"):  # Batch reads only where the parent has them.
      self.get_batch = self._get_batch

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": self._source[index]["image"], "label": np.asarray(-1, np.int32)}

  def _get_batch(self, indices) -> dict[str, np.ndarray]:
    image = self._source.get_batch(indices)["image"]
    return {"image": image, "label": np.full((len(image),), -1, np.int32)}

  def __repr__(self) -> str:
    return f"UnlabeledSource(of={self._source!r})"


# ----------------------------------------------------------------------------- support


def support_indices(members: Sequence[np.ndarray], *, seed: int, step: int, classes: int,
                    per_class: int, process_index: int, process_count: int) -> np.ndarray:
  """The records process `process_index` reads for the support set of `step`.

  A pure function of (seed, step) for the global draw and of the process for its share: the
  `classes` classes (without replacement, sorted) and `per_class` distinct records of each come
  from `np.random.default_rng([seed, step])`, identical on every process. The global rows are
  sample-major (row r: sample r // classes of the r % classes-th class); process p gets rows
  [p * n / P, (p + 1) * n / P).

  Args:
    members: members[c] holds the record indices of class c.
    seed, step: the draw.
    classes, per_class: C classes per step, S records of each.
    process_index, process_count: this process's share.

  Returns:
    int64 record indices, `classes * per_class // process_count` of them.
  """
  total = classes * per_class
  if total % process_count:
    raise ValueError(f"A support set of {classes} x {per_class} = {total} rows does not split "
                     f"over {process_count} processes.")
  rng = np.random.default_rng([int(seed), int(step)])
  chosen = np.sort(rng.choice(len(members), size=classes, replace=False))
  picks = np.stack([members[c][rng.choice(len(members[c]), size=per_class, replace=False)]
                    for c in chosen], axis=1)  # [per_class, classes]
  rows = picks.reshape(-1).astype(np.int64)
  share = total // process_count
  return rows[process_index * share:(process_index + 1) * share]


def class_members(labels: np.ndarray) -> list[np.ndarray]:
  """members[c] = indices of label c, for c in 0..max(label)."""
  labels = np.asarray(labels, np.int64)
  return [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]


class SupportIterator:
  """Class-stratified support sets, one per step (see `support_indices`); resumable.

  Its state is the next step's index: `get_state` / `set_state` follow grain's iterator
  protocol (JSON bytes) so a `MultiStreamIterator` saves it beside grain's states.
  """

  def __init__(self, source, *, seed: int, classes: int, per_class: int, process_index: int,
               process_count: int, name: str = "support"):
    labels = subsets.source_labels(source)
    if labels.size == 0 or labels.min() < 0:
      raise ValueError(f"Support stream {name!r} needs labelled records; its source "
                       f"{source!r} has unlabelled ones (label -1).")
    members = class_members(labels)
    present = [c for c, m in enumerate(members) if m.size]
    if classes > len(present):
      raise ValueError(f"data.streams.{name}.classes={classes} but the labelled records hold "
                       f"{len(present)} classes; use at most {len(present)}.")
    small = [c for c in present if members[c].size < per_class]
    if small:
      raise ValueError(
          f"data.streams.{name}.per_class={per_class} but class {small[0]} has only "
          f"{members[small[0]].size} labelled records ({len(small)} classes have fewer than "
          f"{per_class}); lower per_class or use a larger data.train_subset.")
    self._source = source
    self._members = [members[c] for c in present]
    self._class_ids = present
    self._seed, self._classes, self._per_class = int(seed), classes, per_class
    self._process_index, self._process_count = process_index, process_count
    self._step = 0
    # Part of the state: a restore into a differently configured stream is an error.
    self._fingerprint = (f"{source!r}, seed={self._seed}, classes={classes}, "
                         f"per_class={per_class}, process_count={process_count}")

  def __iter__(self) -> "SupportIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    indices = support_indices(self._members, seed=self._seed, step=self._step,
                              classes=self._classes, per_class=self._per_class,
                              process_index=self._process_index,
                              process_count=self._process_count)
    self._step += 1
    if hasattr(self._source, "get_batch"):  # In memory: one gather, no thread pool.
      return self._source.get_batch(indices)
    with concurrent.futures.ThreadPoolExecutor(_SUPPORT_READ_THREADS) as pool:
      return sources.read_batch(self._source, indices, pool)

  def get_state(self) -> bytes:
    return json.dumps({"step": self._step, "stream": self._fingerprint}).encode()

  def set_state(self, state: bytes) -> None:
    state = json.loads(state)
    if state["stream"] != self._fingerprint:
      raise pipeline.DataChangedError(
          pipeline.data_change_message("support stream", state["stream"], self._fingerprint))
    self._step = int(state["step"])


# ----------------------------------------------------------------------------- iterators


class MultiStreamIterator:
  """Yields `{name: next(iterators[name])}`; its state is every stream's state, in one JSON.

  Follows the grain iterator protocol the orbax `data` item uses (`get_state` -> bytes,
  `set_state(bytes)`, `start_prefetch`).
  """

  def __init__(self, iterators: Mapping[str, Iterator]):
    self._iterators = dict(sorted(iterators.items()))

  def __iter__(self) -> "MultiStreamIterator":
    return self

  def __next__(self) -> dict[str, dict[str, np.ndarray]]:
    return {name: next(iterator) for name, iterator in self._iterators.items()}

  def get_state(self) -> bytes:
    return json.dumps({name: iterator.get_state().decode()
                       for name, iterator in self._iterators.items()}).encode()

  def set_state(self, state: bytes) -> None:
    states = json.loads(state)
    if sorted(states) != list(self._iterators):
      # A DataChangedError, not a ValueError: restore would take the latter for damage.
      raise pipeline.DataChangedError(
          pipeline.data_change_message("streams", sorted(states), list(self._iterators)))
    for name, iterator in self._iterators.items():
      iterator.set_state(states[name].encode())

  def start_prefetch(self) -> None:
    for iterator in self._iterators.values():
      if hasattr(iterator, "start_prefetch"):
        iterator.start_prefetch()


@dataclasses.dataclass
class TrainData:
  """The training input of a run: its iterator and what the loop derives from the data."""
  iterator: Any              # yields host-local batches; get_state()/set_state() for resume
  steps_per_epoch: int
  num_classes: int | None    # of the (first) labelled source; for the online probe
  images_per_step: int       # over all streams and processes


def _read_source(config, spec: str, split: str):
  return sources.get_source(spec, split, image_size=config.data.image_size,
                            data_dir=config.data.data_dir or None)


def pseudo_labeled_source(config: ml_collections.ConfigDict, spec: StreamSpec,
                          source) -> pseudo_labels.PseudoLabeledSource:
  """`source` zipped with the stream's labels file, after Noisy Student's selection.

  Raises:
    sources.DataError: no labels file, or one written for other records (count, spec, split)
      or another number of classes than `method.num_classes`.
  """
  where = f"data.streams.{spec.name}"
  if not spec.labels_file:
    raise sources.DataError(
        f"{where}.labels_file is empty. Write the teacher's labels with python -m "
        f"ssl_jax.label --workdir TEACHER --data {spec.source} --split {spec.split} --out "
        f"labels.npz, then pass --config.{where}.labels_file=labels.npz.")
  labels = pseudo_labels.read(spec.labels_file)
  recorded = (labels.meta.get("source", ""), labels.meta.get("split"))
  if not pseudo_labels.same_source(recorded[0], spec.source) or recorded[1] != spec.split:
    raise sources.DataError(
        f"{spec.labels_file} labels source {recorded[0]!r} split {recorded[1]!r}, but {where} "
        f"reads {spec.source!r} split {spec.split!r}. Label the stream's own records (python -m "
        "ssl_jax.label --data SPEC --split SPLIT) or point the stream at the labelled source.")
  if len(labels) != len(source):
    raise sources.DataError(
        f"{spec.labels_file} holds {len(labels)} predictions but {spec.source!r} split "
        f"{spec.split!r} has {len(source)} records; the source changed since it was labelled: "
        "label it again.")
  num_classes = int(config.method.num_classes)
  if labels.num_classes != num_classes:
    raise sources.DataError(
        f"{spec.labels_file} holds {labels.num_classes}-class predictions but "
        f"method.num_classes={num_classes}; set method.num_classes={labels.num_classes}.")
  indices = pseudo_labels.select(labels, min_confidence=spec.min_confidence,
                                 per_class=spec.per_class)
  if indices.size == 0:
    raise sources.DataError(
        f"No record of {spec.labels_file} reaches {where}.min_confidence="
        f"{spec.min_confidence} (highest: {labels.confidence.max():.3f}); lower it.")
  return pseudo_labels.PseudoLabeledSource(
      source, labels, indices,
      description=f"labels_file={spec.labels_file!r}, min_confidence={spec.min_confidence}, "
                  f"per_class={spec.per_class}")


def make_train_data(config: ml_collections.ConfigDict, *, process_index: int | None = None,
                    process_count: int | None = None) -> TrainData:
  """The training iterator `config` asks for, this process's shard of it."""
  process_index, process_count = pipeline.process_layout(process_index, process_count)
  specs = parse_streams(config)
  if not specs:
    source = _read_source(config, config.data.source, config.data.train_split)
    source = subsets.apply_subset(source, config.data.train_subset, config.seed)
    loader = pipeline.make_train_loader(source, global_batch_size=config.batch_size,
                                        seed=config.seed, process_index=process_index,
                                        process_count=process_count,
                                        worker_count=config.data.worker_count)
    return TrainData(iterator=iter(loader),
                     steps_per_epoch=max(len(source) // config.batch_size, 1),
                     num_classes=source.num_classes, images_per_step=int(config.batch_size))

  iterators, passes, num_classes = {}, [], None
  read = {}  # One source (and one labelled subset) per (spec, split), shared by streams.
  for spec in specs:
    key = (spec.source, spec.split)
    if key not in read:
      read[key] = _read_source(config, spec.source, spec.split)
    source = read[key]
    seed = stream_seed(config.seed, spec.name)
    if spec.kind == "unlabeled":
      source = UnlabeledSource(source)
    elif spec.kind == "pseudo_labeled":
      source = pseudo_labeled_source(config, spec, source)
    else:
      if (key, "subset") not in read:
        read[(key, "subset")] = subsets.apply_subset(source, config.data.train_subset,
                                                     config.seed)
      source = read[(key, "subset")]
      num_classes = num_classes or source.num_classes
    if spec.kind == "support":
      iterators[spec.name] = SupportIterator(
          source, seed=seed, classes=spec.classes, per_class=spec.per_class,
          process_index=process_index, process_count=process_count, name=spec.name)
      continue
    loader = pipeline.make_train_loader(source, global_batch_size=spec.batch_size, seed=seed,
                                        process_index=process_index,
                                        process_count=process_count,
                                        worker_count=config.data.worker_count)
    iterators[spec.name] = iter(loader)
    passes.append(len(source) // spec.batch_size)
  return TrainData(iterator=MultiStreamIterator(iterators),
                   steps_per_epoch=max(passes + [1]), num_classes=num_classes,
                   images_per_step=sum(spec.batch_size for spec in specs))
