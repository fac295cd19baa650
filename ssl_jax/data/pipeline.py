"""Host input pipeline: a resumable grain loader for training, padded fixed-shape eval passes.

Both read a source from `ssl_jax.data.sources` and yield host-local numpy batches
(`image` uint8 [b,S,S,C], `label` int32 [b], plus `mask` bool [b] for eval) with
`b = global_batch_size // process_count`; the training loop turns them into one global
`jax.Array` (`make_array_from_process_local_data`). Augmentation happens later, on the device.

Checkpointing the training iterator: `ssl_jax.checkpoint.Checkpointer` saves it beside the
train state as the orbax item `data` (grain's `PyGrainCheckpointSave` / `...Restore` args,
orbax-checkpoint 0.12.8, tested in tests/test_pipeline.py); restoring resets the iterator in
place, so its next batch is the one the interrupted run would have drawn. The iterator state is
read when `save` is called (before an async save returns), so advancing the iterator while the
save is in flight is safe. Each process writes its own `process_<i>-of-<n>.json`, so a restore
must use the same process count.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from typing import Iterator

import grain.python as grain
import jax
import numpy as np

from ssl_jax.data import sources


# grain's `DataLoader` checkpoint format version (grain 0.2: `_CHECKPOINT_VERSION_NUMBER`).
_GRAIN_STATE_VERSION = 2

try:  # The permutation grain's shuffling sampler applies, one C++ call per record.
  from grain._src.python.experimental.index_shuffle.python import (
      index_shuffle_module as _index_shuffle)
except ImportError:  # A grain that moved it: `BatchReadIterator` asks the sampler instead.
  _index_shuffle = None


def process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, process_count); got process_index="
                     f"{process_index}, process_count={process_count}.")
  return process_index, process_count


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
  """The host-local batch; the global batch must split evenly over the processes."""
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size must be positive, got {global_batch_size}.")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the "
                     f"{process_count} processes; use a multiple of {process_count}.")
  return global_batch_size // process_count


def make_train_loader(source, *, global_batch_size: int, seed: int,
                      process_index: int | None = None, process_count: int | None = None,
                      worker_count: int = 0, read_threads: int = 8,
                      prefetch: int = 256) -> grain.DataLoader:
  """An endless, shuffled, per-process sharded batch loader.

  Each process reads a contiguous shard of `len(source) // process_count` records (the
  remainder is dropped so every process has the same number), shuffled with `seed` and with a
  fresh permutation every epoch (grain `IndexSampler(shuffle=True, num_epochs=None)`). Batches
  run across epoch boundaries, like `repeat().batch()`; the stream never ends.

  Args:
    source: a random-access source (`ssl_jax.data.sources`); its `repr` is stored in the
      iterator state and checked on restore.
    global_batch_size: batch over all processes; each yields `global_batch_size //
      process_count` records per batch.
    seed: shuffle seed, an int in [0, 2**32).
    process_index / process_count: this process's shard; default `jax.process_index()` /
      `jax.process_count()`.
    worker_count: grain worker processes (0 = read in this process with threads). Workers need
      absl flags parsed (true under `absl.app.run`). Each worker batches its own slice of the
      records, so the batch stream depends on worker_count, and a restore needs the same
      worker_count, seed, process count and source (grain checks all four).
    read_threads: threads reading (decoding) records in each process.
    prefetch: records read ahead per process.

  Returns:
    A loader; `iter(loader)` yields `{'image': uint8 [b,S,S,C], 'label': int32 [b]}` and has
    `get_state()` / `set_state()` for exact resumption. In-memory sources (those with
    `get_batch`) read in this process get a `BatchReadLoader`: the same batches and the same
    state bytes as grain's `DataLoader`, one numpy gather per batch. Any other source, or
    `worker_count > 0`, gets grain's `DataLoader`.
  """
  process_index, process_count = process_layout(process_index, process_count)
  batch_size = per_process_batch_size(global_batch_size, process_count)
  if global_batch_size > len(source):
    raise sources.DataError(
        f"The batch of {global_batch_size} is larger than the dataset ({len(source)} records); "
        f"set --config.batch_size (or the stream's batch_size) to at most {len(source)}.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32) for grain's shuffle, got {seed!r}.")
  shard = grain.ShardOptions(shard_index=process_index, shard_count=process_count,
                             drop_remainder=True)
  sampler = grain.IndexSampler(num_records=len(source), shard_options=shard, shuffle=True,
                               num_epochs=None, seed=int(seed))
  if worker_count == 0 and hasattr(source, "get_batch"):
    return BatchReadLoader(source, sampler, shard, batch_size=batch_size, seed=int(seed))
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[grain.Batch(batch_size=batch_size, drop_remainder=True)],
      worker_count=worker_count, shard_options=shard,
      read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))


class BatchReadLoader:
  """grain's `DataLoader` (worker_count=0, one `Batch` op) for sources with `get_batch`.

  grain reads a batch as `b` calls to `source[key]` on its read threads and stacks the records:
  a Python call, a dict and a copy per image, about 5,000-12,000 32x32 images per CPU second
  (docs/performance.md). This loader takes the batch's `b` record keys in the sampler's order and
  reads them with one `source.get_batch(keys)`. Batches and iterator state are bit-identical to
  the `DataLoader`'s (tests/test_pipeline.py checks both), so a checkpoint written by either
  resumes in the other.
  """

  def __init__(self, source, sampler: grain.IndexSampler, shard: grain.ShardOptions, *,
               batch_size: int, seed: int):
    self._args = (source, sampler, shard)
    self._batch_size, self._seed = batch_size, seed

  def __iter__(self) -> "BatchReadIterator":
    return BatchReadIterator(*self._args, batch_size=self._batch_size, seed=self._seed)


class BatchReadIterator:
  """Iterator of `BatchReadLoader`: grain's state protocol (`get_state` / `set_state` bytes)."""

  def __init__(self, source, sampler: grain.IndexSampler, shard: grain.ShardOptions, *,
               batch_size: int, seed: int):
    self._source, self._sampler, self._batch_size = source, sampler, batch_size
    self._shard_index, self._shard_count = shard.shard_index, shard.shard_count
    # This process's contiguous shard of the records, as grain's `IndexSampler` cuts it.
    self._shard_size = len(source) // self._shard_count
    self._shard_start = self._shard_index * self._shard_size
    self._seed = seed  # The sampler's (it is in its repr, which the state holds).
    self._next_index = 0  # Records of this shard's endless stream read so far.

  def __iter__(self) -> "BatchReadIterator":
    return self

  def record_keys(self, start: int, stop: int) -> np.ndarray:
    """Source indices of positions [start, stop) of this shard's endless stream.

    grain's `IndexSampler(shuffle=True, num_epochs=None)` over a drop-remainder shard: epoch e
    visits the shard in the order `index_shuffle(i, shard_size - 1, seed + e, rounds=4)`
    (grain's `ShuffleMapDataset`, a fresh permutation per epoch).
    """
    if _index_shuffle is None:  # Public API, ~10x slower (a Philox generator per record).
      return np.asarray([self._sampler[p * self._shard_count + self._shard_index].record_key
                         for p in range(start, stop)], np.int64)
    keys = np.empty((stop - start,), np.int64)
    size = self._shard_size
    for row, position in enumerate(range(start, stop)):
      epoch, index_in_epoch = divmod(position, size)
      keys[row] = _index_shuffle.index_shuffle(
          index_in_epoch, max_index=size - 1, seed=(self._seed + epoch) % 2**32, rounds=4)
    return keys + self._shard_start

  def __next__(self) -> dict[str, np.ndarray]:
    start = self._next_index
    batch = self._source.get_batch(self.record_keys(start, start + self._batch_size))
    self._next_index = start + self._batch_size
    return batch

  def get_state(self) -> bytes:
    """grain `DataLoaderIterator.get_state()` bytes for the same position, field for field."""
    state = {
        "version": _GRAIN_STATE_VERSION,
        # grain's `last_seen_indices` for worker_count=0: the sampler index of the last record
        # read (process p reads sampler indices p, p + P, p + 2P, ...).
        "last_seen_indices": {
            "0": self._shard_index - self._shard_count + self._next_index * self._shard_count},
        "last_worker_index": -1,
        "worker_count": 0,
        "sampler": repr(self._sampler),
        "data_source": repr(self._source),
    }
    return json.dumps(state, indent=4).encode()

  def set_state(self, state: bytes) -> None:
    state = json.loads(state.decode())
    for key, expected in (("worker_count", 0), ("sampler", repr(self._sampler)),
                          ("data_source", repr(self._source))):
      if state[key] != expected:
        raise DataChangedError(data_change_message(key, state[key], expected))
    last_seen = state["last_seen_indices"]["0"]
    self._next_index = (last_seen + self._shard_count - self._shard_index) // self._shard_count

  def start_prefetch(self) -> None:
    """Part of grain's iterator protocol (called after a restore); reads are on demand here."""


