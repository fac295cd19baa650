r"""Evaluates any ssl_jax checkpoint (or exported params, or a baseline) on any labelled dataset.

    python -m ssl_jax.evaluate --workdir W [--step S] [--protocols knn,linear,fewshot]
        [--init checkpoint|random|raw] [--no-raw_center] [--tag NAME]
        [--data.eval_source=npz:/path/{split}.npz ...]   # any config override

The run's `W/config.json` rebuilds its method; `--key=value` overrides change it (usually the
`data.*` keys: `data.eval_source`, `data.eval_train_split`, `data.eval_test_split`, `eval.*`).
The evaluators are the ones the training loop runs (`ssl_jax.evaluators.runner`): weighted k-NN,
the fast logistic-regression probe and ridge few-shot on frozen features, plus `classifier`: the
test accuracy of a `supervised` run's own head (fine-tuning / trained linear probe).

`--init` picks what is evaluated:
* `checkpoint` (default): step S, or the latest checkpoint, or else `W/export` params;
* `random`: a freshly initialised model of the same config (seed `config.seed`);
* `raw`: the pixels themselves, flattened (minus the training images' mean pixel unless
  `--no-raw_center`): the baselines every learning claim is compared against.

Writes `W/eval/<step|export|random|raw>[_<tag>].json` ({'metrics': {'eval/knn_top1': ...}, ...},
fractions and seconds) and TensorBoard scalars under `W/tensorboard/eval_<init>[_<tag>]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath
from jax.experimental import multihost_utils

from ssl_jax import errors, metrics_io, parallel, runs
from ssl_jax.data import pipeline, sources, streams
from ssl_jax.evaluators import runner
from ssl_jax.methods import build_method

PROTOCOLS = runner.PROTOCOLS
INITS = ("checkpoint", "random", "raw")
DEFAULT_PROTOCOLS = ("knn", "linear", "fewshot")


class EvaluationError(errors.UserError, ValueError):
  """The evaluation cannot run as asked (bad path, step, dataset or protocol)."""


@dataclasses.dataclass(frozen=True)
class RawPixels:
  """'Features' that are the canvas pixels in [0, 1], flattened, minus `params['mean']`."""

  def features(self, params, state, images):
    del state
    flat = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
    return flat - params["mean"]

  embeddings = features  # The soft-NN protocol's space (base.Method.embeddings): the pixels.


def mean_pixels(source, batch_size: int) -> np.ndarray:
  """The mean flattened canvas of `source` ([S*S*C] float32), over every process's shard."""
  total, count = None, 0
  for batch in pipeline.make_eval_batches(source, global_batch_size=batch_size):
    rows = batch["image"][batch["mask"]].reshape(int(batch["mask"].sum()), -1)
    rows = rows.astype(np.float64) / 255.0
    total = rows.sum(axis=0) if total is None else total + rows.sum(axis=0)
    count += rows.shape[0]
  if jax.process_count() > 1:
    total = multihost_utils.process_allgather(total).sum(axis=0)
    count = int(multihost_utils.process_allgather(np.asarray(count)).sum())
  return (total / max(count, 1)).astype(np.float32)


def parse_protocols(text: str | Sequence[str] | None) -> tuple[str, ...]:
  if text is None:
    return DEFAULT_PROTOCOLS
  names = text.split(",") if isinstance(text, str) else list(text)
  protocols = tuple(p.strip() for p in names if p.strip())
  unknown = [p for p in protocols if p not in PROTOCOLS]
  if unknown or not protocols:
    raise EvaluationError(f"Unknown or no protocols {unknown or list(protocols)}; choose from "
                          f"{', '.join(PROTOCOLS)}.")
  return protocols


def _sample_batch(config) -> dict[str, np.ndarray]:
  """Zeros shaped like a training batch (one dict per data stream if the run had several)."""
  return streams.zeros_batch(config, rows=8)


