"""Optional Weights & Biases logging (`pip install ssl-jax[wandb]`), process 0 only.

On when `config.wandb.project` is set: `wandb.init(project, entity, name, mode, dir=W,
config=<the run config>, resume='allow', id=<stable per workdir>)`, then every scalar the loop
writes to metrics.jsonl goes to `wandb.log(scalars, step=step)`. A resumed run continues the same
W&B run (its id is kept in `W/wandb_id`). W&B is never required: with `wandb.project=""` nothing
imports it, and with a project set but the package missing the run stops before any work with a
one-line error saying what to install.
"""

from __future__ import annotations

import importlib
import pathlib
import uuid
from typing import Any, Mapping

import ml_collections
import numpy as np
from etils import epath

from ssl_jax import errors

ID_FILE = "wandb_id"


class WandbMissingError(errors.UserError):
  """wandb.project is set but the wandb package is not installed."""


def _import_wandb():
  try:
    return importlib.import_module("wandb")
  except ImportError:
    raise WandbMissingError(
        "wandb.project is set but the wandb package is not installed: pip install "
        "'ssl-jax[wandb]' (or pip install wandb), or drop --config.wandb.project.") from None


def _run_id(workdir: str) -> str:
  """One W&B run per workdir: the id is made on the first start and reused on resume."""
  path = epath.Path(workdir) / ID_FILE
  if path.exists():
    return path.read_text().strip()
  run_id = uuid.uuid4().hex[:16]
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(run_id + "\n")
  return run_id


def _is_remote(workdir: str) -> bool:
  return "://" in str(workdir)


def _run_name(workdir: str) -> str:
  """The workdir's last component (of its absolute path, so that '.' has a name)."""
  path = epath.Path(workdir) if _is_remote(workdir) else pathlib.Path(workdir).resolve()
  return path.name


class WandbWriter:
  """Scalars (and images) to one W&B run; a writer of `ssl_jax.metrics_io.Writers`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self._wandb = _import_wandb()
    settings = config.wandb
    self._run = self._wandb.init(
        project=settings.project, entity=settings.entity or None,
        name=settings.name or _run_name(workdir), mode=settings.mode,
        # wandb keeps its own files in a local directory: the workdir unless it is gs://.
        dir=None if _is_remote(workdir) else str(workdir), config=config.to_dict(),
        id=_run_id(workdir), resume="allow")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._run.log({name: float(value) for name, value in scalars.items()}, step=int(step))

  def write_images(self, step, images):
    """clu's images are [N, H, W, C] batches: one W&B image each."""
    self._run.log({name: [self._wandb.Image(image) for image in np.asarray(batch)]
                   for name, batch in images.items()}, step=int(step))

  def flush(self):
    pass

  def close(self):
    self._run.finish()


def check_available(config: ml_collections.ConfigDict) -> None:
  """Fails early (before data and compilation) when W&B is asked for but not installed."""
  if config.wandb.project:
    _import_wandb()
