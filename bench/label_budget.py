"""Rows and the markdown table of the label-budget bench (bench/label_budget.sh; issue #14).

    python -m bench.label_budget row --workdir W --method fixmatch --labels 250 --wall_s 612 \
        [--metric eval/top1] >> ROOT/rows.jsonl
    python -m bench.label_budget table ROOT/rows.jsonl

A row is one JSON line: the method's label, the label count, its test top-1 (the last logged
value of `--metric`: `eval/top1` for a classifier, `eval/softnn_top1` for PAWS), the k-NN top-1,
the steps and the wall-clock seconds of everything the row needed (a distilled student's
includes its pretraining and fine-tuning). The table has one line per method and, per label
count, its top-1 and seconds.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Sequence

from bench import common
from ssl_jax import errors, runs


def row(workdir: str, *, method: str, labels: int, wall_s: float,
        metric: str = "eval/top1") -> dict[str, Any]:
  """The row of the finished run in `workdir`."""
  records = runs.read_metrics(workdir)
  latest: dict[str, Any] = {}
  for record in records:
    latest.update(record)
  if metric not in latest:
    raise runs.RunError(f"{workdir}/metrics.jsonl has no {metric}; did the run finish and "
                        "evaluate (eval.protocols)?")
  config = runs.load_config(workdir)
  return {"method": method, "labels": labels, "test_top1": latest[metric], "metric": metric,
          "knn_top1": latest.get("eval/knn_top1"), "steps": latest["step"],
          "model": config.model.name, "wall_s": wall_s, "workdir": str(workdir)}


def table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown: a line per method (in first-seen order), top-1 % and seconds per label count."""
  label_counts = sorted({r["labels"] for r in rows})
  methods = list(dict.fromkeys(r["method"] for r in rows))
  cells = {(r["method"], r["labels"]): r for r in rows}  # A rerun's later row wins.
  header = ["Method"] + [f"{n} labels: {what}" for n in label_counts
                         for what in ("test top-1 %", "wall s")]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for method in methods:
    values = [method]
    for count in label_counts:
      cell = cells.get((method, count))
      values += (["—", "—"] if cell is None else
                 [f"{100 * cell['test_top1']:.1f}", f"{cell['wall_s']:.0f}"])
    lines.append("| " + " | ".join(values) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m bench.label_budget")
  commands = parser.add_subparsers(dest="command", required=True)
  one = commands.add_parser("row", help="print the JSON row of a finished run")
  one.add_argument("--workdir", required=True)
  one.add_argument("--method", required=True)
  one.add_argument("--labels", type=int, required=True)
  one.add_argument("--wall_s", type=float, required=True)
  one.add_argument("--metric", default="eval/top1")
  everything = commands.add_parser("table", help="the markdown table of a rows.jsonl")
  everything.add_argument("rows")
  args = parser.parse_args(argv)
  with errors.clean_exit("label_budget"):
    if args.command == "row":
      common.emit(row(args.workdir, method=args.method, labels=args.labels,
                      wall_s=args.wall_s, metric=args.metric))
    else:
      text = pathlib.Path(args.rows).read_text()
      print(table([json.loads(line) for line in text.splitlines() if line.strip()]))


if __name__ == "__main__":
  main(sys.argv[1:])
