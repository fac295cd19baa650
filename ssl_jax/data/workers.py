"""grain worker processes exit when the trainer that started them dies.

grain starts its workers (`data.worker_count > 0`) as daemon processes: they stop when the
trainer exits normally, but a trainer killed with SIGKILL (OOM killer, `kill -9`, a preempted
container) cannot stop them, and each keeps its memory (about 0.9 GB on ImageNet) forever.
grain 0.2 offers no worker hook through `DataLoader`, but every worker unpickles the data
source it reads, so the sources call `exit_with_parent()` from `__setstate__`: in a child
process it starts a thread that waits on the parent's sentinel (a pipe the OS closes when the
parent dies, so no polling) and then ends the worker.
"""

from __future__ import annotations

import multiprocessing
import os
import threading

_armed = False


def _wait_then_exit(parent) -> None:
  parent.join()  # Returns when the parent process has died.
  os._exit(1)  # pylint: disable=protected-access  (no cleanup: the reader of our output is gone)


def exit_with_parent() -> None:
  """In a multiprocessing child (a grain worker), exits as soon as its parent dies."""
  global _armed
  parent = multiprocessing.parent_process()
  if parent is None or _armed:
    return  # The trainer itself, or already armed.
  _armed = True
  threading.Thread(target=_wait_then_exit, args=(parent,), daemon=True,
                   name="ssl_jax-exit-with-parent").start()


class ExitsWithParent:
  """Mixin for data sources: unpickling one in a worker process arms `exit_with_parent`."""

  def __setstate__(self, state):
    self.__dict__.update(state)
    exit_with_parent()
