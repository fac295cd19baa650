"""What a trainer checks and claims in its workdir before it writes anything.

* The path: a workdir that is a file, or lies under one, is refused before any work.
* One trainer per workdir: `trainer.lock` holds the owner's host, pid and process start time.
  A second trainer is refused with who holds it; a lock whose process is gone (killed, host
  rebooted) is stale and taken over with a log line. Only process 0 locks, and only local
  paths (a gs:// workdir is shared by every host of a pod; its runs are started by a launcher).
* The config: resuming a run whose checkpoints were made with another model, method, data,
  batch size, seed, worker count or optimizer would either fail deep inside orbax or, worse,
  silently train a different run. Such changes are refused, listing every changed key with its
  old and new value; changes that are safe mid-run (length, cadences, evaluation) are accepted
  and appended to `config_history.jsonl` before `config.json` is rewritten.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import socket
from typing import Any, Iterator

import jax
import ml_collections
from absl import logging

from ssl_jax import config_lib, errors

LOCK_FILE = "trainer.lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

# Keys a resumed run may change: how long it runs, how often it logs, evaluates and saves, how
# it is evaluated, where the same data is read from, and how the same step is computed (the
# mesh; the ViT speed levers, which keep the params and the math: a run preempted on GPUs may
# resume on a TPU with cudnn attention turned into splash). Every other key (model, method, data
# source and size, batch size, seed, worker count, optimizer, online probe) is fixed per run.
CHANGEABLE = ("total_steps", "epochs", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints", "export_at_end", "visualize", "mesh.", "data.eval_source",
              "data.eval_train_split", "data.eval_test_split", "data.data_dir", "data.prefetch",
              "eval.", "profile_steps", "compilation_cache_dir", "collapse.",
              "wandb.", "model.attention_impl", "model.remat", "model.scan_blocks",
              "model.token_gather")
FIXED_EVEN_IF_MATCHED = ("eval.online_probe",)  # Adds a head and optimizer state.


def _is_remote(workdir: str) -> bool:
  return "://" in str(workdir)


def check_path(workdir: str) -> None:
  """Refuses a workdir that is a file or lies under a file (before anything is created)."""
  if _is_remote(workdir):
    return
  path = pathlib.Path(workdir).absolute()
  if path.exists() and not path.is_dir():
    raise errors.WorkdirError(f"--workdir {workdir} is a file, not a directory; pass a new or "
                              "existing directory.")
  for parent in path.parents:
    if parent.exists():
      if not parent.is_dir():
        raise errors.WorkdirError(f"--workdir {workdir} lies under {parent}, which is a file; "
                                  "pass a path under a directory.")
      break


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  return stat.rsplit(")", 1)[1].split()[19]  # Field 22; the name in (...) may hold spaces.


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Exists, owned by another user.
  return True


def _holder_is_gone(holder: dict[str, Any]) -> bool:
  """True only when the lock's process provably no longer runs (same host, pid gone/reused)."""
  if holder.get("host") != socket.gethostname():
    return False
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid == os.getpid() or not _alive(pid):
    return True
  started = holder.get("start_time")
  return started is not None and _start_time(pid) not in (None, started)


class WorkdirLock:
  """`workdir/trainer.lock`, created atomically (O_EXCL) and removed on release."""

  def __init__(self, workdir: str):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._held = False

  def acquire(self) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()),
          "since": datetime.datetime.now().isoformat(timespec="seconds")}
    for _ in range(2):  # A second try after removing a stale lock.
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read_holder()
        if holder is not None and not _holder_is_gone(holder):
          raise errors.WorkdirError(
              f"{self.path.parent} is in use by another trainer (pid {holder.get('pid')} on "
              f"{holder.get('host')}, since {holder.get('since')}); wait for it, stop it, or "
              f"use another --workdir. If that trainer is gone, delete {self.path}.") from None
        logging.warning("Taking over the stale lock %s (%s: process gone).", self.path,
                        holder or "unreadable")
        self.path.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, "w") as file:
        json.dump(me, file)
      self._held = True
      return
    raise errors.WorkdirError(f"Could not take the lock {self.path}; another trainer is "
                              "starting in the same workdir.")

  def _read_holder(self) -> dict[str, Any] | None:
    try:
      holder = json.loads(self.path.read_text())
    except (OSError, ValueError):
      return None  # Empty or torn: written by a process killed while it created the lock.
    return holder if isinstance(holder, dict) else None

  def release(self) -> None:
    if self._held:
      holder = self._read_holder()
      if holder is not None and holder.get("pid") == os.getpid():
        self.path.unlink(missing_ok=True)
      self._held = False


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _changeable(key: str) -> bool:
  if key in FIXED_EVEN_IF_MATCHED:
    return False
  return any(key == c or (c.endswith(".") and key.startswith(c)) for c in CHANGEABLE)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """{key: (old, new)} of the keys both configs hold with different values."""
  old_flat, new_flat = _flat(old), _flat(new)
  return {key: (old_flat[key], new_flat[key]) for key in sorted(old_flat.keys() & new_flat.keys())
          if old_flat[key] != new_flat[key]}


