r"""Writes a teacher's predictions for every record of an image source: the labels of self-training.

    python -m ssl_jax.label --workdir TEACHER --data SPEC [--split train] --out labels.npz
        [--transforms flip,scales] [--scales 0.75,1.25] [--step N] [--batch_size B]

TEACHER is an ssl_jax.train workdir of a method with a classifier (`method.logits`: supervised,
pseudo_label, mean_teacher, fixmatch, noisy_student); its checkpoint at step N (default: the
latest) is read through `ssl_jax.runs`, and the model the method evaluates labels (the EMA model
where it keeps one). SPEC is any `data.source` spec (`digits`, `npz:PATH`, `imagefolder:DIR`,
`tfds:NAME`), read at the teacher's `data.image_size`; labels are not needed.

`--transforms` ensembles the teacher over transformations of each image, data distillation
(Radosavovic et al. 2018, "Data Distillation: Towards Omni-Supervised Learning"): the softmax
is averaged over the identity, plus `flip` (horizontal flip) and/or `scales` (each scale s of
`--scales`: the image resized to s times its side and back to the canvas, i.e. seen at s times
its resolution; the canvas stays the teacher's input size).

Writes OUT (`ssl_jax.data.pseudo_labels`): `soft` [N, C] probabilities, `hard`, `confidence`
and `meta` (teacher, step, source, split, transforms), row i for record i: one ordered pass
over the source, the ragged last batch included, batches sharded over the devices as the
evaluators shard them. Train a student on it with a `pseudo_labeled` data stream
(configs/noisy_student.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath

from ssl_jax import errors, parallel, runs
from ssl_jax import workdir as workdir_lib
from ssl_jax.data import pipeline, pseudo_labels, sources
from ssl_jax.methods import build_method

TRANSFORMS = ("flip", "scales")
DEFAULT_SCALES = (0.75, 1.25)
CLASSIFIER_METHODS = "supervised, pseudo_label, mean_teacher, fixmatch, noisy_student"


class LabelError(errors.UserError, ValueError):
  """The labelling cannot run as asked (no classifier, bad transform or batch size)."""


def parse_transforms(text: str | Sequence[str]) -> tuple[str, ...]:
  names = text.split(",") if isinstance(text, str) else list(text)
  names = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
  unknown = [n for n in names if n not in TRANSFORMS]
  if unknown:
    raise LabelError(f"Unknown --transforms {unknown}; choose from {', '.join(TRANSFORMS)} "
                     "(comma-separated; the identity is always included).")
  return names


def rescale(images: jax.Array, scale: float) -> jax.Array:
  """uint8 [B, S, S, 3] -> each image resized to round(s * S) and back to S (antialiased
  bilinear), rounded to uint8: the image seen at `scale` times its resolution."""
  size = images.shape[1]
  side = max(int(round(scale * size)), 1)
  unit = images.astype(jnp.float32)
  unit = jax.image.resize(unit, (images.shape[0], side, side, 3), "linear", antialias=True)
  unit = jax.image.resize(unit, images.shape, "linear", antialias=True)
  return jnp.clip(jnp.round(unit), 0, 255).astype(jnp.uint8)


def views(transforms: Sequence[str], scales: Sequence[float]) -> dict[str, Callable]:
  """{name: uint8 images -> uint8 images}: the identity first, then each transformation."""
  out = {"identity": lambda images: images}
  if "flip" in transforms:
    out["flip"] = lambda images: images[:, :, ::-1]
  if "scales" in transforms:
    for scale in scales:
      out[f"scale_{scale:g}"] = lambda images, s=scale: rescale(images, s)
  return out


def ensemble_probabilities(method, params, state, images, view_fns: Sequence[Callable]):
  """mean over the views v of softmax(method.logits(v(images))): [B, C] float32."""
  probs = [jax.nn.softmax(method.logits(params, state, fn(images)).astype(jnp.float32), axis=-1)
           for fn in view_fns]
  return jnp.mean(jnp.stack(probs), axis=0)


def predict(method, params, state, source, *, view_fns: Sequence[Callable], batch_size: int,
            mesh) -> np.ndarray:
  """The ensembled probabilities [len(source), C] of every record, in record order.

  Each process reads its contiguous share of the records (`pipeline.make_eval_batches`); the
  outputs are replicated, so every process fills the rows of all of them.
  """
  sharding = parallel.batch_sharding(mesh)
  fn = jax.jit(lambda p, s, images: ensemble_probabilities(method, p, s, images, view_fns),
               out_shardings=parallel.replicated(mesh))
  count, processes = len(source), jax.process_count()
  local = pipeline.per_process_batch_size(batch_size, processes)
  share = -(-count // processes)  # make_eval_batches' contiguous share per process.
  out = None
  for index, batch in enumerate(pipeline.make_eval_batches(source, global_batch_size=batch_size)):
    images = jax.make_array_from_process_local_data(sharding, batch["image"])
    probs = np.asarray(fn(params, state, images))
    if out is None:
      out = np.zeros((count, probs.shape[1]), np.float32)
    for process in range(processes):
      first = process * share + index * local
      rows = max(min(local, min(count, (process + 1) * share) - first), 0)
      out[first:first + rows] = probs[process * local:process * local + rows]
  return out


def label_workdir(workdir: str, *, data: str, out: str, split: str = "train",
                  transforms: Sequence[str] = (), scales: Sequence[float] = DEFAULT_SCALES,
                  step: int | None = None, batch_size: int | None = None) -> dict:
  """Labels every record of `data`/`split` with the teacher in `workdir`; writes `out`.

  Returns the metadata written with the labels.
  """
  transforms = parse_transforms(transforms)
  if any(s <= 0 for s in scales):
    raise LabelError(f"--scales must be positive, got {list(scales)}.")
  if jax.process_index() == 0:
    _check_writable(out)
  config = runs.load_config(workdir)
  if config.method.get("init_from"):
    config.method.init_from = ""  # The checkpoint holds the fine-tuned params.
  method = build_method(config, total_steps=max(int(config.total_steps), 1))
  if not hasattr(method, "logits"):
    raise LabelError(
        f"The run in {workdir} trained method.name={config.method.name!r}, which has no "
        f"classifier to label with; use a teacher of {CLASSIFIER_METHODS} (fine-tune a "
        "self-supervised run first: configs/supervised.py with --config.method.init_from).")
  mesh = parallel.make_mesh(config.mesh)
  batch_size = int(batch_size or config.eval.batch_size)
  if batch_size % mesh.devices.size:
    raise LabelError(f"--batch_size={batch_size} does not split over the {mesh.devices.size} "
                     f"devices; use a multiple of {mesh.devices.size}.")
  source = sources.get_source(data, split, image_size=int(config.data.image_size),
                              data_dir=config.data.data_dir or None)
  run = runs.load_checkpoint(workdir, step)
  params, state = jax.device_put((run.params, run.method_state), parallel.replicated(mesh))
  view_fns = views(transforms, scales)
  logging.info("Labelling %d records of %s (%s) with %s, views %s.", len(source), data, split,
               run.origin, list(view_fns))
  soft = predict(method, params, state, source, view_fns=list(view_fns.values()),
                 batch_size=batch_size, mesh=mesh)
  meta = {"teacher": str(workdir), "step": run.step, "method": config.method.name,
          "source": data, "split": split, "transforms": list(view_fns),
          "scales": [float(s) for s in scales] if "scales" in transforms else [],
          "image_size": int(config.data.image_size), "records": len(source)}
  if jax.process_index() == 0:
    pseudo_labels.write(out, soft, meta)
  return meta


def _check_writable(out: str) -> None:
  """Refuses an `--out` the labels could not be written to, before the teacher labels anything
  (the write comes last: a bad path would lose the whole pass)."""
  path = epath.Path(out)
  if path.is_dir():
    problem = "it is a directory; name a file in it, e.g. labels.npz"
  else:
    problem = workdir_lib.directory_write_problem(str(path.parent))
  if problem:
    raise LabelError(f"--out {out} cannot be written ({problem}).")


def _parse_flags(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m ssl_jax.label",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="The teacher's workdir.")
  parser.add_argument("--data", required=True, help="Source spec of the images to label.")
  parser.add_argument("--split", default="train")
  parser.add_argument("--out", required=True, help="The labels file to write (.npz).")
  parser.add_argument("--transforms", default="",
                      help=f"Comma-separated, of {', '.join(TRANSFORMS)} (default: none).")
  parser.add_argument("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES),
                      help="Scales of the 'scales' transform.")
  parser.add_argument("--step", type=int, default=None, help="Checkpoint step (default: latest).")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="Global batch (default: the teacher's eval.batch_size).")
  args = parser.parse_args(argv[1:])
  try:
    args.scales = tuple(float(s) for s in args.scales.split(",") if s.strip())
  except ValueError:
    parser.error(f"--scales must be comma-separated numbers, got {args.scales!r}.")
  flags.FLAGS(argv[:1])  # absl's app.run needs its own flags parsed.
  return args


def main(args: argparse.Namespace) -> None:
  with errors.clean_exit("label"):
    meta = label_workdir(args.workdir, data=args.data, out=args.out, split=args.split,
                         transforms=args.transforms, scales=args.scales, step=args.step,
                         batch_size=args.batch_size)
  print(f"Wrote {args.out}: {meta['records']} records labelled by step {meta['step']} of "
        f"{meta['teacher']} ({', '.join(meta['transforms'])}).")


def run() -> None:
  sys.argv = errors.pop_debug_flag(sys.argv)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
