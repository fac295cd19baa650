"""Checkpoints: orbax CheckpointManager with the data iterator state, and params export.

A checkpoint under `workdir/checkpoints/<step>/` holds two items:
* `state`: the whole train state (step, params, optimizer state, method state), saved
  asynchronously from the sharded arrays and restored straight into the run's shardings;
* `data`: the grain iterator state of every process (with `data.streams`: one JSON object of
  every stream's state, `ssl_jax.data.streams.MultiStreamIterator`), so a resumed run
  continues with exactly the batches an uninterrupted run would have seen (no batch lost or
  repeated).

Exports are params only: `workdir/export/params/` (orbax, loads in JAX without this code) and
`workdir/export/params.npz` (flat '/'-joined names, loads anywhere numpy does).

Two guarantees shared by the training loop and every reader (evaluate, export, init_from):
* no non-finite state is trusted: the loop saves only after `all_finite` on the updated params
  and method state, and readers refuse params that `check_finite` rejects;
* a corrupt or partial step (empty folder, truncated array file, missing item or metadata, as
  a kill during a save or a full disk leaves) is skipped with a log line naming it and why, and
  the newest step that restores is used (`Checkpointer.restore_latest`, `restore_checkpoint`);
  only when none restores is it an error, naming the folder to delete.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import time
from typing import Any, Iterator

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util

from ssl_jax import errors

# Where unrestorable steps are moved once an older step restored (kept, never deleted, so
# nothing is lost; a later save of the same step number would otherwise collide with them).
CORRUPT_DIR = "corrupt_checkpoints"


class CheckpointError(errors.UserError, FileNotFoundError):
  """No checkpoint of a workdir (or not the one asked for) is there and restores."""


class NonFiniteError(errors.UserError, FloatingPointError):
  """Training state or stored params hold NaN or infinity."""


def _float_leaves(tree: Any) -> list[Any]:
  return [x for x in jax.tree.leaves(tree)
          if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """A device-side bool scalar: every float in `tree` is finite (one fused reduction)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in _float_leaves(tree)]
                           or [jnp.array(True)]))