def _check_labelled(config) -> None:
  data = config.data
  spec = data.eval_source or data.source
  source = sources.get_source(spec, data.eval_train_split, image_size=data.image_size,
                              data_dir=data.data_dir or None)
  if not source.num_classes:
    raise EvaluationError(
        f"The dataset {spec!r} (split {data.eval_train_split!r}) has no labels, and every "
        "protocol compares predictions with labels. Pass a labelled dataset, e.g. "
        "--data.eval_source=npz:/path/cifar10_{split}.npz (an npz with a 'labels' array) or an "
        "imagefolder with class subfolders.")


def _check_params_fit(params, abstract_params, overrides: Sequence[str]) -> None:
  """The saved `params` must have the shapes of `abstract_params`, those of the model this
  (overridden) config builds."""
  shapes = lambda tree: {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in
                         jax.tree_util.tree_flatten_with_path(tree)[0]}
  saved, built = shapes(params), shapes(abstract_params)
  if saved == built:
    return
  differing = [f"{key}: saved {saved[key]}, built {built[key]}"
               for key in sorted(saved.keys() & built.keys()) if saved[key] != built[key]]
  missing = sorted(built.keys() - saved.keys())
  if differing:
    detail = differing[0]
  elif missing:
    detail = f"{missing[0]} is not in the saved params"
  else:
    detail = f"{sorted(saved.keys() - built.keys())[0]} is not in the built model"
  model_overrides = [o for o in overrides if o.lstrip("-").startswith(("model.", "method."))]
  raise EvaluationError(
      f"The saved params do not fit the model this config builds ({detail}). "
      + (f"Evaluate without {', '.join(model_overrides)}: the model is the run's own."
         if model_overrides else "Pass the run's own workdir and config."))


