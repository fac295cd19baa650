"""Host pipeline: sharding, shuffling, exact resumption and padded eval passes."""

import grain.python as grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ssl_jax.data import pipeline
from ssl_jax.data import sources

NUM_RECORDS = 23


def _indexed_source(num_records=NUM_RECORDS):
  """Record i has label i and every pixel equal to i, so a batch tells which records it holds."""
  images = np.broadcast_to(np.arange(num_records, dtype=np.uint8)[:, None, None, None],
                           (num_records, 2, 2, 3))
  return sources.ArraySource(images, np.arange(num_records), image_size=2, num_classes=None,
                             description=f"indexed:{num_records}")


def _labels(iterator, num_batches):
  return [next(iterator)["label"].tolist() for _ in range(num_batches)]


def _loader(**kwargs):
  defaults = dict(global_batch_size=4, seed=7, process_index=0, process_count=1,
                  read_threads=2, prefetch=8)
  return pipeline.make_train_loader(_indexed_source(), **{**defaults, **kwargs})


def test_train_batches_have_fixed_shapes_and_dtypes():
  batch = next(iter(_loader()))
  assert batch["image"].shape == (4, 2, 2, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
  # Images and labels stay paired through shuffling and batching.
  np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], batch["label"])


def test_two_processes_read_disjoint_equal_shards_and_reshuffle_every_epoch():
  shard_size = NUM_RECORDS // 2  # The odd record out is dropped so both shards are equal.
  shards = []
  for process_index in range(2):
    loader = _loader(global_batch_size=2, process_index=process_index, process_count=2)
    # One record per batch per process: 3 epochs of the shard.
    stream = sum(_labels(iter(loader), 3 * shard_size), [])
    epochs = [stream[e * shard_size:(e + 1) * shard_size] for e in range(3)]
    assert len(set(epochs[0])) == shard_size
    assert all(sorted(epoch) == sorted(epochs[0]) for epoch in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # New order each epoch.
    shards.append(set(epochs[0]))
  assert not shards[0] & shards[1]
  assert len(shards[0] | shards[1]) == 2 * shard_size


def test_order_is_determined_by_the_seed():
  first = _labels(iter(_loader(seed=3)), 8)
  assert _labels(iter(_loader(seed=3)), 8) == first
  assert _labels(iter(_loader(seed=4)), 8) != first


def test_restored_iterator_continues_exactly():
  iterator = iter(_loader())
  _labels(iterator, 7)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(5)]
  resumed = iter(_loader())  # A fresh loader, as after a restart.
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["image"], want["image"])


def test_orbax_checkpoint_round_trip_of_the_iterator(tmp_path):
  iterator = iter(_loader())
  _labels(iterator, 7)
  manager = ocp.CheckpointManager(tmp_path / "checkpoints")
  manager.save(7, args=ocp.args.Composite(data=grain.PyGrainCheckpointSave(iterator)))
  # The loop keeps drawing batches while an async save is in flight; the saved state must be
  # the one at save time.
  expected = _labels(iterator, 5)
  manager.wait_until_finished()
  resumed = iter(_loader())
  restored = manager.restore(
      7, args=ocp.args.Composite(data=grain.PyGrainCheckpointRestore(resumed)))
  assert restored.data is resumed
  assert _labels(resumed, 5) == expected
  manager.close()


def test_train_loader_errors_name_the_numbers():
  with pytest.raises(sources.DataError, match=r"batch of 32 is larger than the dataset "
                     r"\(23 records\).*at most 23"):
    _loader(global_batch_size=32)
  with pytest.raises(ValueError, match="6 is not divisible by the 4 processes"):
    _loader(global_batch_size=6, process_count=4)
  with pytest.raises(ValueError, match="seed must be an int"):
    _loader(seed=-1)
  with pytest.raises(ValueError, match="process_index must be in"):
    _loader(process_index=2, process_count=2)


def _eval_pass(num_records, global_batch_size, process_count):
  source = _indexed_source(num_records)
  return [list(pipeline.make_eval_batches(source, global_batch_size=global_batch_size,
                                          process_index=p, process_count=process_count,
                                          read_threads=t))
          for p, t in zip(range(process_count), (0, 2, 0, 2))]


