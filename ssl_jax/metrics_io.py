"""Metric writers: TensorBoard + stdout (clu) and `workdir/metrics.jsonl`.

`metrics.jsonl` is a public contract: one JSON object per logged step, with `step` and names like
`train/loss` and `eval/knn_top1` (a fraction in [0, 1]). The loop writes each step's scalars in
one call, so one step is one line, and each step appears once: a resumed run first drops the
records after the step it restored (it writes them again). `ssl_jax.runs.read_metrics` reads
it back.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from clu import metric_writers

from ssl_jax import runs


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON line per `write_scalars` call (process 0 only)."""

  def __init__(self, path: str | pathlib.Path):
    self._path = pathlib.Path(path)
    self._path.parent.mkdir(parents=True, exist_ok=True)
    self._file = self._path.open("a")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {"step": int(step)}
    for name, value in scalars.items():
      value = float(np.asarray(value))
      record[name] = value if math.isfinite(value) else str(value)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def make_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard under `workdir/tensorboard` + log lines (+ jsonl) on process 0."""
  is_main = jax.process_index() == 0
  default = metric_writers.create_default_writer(
      str(pathlib.Path(workdir) / "tensorboard"), just_logging=not is_main, asynchronous=False)
  if not is_main:
    return default
  return metric_writers.MultiWriter([default, JsonlWriter(pathlib.Path(workdir) / "metrics.jsonl")])


def drop_records_after(workdir: str | pathlib.Path, step: int) -> None:
  """Keeps the records up to `step` (and drops a torn last line), before a resumed run logs.

  Written to a temporary file and renamed over the old one, so a kill leaves one or the other.
  """
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  kept = [r for r in runs.read_metrics(workdir) if r.get("step", 0) <= step]
  if len(kept) == len(lines):
    return
  logging.info("metrics.jsonl: dropping %d records after the restored step %d.",
               len(lines) - len(kept), step)
  temporary = path.with_suffix(".jsonl.tmp")
  temporary.write_text("".join(json.dumps(r) + "\n" for r in kept))
  os.replace(temporary, path)
