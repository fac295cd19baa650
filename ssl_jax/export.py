r"""Exports a run's params (no optimizer or method state) from any of its checkpoints.

    python -m ssl_jax.export --workdir W [--step S] [--out DIR]

Writes `DIR/params/` (orbax, restore with `orbax.checkpoint.StandardCheckpointer().restore`) and
`DIR/params.npz` (flat '/'-joined names such as `encoder/blocks_0/attn/qkv/kernel`). DIR
defaults to `W/export` (latest step) or `W/export/step_S`. The training loop does the same at
the end of every run.
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import runs


def _define_flags() -> None:
  """Defined only when run as a program, so importing this module defines no global flags."""
  flags.DEFINE_string("workdir", None, "Workdir of a training run.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/export).")


def export_checkpoint(workdir: str, step: int | None = None,
                      out: str | None = None) -> dict[str, str]:
  run = runs.load_checkpoint(workdir, step)
  if out is None:
    out = str(pathlib.Path(workdir) / "export" / ("" if step is None else f"step_{step}"))
  paths = ckpt_lib.export_params(run.params, out)
  paths["step"] = str(run.step)
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  if not args.workdir:
    raise app.UsageError("--workdir is required.")
  paths = export_checkpoint(args.workdir, args.step, args.out)
  print(f"Exported step {paths['step']}: {paths['orbax']} and {paths['npz']}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