@pytest.mark.parametrize("num_records, global_batch_size, process_count", [
    (23, 6, 2),  # Second shard ends in a partial batch.
    (23, 4, 1),
    (4, 6, 3),  # The last process has no records at all; the batch exceeds the dataset.
])
def test_eval_pass_sees_every_record_once_with_equal_batch_counts(num_records,
                                                                 global_batch_size,
                                                                 process_count):
  per_process = _eval_pass(num_records, global_batch_size, process_count)
  expected_count = pipeline.eval_batch_count(num_records, global_batch_size, process_count)
  assert [len(batches) for batches in per_process] == [expected_count] * process_count
  batch_size = global_batch_size // process_count
  seen = []
  for batches in per_process:
    for batch in batches:
      assert batch["image"].shape == (batch_size, 2, 2, 3) and batch["image"].dtype == np.uint8
      assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool
      real = batch["mask"]
      np.testing.assert_array_equal(batch["image"][real, 0, 0, 0], batch["label"][real])
      assert np.all(batch["image"][~real] == 0) and np.all(batch["label"][~real] == -1)
      seen.extend(batch["label"][real].tolist())
  assert seen == list(range(num_records))  # In order, each exactly once.


def test_eval_batch_counts_by_hand():
  # 23 records over 2 processes: shards of 12 and 11, batches of 3 -> 4 batches each.
  assert pipeline.eval_batch_count(23, 6, 2) == 4
  # 4 records over 3 processes: shards of 2, 2, 0 and batches of 2 -> 1 batch each.
  assert pipeline.eval_batch_count(4, 6, 3) == 1
  with pytest.raises(ValueError, match="not divisible by the 4 processes"):
    pipeline.make_eval_batches(_indexed_source(), global_batch_size=6, process_index=0,
                               process_count=4)


# ------------------------------------------------------------------- batch reads vs grain's


