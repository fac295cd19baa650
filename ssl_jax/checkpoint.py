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
"""

from __future__ import annotations

import pathlib
from typing import Any

import grain.python as grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util


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

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, train_state: Any, data_iterator: Any, *, force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(train_state)}
    if data_iterator is not None:
      args["data"] = grain.PyGrainCheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

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
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
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
  """(step, saved train state) of `workdir/checkpoints` at `step`, default the latest.

  The one reader of saved states outside the training loop (`ssl_jax.runs` and every tool go
  through it). Without `target` the whole state comes back as host numpy arrays
  (`restore_to_host`); with `target`, a tree of jax.ShapeDtypeStructs (with shardings) of some
  of the saved top-level items, e.g. {'params': ..., 'method_state': ...}, only those items are
  read, straight into the target's shardings (nothing else is materialised).

  Raises:
    FileNotFoundError: no checkpoint at all, or none at `step` (the message lists the saved ones).
  """
  directory = epath.Path(workdir) / "checkpoints"
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"No checkpoints under {directory}; train first with "
                            f"python -m ssl_jax.train --config ... --workdir {workdir}")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"No checkpoint for step {step} under {directory}; "
                            f"available steps: {steps}.")
  path = directory / str(step) / "state"
  if target is None:
    return step, restore_to_host(path)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  restored = ocp.PyTreeCheckpointer().restore(
      path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                        partial_restore=True))
  return step, restored


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
