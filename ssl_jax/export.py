r"""Exports a run's weights (no optimizer state) from any of its checkpoints.

    python -m ssl_jax.export --workdir W [--step S] [--out DIR] [--format orbax,npz,timm]
        [--subtree PATH]

Formats (comma-separated; default `orbax,npz`, what the training loop writes at the end of a run):
* `orbax`: `DIR/params/`, all params; restore with `orbax.checkpoint.StandardCheckpointer().restore`.
* `npz`: `DIR/params.npz`, all params under flat '/'-joined names such as
  `encoder/blocks_0/attn/qkv/kernel`.
* `timm`: `DIR/timm/model.safetensors` + `DIR/timm/config.json`: the backbone (and the classifier
  of a supervised run) in the names and layouts of timm's VisionTransformer / ResNet
  (`ssl_jax/interop/timm.py`); `timm.create_model('local-dir:DIR/timm', pretrained=True)` loads
  it, and `--config.method.init_from=timm:DIR/timm/model.safetensors` fine-tunes from it.

DIR defaults to `W/export` (latest step) or `W/export/step_S`. The backbone is found in the params
by layout as `method.init_from` finds it (the online/student network, not an EMA copy);
`--subtree` names another, e.g. `method_state/teacher/backbone` for DINO's teacher.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import errors, methods, runs, subtrees
from ssl_jax import workdir as workdir_lib
from ssl_jax.interop import timm as timm_interop
from ssl_jax.models import registry

FORMATS = ckpt_lib.PARAMS_FORMATS + ("timm",)


class ExportError(errors.UserError):
  """An export that cannot be written where it was asked to go."""


def _define_flags() -> None:
  """Defined only when run as a program, so importing this module defines no global flags.
  Idempotent: a process (a test session) may run the program more than once."""
  if "subtree" in flags.FLAGS:
    return
  if "workdir" not in flags.FLAGS:  # train's, where both programs ran in one process.
    flags.DEFINE_string("workdir", None, "Workdir of a training run.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/export).")
  flags.DEFINE_list("format", list(ckpt_lib.PARAMS_FORMATS),
                    f"Comma-separated formats among {', '.join(FORMATS)}.")
  flags.DEFINE_string("subtree", "", "timm: '/'-path of the backbone under "
                      "{params, method_state} (default: found by layout).")


def parse_formats(formats: Sequence[str]) -> tuple[str, ...]:
  """Checked, de-duplicated formats in the order given."""
  formats = tuple(dict.fromkeys(f.strip() for f in formats if f.strip()))
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ValueError(f"--format must be a comma-separated list of {', '.join(FORMATS)}; got "
                     f"{','.join(formats) or 'nothing'}.")
  return formats


def input_normalisation(method) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) of the method's eval preprocessing, read off its output.

  `eval_inputs` maps a canvas to (pixel / 255 - mean) / std; a black and a white canvas give
  a = -mean / std and b = (1 - mean) / std, so std = 1 / (b - a) and mean = -a * std. Reading it
  this way covers every method's view naming (view, global_view_1, ...) in one place.
  """
  size = method.eval_image_size
  canvases = jnp.stack([jnp.zeros((size, size, 3), jnp.uint8),
                        jnp.full((size, size, 3), 255, jnp.uint8)])
  out = np.asarray(method.eval_inputs(canvases), np.float64)
  black, white = out[0].mean(axis=(0, 1)), out[1].mean(axis=(0, 1))
  std = 1.0 / (white - black)
  # float32 arithmetic leaves ~1e-8 noise; six decimals give back the configured constants.
  return np.round(-black * std, 6), np.round(std, 6)


def _classifier(config, path: tuple[str, ...], params: Any) -> tuple[Any, Any]:
  """(head, fc_norm) params of a supervised run's classifier that timm can hold, else Nones."""
  m = config.method
  if m.name != "supervised" or path != ("params", "encoder"):
    return None, None
  if m.feature == "last_blocks_cls" or m.head_batch_norm:
    logging.warning("The classifier of method.feature=%s%s has no timm equivalent; exporting "
                    "the backbone only.", m.feature,
                    " with head_batch_norm" if m.head_batch_norm else "")
    return None, None
  return params["head"], params.get("fc_norm")