class _PerRecord:
  """`source` without `get_batch`: the loader falls back to grain's per-record `DataLoader`."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    return self._source[index]

  def __repr__(self):
    return repr(self._source)  # The same repr, so grain's state is comparable byte for byte.


def _random_source(num_records=NUM_RECORDS, shape=(2, 2, 3), image_size=2):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_records, *shape), dtype=np.uint8)
  return sources.ArraySource(images, rng.integers(0, 10, num_records), image_size=image_size,
                             num_classes=10, description=f"random:{shape}")


@pytest.mark.parametrize("shape, image_size", [((2, 2, 3), 2), ((2, 2, 1), 2), ((3, 5, 3), 2),
                                               ((4, 4), 2)])
def test_get_batch_equals_stacked_records(shape, image_size):
  source = _random_source(shape=shape, image_size=image_size)
  indices = [5, 0, 22, 5, 9]
  batch = source.get_batch(indices)
  records = [source[i] for i in indices]
  assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
  np.testing.assert_array_equal(batch["image"], np.stack([r["image"] for r in records]))
  np.testing.assert_array_equal(batch["label"], [r["label"] for r in records])


@pytest.mark.parametrize("process_index, process_count, global_batch_size", [
    (0, 1, 4), (1, 2, 6), (2, 3, 3)])
def test_batch_reads_equal_grains_per_record_loader_batches_and_state(process_index,
                                                                     process_count,
                                                                     global_batch_size):
  source = _random_source()
  kwargs = dict(global_batch_size=global_batch_size, seed=11, process_index=process_index,
                process_count=process_count, read_threads=2, prefetch=8)
  fast = pipeline.make_train_loader(source, **kwargs)
  slow = pipeline.make_train_loader(_PerRecord(source), **kwargs)
  assert isinstance(fast, pipeline.BatchReadLoader) and isinstance(slow, grain.DataLoader)
  fast_iter, slow_iter = iter(fast), iter(slow)
  assert fast_iter.get_state() == slow_iter.get_state()
  # 3 epochs of the shard (batches straddle epoch boundaries): same images, labels and state.
  for _ in range(3 * (NUM_RECORDS // process_count) // (global_batch_size // process_count)):
    got, want = next(fast_iter), next(slow_iter)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
    assert got["image"].dtype == want["image"].dtype and got["label"].dtype == np.int32
    assert fast_iter.get_state() == slow_iter.get_state()


def test_record_keys_equal_the_samplers_with_or_without_grains_index_shuffle(monkeypatch):
  iterator = iter(_loader(global_batch_size=6, process_index=1, process_count=2))
  expected = iterator.record_keys(0, 40)  # Almost 4 epochs of the 11-record shard.
  monkeypatch.setattr(pipeline, "_index_shuffle", None)
  np.testing.assert_array_equal(iterator.record_keys(0, 40), expected)
  assert sorted(expected[:11]) == list(range(11, 22))  # Process 1's shard, each record once.


def test_states_move_between_the_batch_and_the_per_record_loader():
  source = _random_source()
  fast, slow = iter(_loader()), iter(pipeline.make_train_loader(
      _PerRecord(_indexed_source()), global_batch_size=4, seed=7, process_index=0,
      process_count=1, read_threads=2, prefetch=8))
  _labels(fast, 3)
  slow.set_state(fast.get_state())  # A checkpoint of either kind resumes in the other.
  assert _labels(slow, 4) == _labels(fast, 4)
  resumed = iter(_loader())
  resumed.set_state(slow.get_state())
  assert _labels(resumed, 4) == _labels(slow, 4)
  other = iter(pipeline.make_train_loader(source, global_batch_size=4, seed=7, process_index=0,
                                          process_count=1))
  with pytest.raises(pipeline.DataChangedError, match="data_source"):
    other.set_state(fast.get_state())
  # Records added to or removed from the files: named as such (a user error, one line, and the
  # checkpoint is not taken for a damaged one).
  fewer = iter(pipeline.make_train_loader(_random_source(NUM_RECORDS - 5), global_batch_size=4,
                                          seed=7, process_index=0, process_count=1))
  with pytest.raises(pipeline.DataChangedError,
                     match=f"written reading {NUM_RECORDS} training records, the data source "
                           f"now holds {NUM_RECORDS - 5}. The checkpoints are intact"):
    fewer.set_state(iter(pipeline.make_train_loader(
        _random_source(), global_batch_size=4, seed=7, process_index=0,
        process_count=1)).get_state())


def test_subset_and_unlabeled_sources_read_in_batches():
  from ssl_jax.data import streams, subsets
  source = _random_source()
  subset = subsets.SubsetSource(source, np.array([3, 1, 20, 7, 7]), description="hand-picked")
  unlabeled = streams.UnlabeledSource(subset)
  for wrapped in (subset, unlabeled):
    batch = wrapped.get_batch([4, 0, 2])
    np.testing.assert_array_equal(batch["image"], np.stack([wrapped[i]["image"]
                                                             for i in (4, 0, 2)]))
    np.testing.assert_array_equal(batch["label"], [wrapped[i]["label"] for i in (4, 0, 2)])
  assert unlabeled.get_batch([1])["label"].tolist() == [-1]
  assert not hasattr(subsets.SubsetSource(_PerRecord(source), np.arange(3), description="x"),
                     "get_batch")


def test_eval_batches_from_batch_reads_equal_per_record_reads():
  source = _random_source()
  for process_index in range(2):
    kwargs = dict(global_batch_size=6, process_index=process_index, process_count=2,
                  read_threads=2)
    fast = list(pipeline.make_eval_batches(source, **kwargs))
    slow = list(pipeline.make_eval_batches(_PerRecord(source), **kwargs))
    assert len(fast) == len(slow) == 4
    for got, want in zip(fast, slow):
      for key in ("image", "label", "mask"):
        np.testing.assert_array_equal(got[key], want[key])


def test_input_pipeline_bench_measures_any_source_and_writes_imagefolders(tmp_path):
  from bench import input_pipeline
  written = input_pipeline.make_imagefolder(
      tmp_path, ((np.full((8, 8, 3), 40 * i, np.uint8), i % 2) for i in range(6)))
  assert written == 6
  folder = sources.get_source(f"imagefolder:{tmp_path}", "train", image_size=8)
  assert len(folder) == 6 and folder.num_classes == 2
  for source, loader in ((folder, "DataLoader"), (_random_source(), "BatchReadLoader")):
    measured = input_pipeline.loader_images_per_sec(
        source, batch_size=4, workers=0, read_threads=2, batches=2, warmup=1)
    assert measured["loader"] == loader
    assert min(measured["loader_images_per_sec"], measured["images_per_cpu_second"],
               measured["first_batch_seconds"]) > 0