def _has_checkpoints(workdir: pathlib.Path) -> bool:
  directory = workdir / "checkpoints"
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def record_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Checks `config` against the run already in `workdir`, then writes config.json.

  Raises:
    WorkdirError: the workdir holds checkpoints made with a value of a fixed key.
  """
  path = pathlib.Path(workdir)
  text = config_lib.to_json(config)
  old_file = path / CONFIG_FILE
  if old_file.is_file() and _has_checkpoints(path):
    try:
      old = json.loads(old_file.read_text())
    except ValueError:
      old = None  # A torn config.json: the checkpoints are checked by restoring them.
    if old is not None:
      changes = config_changes(old, json.loads(text))
      fixed = {k: v for k, v in changes.items() if not _changeable(k)}
      if fixed:
        listed = "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in fixed.items())
        raise errors.WorkdirError(
            f"{workdir} holds a run whose checkpoints were made with another config, and these "
            f"keys cannot change mid-run: {listed}. Undo the change to resume, or pass a new "
            "--workdir to start a fresh run.")
      if changes:
        logging.info("Resuming with changed %s", ", ".join(
            f"{k}: {o!r} -> {n!r}" for k, (o, n) in changes.items()))
        entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), "changes": {k: [o, n] for k, (o, n) in changes.items()}}
        with (path / HISTORY_FILE).open("a") as file:
          file.write(json.dumps(entry, default=str) + "\n")
  old_file.write_text(text)


def config_to_build(config: ml_collections.ConfigDict,
                    workdir: str) -> ml_collections.ConfigDict:
  """`config` without `method.init_from` when `workdir` has checkpoints to resume from.

  The source of a fine-tune is read only to initialise it; a resumed run restores every weight
  from its own checkpoint, so it must not need (or re-read) a source that may be gone.
  """
  if not (config.method.get("init_from") and _has_checkpoints(pathlib.Path(workdir))):
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.method.init_from = ""
  config.lock()
  return config


def directory_write_problem(directory: str) -> str | None:
  """Why files cannot be written in `directory` (created if missing; local or any epath
  backend), or None: a probe file is written and removed, which also catches a read-only mount
  that permission bits (and root) would not show."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = epath.Path(directory)
  probe = path / f".ssl_jax_write_test_{os.getpid()}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as error:  # No permission, a read-only mount, a file in the way.
    return str(error)
  return None


@contextlib.contextmanager
def open_run(config: ml_collections.ConfigDict, workdir: str) -> Iterator[None]:
  """Checks the path, creates the workdir, locks it and records the config; unlocks on exit."""
  check_path(workdir)
  lock = None
  from etils import epath  # pylint: disable=g-import-not-at-top

  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0 and _is_remote(workdir):
      (epath.Path(workdir) / CONFIG_FILE).write_text(config_lib.to_json(config))
  except OSError as error:  # Read-only file system, no permission, a path nothing can create.
    raise errors.WorkdirError(f"--workdir {workdir} cannot be created or written ({error}); "
                              "pass a directory this user can write.") from None
  if jax.process_index() == 0 and not _is_remote(workdir):
    lock = WorkdirLock(workdir)
    lock.acquire()
  try:
    if lock is not None:
      record_config(config, workdir)
    yield
  finally:
    if lock is not None:
      lock.release()
