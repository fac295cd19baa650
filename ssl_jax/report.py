r"""One markdown table of results from ssl_jax workdirs, for docs/results.md.

    python -m ssl_jax.report W1 W2 ... [--seconds]

Every workdir gives a row from its `config.json` (method, backbone), `metrics.jsonl` (steps,
epochs and the last in-training `eval/*` scalars) and `eval/*.json` (written by
`ssl_jax.evaluate`; the latest checkpoint's evaluation replaces the in-training numbers), plus
one row per baseline evaluated in it (`--init random`, `--init raw`). Columns: k-NN top-1, the
fast linear probe's top-1, 10-shot ridge top-1 (mean +- std over seeds), and the `classifier`
top-1 of supervised runs: under "Fine-tune", or under "Linear (head)" for a frozen backbone.
`--seconds` adds how long each protocol took.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any, Sequence

import ml_collections
import numpy as np

from ssl_jax import errors, runs

_BASELINES = {"random": "random init", "raw": "raw pixels"}


def _backbone(config: ml_collections.ConfigDict) -> str:
  model = config.get("model", {})
  name = model.get("name", "?")
  sizes = [model.get(key) or 0 for key in ("hidden_size", "depth", "num_heads")]
  if name.startswith("vit_") and any(sizes):
    return f"{name} ({sizes[0]}w, {sizes[1]} blocks)"
  return name


def _method(config: ml_collections.ConfigDict) -> str:
  method = config.get("method", {})
  name = method.get("name", "?")
  parts = [name]
  if name == "supervised":
    parts.append("linear probe" if method.get("freeze_backbone") else
                 "fine-tune" if method.get("init_from") else "from scratch")
    if method.get("init_from"):
      parts.append(f"of {pathlib.Path(method['init_from']).name}")
  subset = config.get("data", {}).get("train_subset")
  if subset:
    parts.append(f"[{subset}]")
  return " ".join(parts)


def _percent(value: float | None, spread: float | None = None) -> str:
  if value is None:
    return "—"
  text = f"{100 * value:.1f}"
  return text + (f" ± {100 * spread:.1f}" if spread is not None else "")


def _seconds(value: float | None) -> str:
  return "—" if value is None else f"{value:.1f}"


def _last(records: Sequence[dict[str, Any]], key: str) -> Any:
  for record in reversed(records):
    if key in record:
      return record[key]
  return None


def read_workdir(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
  """The table rows of one workdir: the run itself, then its baselines."""
  workdir = pathlib.Path(workdir)
  config = runs.load_config(workdir)
  records = runs.read_metrics(workdir)
  run_metrics = {key: value for record in records for key, value in record.items()
                 if key.startswith("eval/")}
  evaluations = runs.read_evaluations(workdir)
  checkpoint_evals = [e for e in evaluations if e.get("init") == "checkpoint"]
  # An evaluation of exported params (step None) is the end of the run: the latest.
  checkpoint_evals.sort(key=lambda e: float("inf") if e.get("step") is None else e["step"])
  for evaluation in checkpoint_evals:
    run_metrics.update(evaluation["metrics"])
  frozen = bool(config.get("method", {}).get("freeze_backbone"))
  base = {"run": workdir.name, "backbone": _backbone(config),
          "steps": _last(records, "step"), "epochs": _last(records, "train/epoch")}
  rows = [dict(base, method=_method(config), metrics=run_metrics, frozen=frozen,
               images_per_sec=_train_images_per_sec(records))]
  for evaluation in evaluations:
    if evaluation.get("init") in _BASELINES:
      rows.append(dict(base, method=_BASELINES[evaluation["init"]], steps=None, epochs=None,
                       metrics=evaluation["metrics"], frozen=False, images_per_sec=None))
  return rows


def _train_images_per_sec(records: Sequence[dict[str, Any]]) -> float | None:
  """Median logged training throughput, leaving out the first window (it holds the compile)."""
  rates = [r["train/images_per_sec"] for r in records if "train/images_per_sec" in r][1:]
  return float(np.median(rates)) if rates else None


def markdown_table(rows: Sequence[dict[str, Any]], *, seconds: bool = False,
                   throughput: bool = False) -> str:
  has_head_probe = any(r["frozen"] and "eval/classifier_top1" in r["metrics"] for r in rows)
  header = ["Run", "Method", "Backbone", "Steps (epochs)", "k-NN", "Linear", "Few-shot (10)"]
  if has_head_probe:
    header.append("Linear (head)")
  header.append("Fine-tune")
  if seconds:
    header += ["k-NN s", "Linear s", "Few-shot s"]
  if throughput:
    header.append("Train img/s")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    m = row["metrics"]
    steps = "—" if row["steps"] is None else str(row["steps"])
    if row["epochs"] is not None:
      steps += f" ({row['epochs']:.1f})"
    classifier = m.get("eval/classifier_top1")
    cells = [row["run"], row["method"], row["backbone"], steps, _percent(m.get("eval/knn_top1")),
             _percent(m.get("eval/linear_top1")),
             _percent(m.get("eval/fewshot_10shot_top1"), m.get("eval/fewshot_10shot_top1_std"))]
    if has_head_probe:
      cells.append(_percent(classifier if row["frozen"] else None))
    cells.append(_percent(None if row["frozen"] else classifier))
    if seconds:
      cells += [_seconds(m.get(f"eval/{p}_seconds")) for p in ("knn", "linear", "fewshot")]
    if throughput:
      rate = row.get("images_per_sec")
      cells.append("—" if rate is None else f"{rate:.0f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(prog="python -m ssl_jax.report",
                                   description="Markdown table of ssl_jax results.")
  parser.add_argument("workdirs", nargs="+", help="ssl_jax.train workdirs")
  parser.add_argument("--seconds", action="store_true", help="add each protocol's time")
  parser.add_argument("--throughput", action="store_true",
                      help="add the run's median training images/s")
  args = parser.parse_args(errors.pop_debug_flag(sys.argv[1:] if argv is None else argv))
  try:
    rows = [row for workdir in args.workdirs for row in read_workdir(workdir)]
  except (FileNotFoundError, ValueError) as error:  # Missing files; unreadable JSON.
    if errors.debug_enabled():
      raise
    sys.exit(f"report: {error}")
  table = markdown_table(rows, seconds=args.seconds, throughput=args.throughput)
  print(table)
  return table


if __name__ == "__main__":
  main()