def non_finite_names(params: Any) -> list[str]:
  """'/'-joined names of the float arrays of a host params tree that hold NaN or infinity."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  return [name for name, value in flat.items()
          if np.issubdtype(np.asarray(value).dtype, np.inexact)
          and not np.isfinite(np.asarray(value)).all()]


def check_finite(params: Any, origin: str) -> None:
  """Raises `NonFiniteError` if any params array of `origin` holds NaN or infinity."""
  bad = non_finite_names(params)
  if bad:
    total = len(jax.tree.leaves(params))
    raise NonFiniteError(
        f"{origin} holds NaN or infinite values in {len(bad)} of {total} parameter arrays "
        f"(e.g. {bad[0]}): that run diverged, so any number measured from it is meaningless. "
        "Use an earlier checkpoint step (--step) or retrain with a lower optim.lr.")


def _reason(error: BaseException) -> str:
  """One line for a log or message: orbax/tensorstore errors can span hundreds of lines."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  text = lines[0] if lines else ""
  return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _step_dirs(directory: epath.Path) -> list[int]:
  """Every numbered folder, including ones orbax does not list (an empty or partial step)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _no_restorable_step(directory, skipped: list[tuple[int, str]]) -> CheckpointError:
  detail = "; ".join(f"step {step}: {why}" for step, why in skipped)
  return CheckpointError(
      f"No checkpoint under {directory} can be restored ({detail}). If they are damaged, "
      f"delete {directory} (or move it aside) to start this run over from step 0.")


class Checkpointer:
  """Saves and restores (train_state, data iterator) pairs under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.PyGrainCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=async_save,
                                             create=True))
    self._saving: int | None = None  # The step whose asynchronous save was started last.

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore_latest(self, abstract_state: Any,
                     data_iterator: Any = None) -> tuple[int | None, Any]:
    """(step, state) of the newest step that restores, or (None, None) when there is none.

    Newer steps that fail are logged and, once an older one has restored, moved to
    `workdir/corrupt_checkpoints/` so the resumed run can save those step numbers again.

    Raises:
      CheckpointError: step folders exist but none of them restores.
    """
    skipped: list[tuple[int, str]] = []
    for step in reversed(_step_dirs(self.directory)):
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except errors.UserError:
        raise  # Not damage: the step is fine but this run cannot use it (e.g. other data).
      except Exception as error:  # pylint: disable=broad-except
        # A damaged step fails in many ways (KeyError, ValueError, FileNotFoundError, a
        # tensorstore error, "Event loop is closed"); all of them mean: try the older step.
        skipped.append((step, _reason(error)))
        logging.warning("Checkpoint step %d in %s cannot be restored (%s); trying the previous "
                        "step.", step, self.directory, skipped[-1][1])
        continue
      if skipped:
        self._set_aside([s for s, _ in skipped])
        logging.warning("Resumed from step %d; the unrestorable step(s) %s were moved to %s.",
                        step, [s for s, _ in skipped], self.directory.parent / CORRUPT_DIR)
      return step, state
    if skipped:
      raise _no_restorable_step(self.directory, skipped)
    return None, None

  def _set_aside(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      target = self.directory.parent / CORRUPT_DIR
      target.mkdir(parents=True, exist_ok=True)
      for step in steps:
        destination = target / f"{step}_{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(self.directory / str(step)), str(destination))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices("ssl_jax_set_aside_corrupt_checkpoints")
    self.manager.reload()

  def save(self, step: int, train_state: Any, data_iterator: Any, *, force: bool = False) -> bool:
    """Starts saving `step` (asynchronously); a failed save, this one's or the previous one's,
    is a CheckpointError naming the steps that are safely on disk.

    On a single-process run with a local workdir the free space is checked first: a disk
    that cannot take the checkpoint stops the run here, with one line, instead of after a
    failed write (hundreds of lines of tensorstore errors).
    """
    args = {"state": ocp.args.StandardSave(train_state)}
    if data_iterator is not None:
      args["data"] = grain.PyGrainCheckpointSave(data_iterator)
    with self._save_errors(self._saving):
      self.manager.wait_until_finished()  # The previous save's space is then taken.
    with self._save_errors(step):
      self._check_free_space(step, train_state)
      saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    self._saving = step
    return saved

  def _check_free_space(self, step: int, train_state: Any) -> None:
    if jax.process_count() > 1 or "://" in str(self.directory):
      return  # Shared or remote storage: its own errors are reported by `_save_errors`.
    needed = sum(x.nbytes for x in jax.tree.leaves(train_state) if hasattr(x, "nbytes"))
    # Measured: an MAE smoke checkpoint takes 1.09x its arrays' bytes (metadata, the iterator
    # state, OCDBT's index); a false alarm would stop a run that could have gone on.
    needed = int(needed * 1.1) + (256 << 10)
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise CheckpointError(
          f"Not enough free space to save checkpoint step {step} in {self.directory}: it needs "
          f"about {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free. "
          f"{self._saved_steps_text()} Free some space and run the same command again.")

  def _saved_steps_text(self) -> str:
    steps = _step_dirs(self.directory)
    if not steps:
      return "No checkpoint of this run is saved yet."
    return (f"Saved steps: {steps}; the run resumes from step {steps[-1]} when started again "
            "with the same command.")

  @contextlib.contextmanager
  def _save_errors(self, step: int | None) -> Iterator[None]:
    """Orbax's save failures (a full disk, lost permissions, a storage error) as one
    CheckpointError; `--debug` shows the original."""
    try:
      yield
    except CheckpointError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      raise CheckpointError(
          f"Saving checkpoint step {step} in {self.directory} failed ({_reason(error)}). "
          f"{self._saved_steps_text()}") from error

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores into `abstract_state`'s shapes/shardings; advances `data_iterator` in place."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = grain.PyGrainCheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def restore_params(self, step: int | None = None) -> Any:
    """Params only, as host numpy arrays, without knowing the optimizer or shardings."""
    return restore_checkpoint(self.directory.parent, step)[1]["params"]

  def wait(self) -> None:
    with self._save_errors(self._saving):
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()


def checkpoint_steps(workdir: str | pathlib.Path | epath.Path) -> list[int]:
  """Steps with a saved state under `workdir/checkpoints`, ascending; creates nothing."""
  directory = epath.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and (p / "state").exists())


