"""Device prefetch: global batches built `size` steps ahead of the loop, in a background thread.

The loop's input is the host iterator (`ssl_jax.data.streams.make_train_data`) seen through
`DevicePrefetcher`: a thread reads the next host batch and turns it into one global sharded
pytree (`parallel.host_to_global`, i.e. `jax.make_array_from_process_local_data`), so reading,
decoding and the host-to-device copy of step t+1 overlap step t's compute (the
`flax.jax_utils.prefetch_to_device` idea for `jax.Array`s).

Resumption stays exact: with every batch the thread also records the host iterator's state
right after it, and `get_state()` returns the state recorded with the last batch the loop has
taken, not the host iterator's (which is up to `size + 1` batches ahead). A checkpoint therefore
holds the same bytes it would without prefetching. `size=0` builds each batch when it is asked
for, in the caller's thread.

Nothing is read before the first batch is asked for: the thread starts then, not when the
prefetcher is built. The loop builds it before restoring a checkpoint's data position into it
(`set_state`, refused once the thread runs), so every batch comes from the restored position
however long start-up takes.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

from jax.sharding import Mesh

from ssl_jax import parallel

_POLL_SECONDS = 0.1


class DevicePrefetcher:
  """Iterator of global batches; `get_state` / `set_state` / `start_prefetch` like grain's."""

  def __init__(self, host_iterator: Iterator, mesh: Mesh, size: int):
    if size < 0:
      raise ValueError(f"data.prefetch must be >= 0 (0: no prefetch), got {size}.")
    self._host = host_iterator
    self._mesh = mesh
    self._size = size
    self._state = host_iterator.get_state()
    self._queue: queue.Queue | None = None
    self._thread: threading.Thread | None = None
    self._stop = threading.Event()

  def _next_item(self) -> tuple[Any, bytes]:
    host_batch = next(self._host)
    state = self._host.get_state()
    return parallel.host_to_global(host_batch, self._mesh), state

  def _produce(self) -> None:
    while not self._stop.is_set():
      try:
        item = ("batch", self._next_item())
      except BaseException as error:  # Handed to the loop, raised at the step that needed it.
        item = ("error", error)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=_POLL_SECONDS)
          break
        except queue.Full:
          continue
      if item[0] == "error":
        return

  def __iter__(self) -> "DevicePrefetcher":
    return self

  def __next__(self) -> Any:
    if self._stop.is_set():
      # A new thread would see the stop flag and exit at once, leaving this call waiting forever
      # on an empty queue.
      raise RuntimeError("DevicePrefetcher was closed; build a new one to read more batches.")
    if self._size == 0:
      batch, self._state = self._next_item()
      return batch
    if self._thread is None:
      self._queue = queue.Queue(maxsize=self._size)
      self._thread = threading.Thread(target=self._produce, name="device_prefetch",
                                      daemon=True)
      self._thread.start()
    kind, value = self._queue.get()
    if kind == "error":
      raise value
    batch, self._state = value
    return batch

  def get_state(self) -> bytes:
    """The host iterator's state after the last batch this iterator returned."""
    return self._state

  def set_state(self, state: bytes) -> None:
    if self._thread is not None:
      raise RuntimeError("DevicePrefetcher.set_state must come before the first batch.")
    self._host.set_state(state)
    self._state = state

  def start_prefetch(self) -> None:
    """Called by grain's checkpoint handler after a restore: lets the host iterator start
    reading while the train state loads (this thread starts on the first batch)."""
    if hasattr(self._host, "start_prefetch"):
      self._host.start_prefetch()

  def close(self) -> None:
    """Stops the thread (it may be blocked on a full queue) and drops the batches it built."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
