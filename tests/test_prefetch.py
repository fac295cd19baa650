"""Device prefetch: the same global batches, in order, and the checkpointed state of the batch
the loop took last, however far ahead the thread has read."""

import contextlib
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, parallel
from ssl_jax.data import pipeline, prefetch, sources
from tests.fixtures import host_iterators

NUM_RECORDS = 40


def _host_iterator(seed=0):
  images = np.broadcast_to(np.arange(NUM_RECORDS, dtype=np.uint8)[:, None, None, None],
                           (NUM_RECORDS, 2, 2, 3))
  source = sources.ArraySource(images, np.arange(NUM_RECORDS), image_size=2, num_classes=None,
                               description=f"indexed:{NUM_RECORDS}")
  return iter(pipeline.make_train_loader(source, global_batch_size=8, seed=seed,
                                         process_index=0, process_count=1, read_threads=2))


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh(config_lib.base_config().mesh, jax.devices())


@pytest.mark.parametrize("size", [0, 3])
def test_prefetched_batches_and_state_equal_the_host_iterator(mesh, size):
  reference = _host_iterator()
  batches = prefetch.DevicePrefetcher(_host_iterator(), mesh, size)
  try:
    for _ in range(4):
      want = next(reference)
      got = next(batches)
      assert got["label"].sharding == parallel.batch_sharding(mesh)
      np.testing.assert_array_equal(np.asarray(got["label"]), want["label"])
      np.testing.assert_array_equal(np.asarray(got["image"]), want["image"])
    time.sleep(0.3)  # Let the thread run ahead: the state must not follow it.
    state = batches.get_state()
    assert state == reference.get_state()
  finally:
    batches.close()
  resumed = prefetch.DevicePrefetcher(_host_iterator(), mesh, size)
  resumed.set_state(state)
  try:
    for _ in range(3):
      np.testing.assert_array_equal(np.asarray(next(resumed)["label"]),
                                    next(reference)["label"])
    with (pytest.raises(RuntimeError, match="before the first batch") if size
          else contextlib.nullcontext()):
      resumed.set_state(state)
  finally:
    resumed.close()


class _Failing:
  """Three batches, then an error; a host iterator's protocol."""

  def __init__(self):
    self.count = 0

  def __next__(self):
    self.count += 1
    if self.count > 3:
      raise OSError("disk gone")
    return {"image": np.full((8, 2, 2, 3), self.count, np.uint8),
            "label": np.full((8,), self.count, np.int32)}

  def get_state(self):
    return str(self.count).encode()


def test_a_read_error_reaches_the_step_that_needed_the_batch_and_close_stops_the_thread(mesh):
  batches = prefetch.DevicePrefetcher(_Failing(), mesh, 2)
  assert [int(next(batches)["label"][0]) for _ in range(3)] == [1, 2, 3]
  assert batches.get_state() == b"3"
  with pytest.raises(OSError, match="disk gone"):
    next(batches)
  batches.close()

  def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "device_prefetch"]

  blocked = prefetch.DevicePrefetcher(_host_iterator(), mesh, 1)
  next(blocked)
  time.sleep(0.2)  # The thread is now waiting on a full queue.
  assert prefetch_threads()
  blocked.close()
  assert not prefetch_threads()
  with pytest.raises(RuntimeError, match="was closed; build a new one"):
    next(blocked)  # Not a wait forever on a queue that no thread fills.


class _Reads(host_iterators.Forwarding):
  """A host iterator that notes the position (its state) each batch is read from."""

  def __init__(self, host):
    super().__init__(host)
    self.read_from = []

  def __next__(self):
    self.read_from.append(self._host.get_state())
    return next(self._host)


def test_a_checkpoint_restored_after_construction_is_where_the_first_read_starts(mesh,
                                                                                 tmp_path):
  """The loop builds its prefetcher before it restores the checkpoint into it: a batch read
  before the first one is asked for would come from the position before the restore."""
  saved = _host_iterator()
  for _ in range(3):
    next(saved)
  position = saved.get_state()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  state = {"step": jnp.asarray(3)}
  checkpointer.save(3, state, saved, force=True)
  host = _Reads(_host_iterator())
  batches = prefetch.DevicePrefetcher(host, mesh, 3)
  try:
    step, _ = checkpointer.restore_latest(jax.eval_shape(lambda: state), batches)
    assert step == 3
    assert host.read_from == []  # Constructed and restored: nothing read yet.
    assert batches.get_state() == position
    for _ in range(4):
      np.testing.assert_array_equal(np.asarray(next(batches)["label"]), next(saved)["label"])
  finally:
    batches.close()
    checkpointer.close()
  assert host.read_from[0] == position


def test_negative_size_is_a_clear_error(mesh):
  with pytest.raises(ValueError, match="data.prefetch must be >= 0"):
    prefetch.DevicePrefetcher(_host_iterator(), mesh, -1)
