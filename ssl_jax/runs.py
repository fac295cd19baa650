"""Reading an ssl_jax run from its workdir: the one module that does it.

A workdir `W` of `python -m ssl_jax.train` holds
* `W/config.json`: the resolved config the run trained with (`load_config`);
* `W/checkpoints/<step>/state`: train states (`load_checkpoint`, through `ssl_jax.checkpoint`, so
  every reader gets the same step resolution and checks);
* `W/export/params/` and `W/export/params.npz`: params only (`load_exported`, `read_exported_npz`);
* `W/metrics.jsonl`: one JSON record per logged step (`read_metrics`);
* `W/eval/*.json`: results of `python -m ssl_jax.evaluate` (`read_evaluations`).

The CLIs (evaluate, export, viz, report) and library code that reuses a finished run
(supervised `method.init_from`, the Perceptual MAE frozen feature extractor) read runs only
through here; a missing or misspelt workdir is a `RunError` naming it, and reading never
creates anything in it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, errors, subtrees
from ssl_jax.data import augment
from ssl_jax.models import registry, vit

PathLike = epath.PathLike


class RunError(errors.UserError, FileNotFoundError):
  """A run cannot be read as asked: no such workdir, no config.json, nothing saved, or a
  damaged metrics log."""


def _existing_dir(path: PathLike, what: str) -> epath.Path:
  """`path` as an epath if it is a directory, else a RunError saying which `what` is missing."""
  path = epath.Path(path)
  if not path.exists():
    raise RunError(f"No {what} in {path}: it does not exist. Pass the --workdir of an "
                   "ssl_jax.train run (check its spelling).")
  if not path.is_dir():
    raise RunError(f"No {what} in {path}: it is a file, not a directory. Pass the --workdir of "
                   "an ssl_jax.train run.")
  return path


def load_config(workdir: PathLike, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The run's resolved config (`W/config.json`), locked, with `key=value` overrides applied.

  The trainer validated the config before writing it, so only an overridden config is
  validated again (a run written by an older version stays readable).
  """
  path = _existing_dir(workdir, "config.json") / "config.json"
  if not path.exists():
    raise RunError(f"{workdir} has no config.json (ssl_jax.train writes it when a run "
                   "starts); pass the run's workdir, not a subfolder of it.")
  config = config_lib.from_json(path.read_text())
  config.lock()
  if overrides:
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config)
  return config


@dataclasses.dataclass(frozen=True)
class RunVariables:
  """A run's params (and method state when read from a checkpoint)."""
  params: Any
  method_state: Any | None
  step: int | None
  origin: str


def checkpoint_steps(workdir: PathLike) -> list[int]:
  """Steps of the run's saved train states, ascending ([] when there are none)."""
  return ckpt_lib.checkpoint_steps(_existing_dir(workdir, "checkpoints"))


def load_checkpoint(workdir: PathLike, step: int | None = None, *,
                    shardings: Any = None) -> RunVariables:
  """Params and method state of checkpoint `step` (default: the latest) of a workdir.

  Args:
    workdir: the run's workdir.
    step: a saved step; None for the latest.
    shardings: None for host numpy arrays (any device topology: a run saved on 8 accelerators
      reads on one CPU). Else {'params': ..., 'method_state': ...} trees of
      jax.ShapeDtypeStructs with shardings (as `jax.eval_shape(method.init, ...)` gives, plus
      shardings): the two items are read straight into them, the optimizer state not at all.

  Raises:
    RunError: no such workdir. ckpt_lib.CheckpointError (a FileNotFoundError): no checkpoint
      (at `step`), or none that restores. ckpt_lib.NonFiniteError: the params hold NaN/inf.
  """
  workdir = _existing_dir(workdir, "checkpoints")
  step, state = ckpt_lib.restore_checkpoint(workdir, step, target=shardings)
  origin = f"checkpoint step {step} of {workdir}"
  ckpt_lib.check_finite(state["params"], origin)  # No number is measured on a diverged run.
  return RunVariables(params=state["params"], method_state=state.get("method_state"),
                      step=step, origin=origin)


def load_exported(export_dir: PathLike) -> RunVariables:
  """Params written by `ssl_jax.export` (or the end of a run): `export_dir/params/`, on host."""
  export_dir = _existing_dir(export_dir, "exported params")
  if not (export_dir / "params").exists():
    raise RunError(f"{export_dir} has no exported params (params/); export a run with "
                   "python -m ssl_jax.export --workdir W.")
  params = jax.device_get(ckpt_lib.load_exported_params(export_dir))
  origin = f"exported params in {export_dir}"
  ckpt_lib.check_finite(params, origin)
  return RunVariables(params=params, method_state=None, step=None, origin=origin)


