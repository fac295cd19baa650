"""Device prefetch: the same global batches, in order, and the checkpointed state of the batch
the loop took last, however far ahead the thread has read."""

import contextlib
import threading
import time

import jax
import numpy as np
import pytest

from ssl_jax import config_lib, parallel
from ssl_jax.data import pipeline, prefetch, sources

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


def test_negative_size_is_a_clear_error(mesh):
  with pytest.raises(ValueError, match="data.prefetch must be >= 0"):
    prefetch.DevicePrefetcher(_host_iterator(), mesh, -1)