class DataChangedError(sources.DataError):
  """A checkpoint's data iterator was written over other data than this run reads."""


def data_change_message(key: str, saved: object, now: object) -> str:
  """The `DataChangedError` text: what differs between the checkpoint's iterator state `saved`
  and this run's `now`, and that the checkpoints themselves are fine."""
  counts = [re.search(r"num_records=(\d+)", str(text)) for text in (saved, now)]
  if key == "sampler" and all(counts) and counts[0].group(1) != counts[1].group(1):
    change = (f"the checkpoints were written reading {counts[0].group(1)} training records, "
              f"the data source now holds {counts[1].group(1)}")
  else:
    change = f"the checkpoint's data iterator has {key} {saved!r}, this run's is {now!r}"
  return (f"The training data changed since this run's checkpoints were written: {change}. "
          "The checkpoints are intact; resume with the data they were written with (the same "
          "files, config and data.worker_count), or train on the new data in another --workdir.")


def eval_batch_count(num_records: int, global_batch_size: int, process_count: int) -> int:
  """Batches every process yields in one eval pass (the same on all of them)."""
  batch_size = per_process_batch_size(global_batch_size, process_count)
  shard_size = -(-num_records // process_count)
  return -(-shard_size // batch_size)


def make_eval_batches(source, *, global_batch_size: int, process_index: int | None = None,
                      process_count: int | None = None,
                      read_threads: int = 8) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass over `source`, in fixed-shape padded batches.

  Process p reads the contiguous records `[p * ceil(N/P), (p + 1) * ceil(N/P))` (clipped to N).
  Every batch has the same shape; `mask` is True for real records, and padded rows hold zero
  images with label -1. All processes yield `eval_batch_count(...)` batches (a process that runs
  out yields fully masked batches), so a collective inside the eval step never waits on a host
  that has stopped. A global batch larger than the dataset is allowed here: it is only padding.

  Returns:
    An iterator of `{'image': uint8 [b,S,S,C], 'label': int32 [b], 'mask': bool [b]}`.
  """
  process_index, process_count = process_layout(process_index, process_count)
  batch_size = per_process_batch_size(global_batch_size, process_count)
  num_records = len(source)
  if num_records == 0:
    raise ValueError("The eval source has no records.")
  shard_size = -(-num_records // process_count)
  start = min(num_records, process_index * shard_size)
  stop = min(num_records, start + shard_size)
  num_batches = eval_batch_count(num_records, global_batch_size, process_count)
  image_shape = np.shape(source[0]["image"])

  def batches():
    pool = concurrent.futures.ThreadPoolExecutor(read_threads) if read_threads else None
    try:
      for batch_index in range(num_batches):
        first = start + batch_index * batch_size
        indices = np.arange(first, max(first, min(stop, first + batch_size)))
        image = np.zeros((batch_size, *image_shape), np.uint8)
        label = np.full((batch_size,), -1, np.int32)
        mask = np.zeros((batch_size,), bool)
        if indices.size:
          records = sources.read_batch(source, indices, pool)
          image[:indices.size] = records["image"]
          label[:indices.size] = records["label"]
        mask[:indices.size] = True
        yield {"image": image, "label": label, "mask": mask}
    finally:
      if pool:
        pool.shutdown(wait=False, cancel_futures=True)

  return batches()