def read_exported_npz(export_dir: PathLike) -> dict[str, np.ndarray]:
  """`export_dir/params.npz` as {'encoder/blocks_0/attn/qkv/kernel': array, ...}."""
  path = _existing_dir(export_dir, "exported params") / "params.npz"
  if not path.exists():
    raise RunError(f"{export_dir} has no params.npz; export a run with "
                   "python -m ssl_jax.export --workdir W.")
  with path.open("rb") as f, np.load(f) as npz:
    return {name: npz[name] for name in npz.files}


def load_variables(path: PathLike, step: int | None = None) -> RunVariables:
  """What a run left to evaluate or fine-tune from, on host: checkpoint `step`, else the latest
  checkpoint, else `path/export` params; `path` may also be an export directory itself.

  Raises:
    RunError: if `path` holds neither checkpoints nor exported params.
    FileNotFoundError: if there is no checkpoint at `step`.
  """
  path = _existing_dir(path, "checkpoints or exported params")
  if step is not None or checkpoint_steps(path):
    return load_checkpoint(path, step)
  for export_dir in (path / "export", path):
    if (export_dir / "params").exists():
      return load_exported(export_dir)
  raise RunError(f"{path} has no checkpoints/<step>/state and no exported params "
                 "(export/params or params/); is it an ssl_jax workdir whose run saved "
                 "a checkpoint?")


def read_metrics(workdir: PathLike) -> list[dict[str, Any]]:
  """All records of `W/metrics.jsonl`, in order ([] when the run logged nothing yet).

  A last line cut short (the run was killed while writing it) is left out with a warning; a
  malformed line before the last is an error naming it.
  """
  path = _existing_dir(workdir, "metrics.jsonl") / "metrics.jsonl"
  if not path.exists():
    return []
  lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1)
           if line.strip()]
  records = []
  for index, (number, line) in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      if index == len(lines) - 1:
        logging.warning("%s: ignoring the truncated last line %d (%s).", path, number, error)
        break
      raise RunError(f"{path} line {number} is not JSON ({error}); only the last line may "
                       "be cut short. Remove the damaged line.") from error
  return records


def read_evaluations(workdir: PathLike) -> list[dict[str, Any]]:
  """The records `python -m ssl_jax.evaluate` wrote under `W/eval/`, by file name."""
  eval_dir = _existing_dir(workdir, "evaluations") / "eval"
  return [json.loads(path.read_text()) for path in sorted(eval_dir.glob("*.json"))]


# ----------------------------------------------------------------------------------------------
# A run's ViT encoder: the Perceptual MAE frozen feature extractor, `viz compare`.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunEncoder:
  """A ViT encoder of a finished ssl_jax run: module, host params, and its input recipe."""
  encoder: vit.VisionTransformer
  params: Any
  params_path: str
  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def preprocess(self, images_unit: jax.Array) -> jax.Array:
    """[B, H, W, 3] in [0, 1] -> the encoder's normalised input at its own resolution."""
    size = self.image_size
    if images_unit.shape[1:3] != (size, size):
      images_unit = jax.image.resize(images_unit, (images_unit.shape[0], size, size, 3),
                                     method="linear", antialias=True)
    return augment.normalize(images_unit, self.mean, self.std)


def load_encoder(workdir: PathLike, *, step: int | None = None, params_path: str = "",
                 params_path_key: str = "the params path", params: Any = None) -> RunEncoder:
  """The ViT encoder of the run in `workdir` (config.json + checkpoints/), built from its
  config and found in its params by layout (`subtrees.find_backbone_subtree`).

  Args:
    step: checkpoint step (default: the latest).
    params_path: '/'-path of the encoder in the params ('generator/encoder'); "" searches.
    params_path_key: the config key or flag that sets `params_path`, for the messages.
    params: the run's already restored params (skips reading the checkpoint again).
  """
  run_config = load_config(workdir)
  model_config = run_config.model
  if not str(model_config.name).startswith("vit_"):
    raise ValueError(f"the run in {workdir} trained model.name={model_config.name!r}; a "
                     "feature extractor / attention comparison needs a ViT checkpoint.")
  method_config = run_config.get("method", ml_collections.ConfigDict())
  view = method_config.get("view", None)
  image_size = int(view.size if view is not None else run_config.data.image_size)
  defaults = augment.view_config()
  mean = tuple(view.mean) if view is not None else tuple(defaults.mean)
  std = tuple(view.std) if view is not None else tuple(defaults.std)
  encoder = registry.build_encoder(model_config)
  expected = jax.eval_shape(
      lambda: encoder.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3))))
  if params is None:
    params = load_checkpoint(workdir, step).params
  path, encoder_params = subtrees.find_backbone_subtree(
      params, expected["params"], subtree=params_path, subtree_key=params_path_key)
  return RunEncoder(encoder=encoder, params=encoder_params, params_path="/".join(path),
                    image_size=image_size, mean=mean, std=std)