def evaluate_workdir(workdir: str, *, step: int | None = None,
                     protocols: str | Sequence[str] | None = None, init: str = "checkpoint",
                     overrides: Sequence[str] = (), raw_center: bool = True,
                     tag: str = "") -> dict[str, Any]:
  """Runs the protocols and writes `workdir/eval/<name>.json`; returns what it wrote."""
  if init not in INITS:
    raise EvaluationError(f"--init must be one of {INITS}, got {init!r}.")
  if step is not None and init != "checkpoint":
    raise EvaluationError(f"--step selects a checkpoint; it has no meaning with --init={init}.")
  # Checked first: the tag names the output file, which is written after the evaluation.
  if not re.fullmatch(r"[A-Za-z0-9._-]*", tag):
    raise EvaluationError(f"--tag {tag!r} must be letters, digits, '.', '_' or '-' (it becomes "
                          "part of the file name W/eval/<step>_<tag>.json).")
  protocols = parse_protocols(protocols)
  config = runs.load_config(workdir, overrides)
  if config.method.get("init_from"):
    # Evaluated params come from this run (or a fresh init for the random baseline), never
    # from the run it was initialised from, which may be gone.
    config.method.init_from = ""
  _check_labelled(config)
  mesh = parallel.make_mesh(config.mesh)
  total_steps = max(int(config.total_steps), 1)
  method = build_method(config, total_steps=total_steps)
  if "classifier" in protocols and (init == "raw" or not hasattr(method, "logits")):
    raise EvaluationError(f"Protocol 'classifier' needs a method with its own head "
                          f"(method.name='supervised'); this is {config.method.name!r} with "
                          f"--init={init}.")

  origin, label, step_value = init, init, None
  if init == "raw":
    evaluated = RawPixels()
    evaluator = runner.FeatureEvaluator(evaluated, config, mesh, protocols)
    size = int(np.prod(evaluator.train_source[0]["image"].shape))
    mean = (mean_pixels(evaluator.train_source, evaluator.batch_size) if raw_center
            else np.zeros((size,), np.float32))
    params, state = {"mean": mean}, {}
    origin = f"raw pixels ({'mean-centred' if raw_center else 'uncentred'})"
  else:
    evaluated = method
    evaluator = runner.FeatureEvaluator(method, config, mesh, protocols)
    if init == "random":
      params, state = jax.jit(method.init)(jax.random.PRNGKey(config.seed),
                                           _sample_batch(config))
      origin = f"random init (seed {config.seed})"
    else:
      run = runs.load_variables(workdir, step)
      params, state, origin = run.params, run.method_state, run.origin
      abstract_params, abstract_state = jax.eval_shape(method.init, jax.random.PRNGKey(0),
                                                       _sample_batch(config))
      _check_params_fit(params, abstract_params, overrides)
      step_value = run.step
      label = str(run.step) if run.step is not None else "export"
      if state is None:
        if jax.tree.leaves(abstract_state):
          logging.warning("Exported params carry no method state (BatchNorm statistics, EMA "
                          "teachers); evaluating with freshly initialised state. Evaluate a "
                          "checkpoint step for exact results.")
          state = jax.jit(method.init)(jax.random.PRNGKey(0), _sample_batch(config))[1]
        else:
          state = abstract_state  # No leaves: the empty structure is the state.
  replicated = parallel.replicated(mesh)
  params, state = jax.device_put((params, state), replicated)

  metrics = evaluator.evaluate(params, state, tuple(p for p in protocols if p != "classifier"))
  if "classifier" in protocols:
    if evaluator.num_classes > config.method.num_classes:
      raise EvaluationError(f"The dataset has {evaluator.num_classes} classes but the head has "
                            f"method.num_classes={config.method.num_classes}.")
    start = time.time()
    scores = runner.classifier_accuracy(evaluated, params, state, evaluator.test_source,
                                 batch_size=evaluator.batch_size, mesh=mesh)
    metrics.update({f"eval/classifier_{k}": v for k, v in scores.items()})
    metrics["eval/classifier_seconds"] = time.time() - start

  suffix = f"_{tag}" if tag else ""
  data = config.data
  record = {
      "workdir": str(workdir), "init": init, "step": step_value, "origin": origin,
      "protocols": list(protocols),
      "data": {"source": data.eval_source or data.source, "train_split": data.eval_train_split,
               "test_split": data.eval_test_split, "image_size": data.image_size},
      "method": config.method.name, "model": config.model.name, "metrics": metrics,
      "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  if jax.process_index() == 0:
    out_dir = epath.Path(workdir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{label}{suffix}.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    logdir = epath.Path(workdir) / "tensorboard" / f"eval_{init}{suffix}"
    writer = metrics_io.tensorboard_writer(logdir)
    writer.write_scalars(step_value or 0, metrics)
    writer.close()
  return record


def _parse_flags(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m ssl_jax.evaluate", description=__doc__.split("\n\n")[0],
      epilog="Any other --key.path=value argument overrides the run's config, e.g. "
             "--data.eval_source=npz:/data/cifar10_{split}.npz")
  parser.add_argument("--workdir", required=True, help="The run's workdir (with config.json).")
  parser.add_argument("--step", type=int, default=None, help="Checkpoint step (default: latest).")
  parser.add_argument("--protocols", default=None,
                      help=f"Comma-separated, of {', '.join(PROTOCOLS)} "
                           f"(default: {','.join(DEFAULT_PROTOCOLS)}).")
  parser.add_argument("--init", choices=INITS, default="checkpoint")
  parser.add_argument("--raw_center", action=argparse.BooleanOptionalAction, default=True,
                      help="With --init=raw: subtract the training images' mean pixel.")
  parser.add_argument("--tag", default="", help="Suffix of the output file name.")
  args, rest = parser.parse_known_args(argv[1:])
  args.overrides = []
  for item in rest:
    if not (item.startswith("--") and "=" in item):
      parser.error(f"unrecognised argument {item!r}; config overrides look like "
                   "--data.eval_source=VALUE")
    args.overrides.append(item)
  # absl's app.run needs its own flags parsed; they keep their defaults (logging to stderr).
  flags.FLAGS(argv[:1])
  return args


def main(args: argparse.Namespace) -> None:
  with errors.clean_exit("evaluate"):
    record = evaluate_workdir(args.workdir, step=args.step, protocols=args.protocols,
                              init=args.init, overrides=args.overrides,
                              raw_center=args.raw_center, tag=args.tag)
  for name, value in sorted(record["metrics"].items()):
    shown = f"{value:.2f}s" if name.endswith("seconds") else f"{100 * value:.2f}%"
    print(f"{name:40s} {shown}")


def run() -> None:
  sys.argv = errors.pop_debug_flag(sys.argv)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