def restore_checkpoint(workdir: str | pathlib.Path | epath.Path, step: int | None = None,
                       target: Any = None) -> tuple[int, Any]:
  """(step, saved train state) of `workdir/checkpoints` at `step`, default the newest that restores.

  The one reader of saved states outside the training loop (`ssl_jax.runs` and every tool go
  through it). Without `target` the whole state comes back as host numpy arrays
  (`restore_to_host`); with `target`, a tree of jax.ShapeDtypeStructs (with shardings) of some
  of the saved top-level items, e.g. {'params': ..., 'method_state': ...}, only those items are
  read, straight into the target's shardings (nothing else is materialised).

  Without `step`, a damaged newest step (empty folder, truncated arrays, missing metadata) is
  skipped with a log line and the previous one read: the readers' counterpart of
  `Checkpointer.restore_latest` (they change nothing on disk).

  Raises:
    CheckpointError (a FileNotFoundError): no checkpoint at all, none at `step` (the message
      lists the saved ones), step `step` is damaged, or no step restores.
  """
  directory = epath.Path(workdir) / "checkpoints"
  if not epath.Path(workdir).is_dir():
    raise CheckpointError(f"No checkpoints under {directory}: {workdir} is not a directory "
                          "(a misspelt --workdir?).")
  candidates = _step_dirs(directory)
  if not candidates:
    raise CheckpointError(f"No checkpoints under {directory}; train first with "
                          f"python -m ssl_jax.train --config ... --workdir {workdir}")
  if step is not None:
    if step not in candidates:
      raise CheckpointError(f"No checkpoint for step {step} under {directory}; available "
                            f"steps: {checkpoint_steps(workdir)}.")
    try:
      return step, _read_state(directory / str(step) / "state", target)
    except Exception as error:  # pylint: disable=broad-except  (see restore_latest)
      raise CheckpointError(f"Checkpoint step {step} under {directory} cannot be restored "
                            f"({_reason(error)}); pick another step of "
                            f"{checkpoint_steps(workdir)}.") from error
  skipped: list[tuple[int, str]] = []
  for candidate in reversed(candidates):
    try:
      return candidate, _read_state(directory / str(candidate) / "state", target)
    except Exception as error:  # pylint: disable=broad-except  (see restore_latest)
      skipped.append((candidate, _reason(error)))
      logging.warning("Checkpoint step %d in %s cannot be restored (%s); using the previous "
                      "step.", candidate, directory, skipped[-1][1])
  raise _no_restorable_step(directory, skipped)


def _read_state(path: epath.Path, target: Any) -> Any:
  if target is None:
    return restore_to_host(path)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  return ocp.PyTreeCheckpointer().restore(
      path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                        partial_restore=True))


def restore_to_host(path: str | pathlib.Path | epath.Path) -> Any:
  """An orbax StandardSave tree as numpy arrays, on any device topology.

  Restoring without a target re-creates the saved shardings, which fails on a machine with
  other devices (a run saved on 8 accelerators, evaluated on one CPU); numpy targets built from
  the checkpoint's metadata read the plain values instead.
  """
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(epath.Path(path))
  metadata = getattr(metadata, "item_metadata", metadata)
  target = jax.tree.map(
      lambda m: np.zeros(m.shape, m.dtype) if hasattr(m, "shape") else m, metadata)
  return checkpointer.restore(epath.Path(path), target)


def flatten_params(params: Any) -> dict[str, np.ndarray]:
  """{'encoder/blocks_0/attn/qkv/kernel': array, ...} as host numpy arrays."""
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  return {name: np.asarray(value) for name, value in flat.items()}


PARAMS_FORMATS = ("orbax", "npz")


def export_params(params: Any, export_dir: str | pathlib.Path,
                  formats: tuple[str, ...] = PARAMS_FORMATS) -> dict[str, str]:
  """Writes params as orbax (`params/`) and/or `.npz`; returns {format: path}."""
  unknown = sorted(set(formats) - set(PARAMS_FORMATS))
  if unknown or not formats:
    raise ValueError(f"params export formats must be among {PARAMS_FORMATS}, got {formats}.")
  export_dir = epath.Path(export_dir)
  export_dir.mkdir(parents=True, exist_ok=True)
  host_params = jax.device_get(params)
  paths = {}
  if "orbax" in formats:
    orbax_path = export_dir / "params"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(orbax_path, host_params, force=True)
    checkpointer.wait_until_finished()
    paths["orbax"] = str(orbax_path)
  if "npz" in formats:
    npz_path = export_dir / "params.npz"
    if jax.process_index() == 0:
      with npz_path.open("wb") as f:
        np.savez(f, **flatten_params(host_params))
    paths["npz"] = str(npz_path)
  return paths


def load_exported_params(export_dir: str | pathlib.Path) -> Any:
  """Inverse of `export_params` (orbax copy), as host arrays."""
  return restore_to_host(epath.Path(export_dir) / "params")
