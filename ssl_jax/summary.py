"""A run's closing lines: its k-NN next to what it must beat, and what to run next.

A k-NN accuracy alone does not say whether pretraining helped: on the bundled digits the
untrained encoder already gets about 59% and raw pixels about 97%. After training,
`knn_baselines` scores both on the run's own evaluation split with the run's own k-NN protocol
(`python -m ssl_jax.evaluate --init random` and `--init raw`, which also leave
`W/eval/random.json` and `W/eval/raw.json`), in seconds on the default data.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax

from ssl_jax import evaluate

BASELINES = {"random": "same encoder untrained", "raw": "raw pixels"}


def knn_baselines(workdir: str) -> dict[str, float]:
  """k-NN top-1 of the run's encoder at its initialisation and of mean-centred raw pixels."""
  return {init: evaluate.evaluate_workdir(workdir, protocols="knn", init=init)["metrics"]
          ["eval/knn_top1"] for init in BASELINES}


def next_lines(workdir: str) -> list[str]:
  """What to run next on a finished run: the frozen-feature evaluations and a timm export."""
  return [f"Next: python -m ssl_jax.evaluate --workdir {workdir} --protocols knn,linear,fewshot",
          f"      python -m ssl_jax.export --workdir {workdir} --format timm"]


def closing_lines(trained: float, baselines: Mapping[str, float], workdir: str) -> list[str]:
  parts = [f"trained encoder {100 * trained:.1f}%"] + [
      f"{BASELINES[init]} {100 * value:.1f}%" for init, value in baselines.items()]
  return [f"k-NN top-1, same split: {' | '.join(parts)}"] + next_lines(workdir)


def print_closing_lines(final_metrics: Mapping[str, Any], workdir: str) -> None:
  """After a finished run: with a k-NN score, the baselines (every process evaluates, process 0
  prints) and what to run next; without one, what to run next. A preempted run prints nothing
  more (its last log line says where it stopped)."""
  if "preempted_at" in final_metrics:
    return
  if "eval/knn_top1" not in final_metrics:
    lines = next_lines(workdir)
  else:
    lines = closing_lines(final_metrics["eval/knn_top1"], knn_baselines(workdir), workdir)
  if jax.process_index() == 0:
    print("\n".join(lines))