def export_timm(config, params: Any, method_state: Any, out: str | epath.Path, *,
                subtree: str = "") -> dict[str, str]:
  """Writes the run's backbone (+ supervised classifier) as timm safetensors + config.json."""
  method = methods.build_method(config)
  encoder = registry.build_encoder(config.model)
  image_size = method.eval_image_size
  expected = jax.eval_shape(lambda: encoder.init(
      jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3), jnp.float32)))
  tree = {"params": params, "method_state": method_state}
  path, backbone = subtrees.find_backbone_subtree(tree, expected["params"], subtree=subtree,
                                                  subtree_key="--subtree")
  variables = {"params": backbone}
  if "batch_stats" in expected:
    _, variables["batch_stats"] = subtrees.find_backbone_subtree(
        method_state, expected["batch_stats"], what="method state (BatchNorm statistics)")
  head, fc_norm = _classifier(config, path, params)
  state_dict = timm_interop.to_state_dict(encoder, variables, image_size=image_size,
                                          head=head, fc_norm=fc_norm)
  mean, std = input_normalisation(method)
  num_classes = 0 if head is None else int(np.shape(head["kernel"])[1])
  timm_config = timm_interop.timm_config(
      config.model, encoder, backbone, image_size=image_size, mean=mean, std=std,
      num_classes=num_classes, fc_norm=fc_norm is not None)
  paths = {}
  if jax.process_index() == 0:
    paths = timm_interop.save(epath.Path(out) / "timm", state_dict, timm_config)
  logging.info("timm export of %s: %s", "/".join(path), timm_config["architecture"])
  return paths


def export_checkpoint(workdir: str, step: int | None = None, out: str | None = None,
                      formats: Sequence[str] = ckpt_lib.PARAMS_FORMATS,
                      subtree: str = "") -> dict[str, str]:
  """Exports checkpoint `step` (default: the latest) of `workdir`; returns {format: path,
  'step': step}."""
  formats = parse_formats(formats)
  run = runs.load_checkpoint(workdir, step)
  if out is None:
    # epath keeps gs:// intact (pathlib would fold it to gs:/).
    out = str(epath.Path(workdir) / "export" / ("" if step is None else f"step_{step}"))
  problem = workdir_lib.directory_write_problem(out)
  if problem:  # Said plainly here, not as an errno line from inside the orbax or npz writer.
    raise ExportError(f"--out {out} cannot be written ({problem}); name a directory this "
                      "process can create and write, e.g. --out /tmp/export.")
  params_formats = tuple(f for f in formats if f in ckpt_lib.PARAMS_FORMATS)
  paths = ckpt_lib.export_params(run.params, out, params_formats) if params_formats else {}
  if "timm" in formats:
    paths.update(export_timm(runs.load_config(workdir), run.params, run.method_state or {}, out,
                             subtree=subtree))
  paths["step"] = str(run.step)
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  if not args.workdir:
    raise app.UsageError("--workdir is required.")
  try:
    formats = parse_formats(args.format)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  if args.subtree and "timm" not in formats:
    # The other formats write every param; a subtree asked for would be silently ignored.
    raise app.UsageError(f"--subtree selects the backbone of --format timm; --format "
                         f"{','.join(formats)} writes every param. Add timm to --format, or "
                         "drop --subtree.")
  try:
    paths = export_checkpoint(args.workdir, args.step, args.out, formats, args.subtree)
  except (errors.UserError, FileNotFoundError, ValueError) as error:
    if errors.debug_enabled():
      raise
    sys.exit(f"export: {error}")
  written = ", ".join(f"{key}: {value}" for key, value in paths.items() if key != "step")
  print(f"Exported step {paths['step']}: {written}")


def run() -> None:
  _define_flags()
  app.run(main, argv=errors.pop_debug_flag(sys.argv))


if __name__ == "__main__":
  run()
