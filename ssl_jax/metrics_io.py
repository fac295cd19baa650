"""Metric writers: TensorBoard (+ log lines), `workdir/metrics.jsonl` and optionally W&B.

`metrics.jsonl` is a public contract: one JSON object per logged step, with `step` and names like
`train/loss` and `eval/knn_top1` (a fraction in [0, 1]). The loop writes each step's scalars in
one call, so one step is one line, and each step appears once: a resumed run first drops the
records after the step it restored (it writes them again). `ssl_jax.runs.read_metrics` reads
it back.

TensorBoard summaries go through clu's writers, which import TensorFlow. Accelerator images
often ship JAX without it, so where TensorFlow cannot be imported `tensorboard_writer` falls back
to `EventWriter` (scalars and images through the `tensorboard` package's own event-file writer,
no TensorFlow) or, without that package either, to log lines alone; either way it says so in
one warning line, once per process. metrics.jsonl is written the same in every case.

The training loop's writers (`make_writer`) print no log lines: the loop prints its own one line
per log step (`ssl_jax.progress`); `evaluate` and `viz` keep clu's log lines.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from ssl_jax import runs

_warned_without_tensorflow = False


class JsonlWriter:
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

  def write_images(self, step, images):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class LogWriter:
  """Scalars as INFO log lines, formatted like clu's `LoggingWriter` ('[step] name=value, ...')."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
              for k, v in sorted(scalars.items())]
    logging.info("[%d] %s", step, ", ".join(values))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    logging.info("[%d] Got images: %s.", step, {k: np.shape(v) for k, v in images.items()})

  def flush(self):
    pass

  def close(self):
    pass


class EventWriter:
  """TensorBoard scalars and images without TensorFlow: `tensorboard`'s event-file writer.

  Writes the same `Summary` protos as `tf.summary` v1 (`simple_value` scalars, PNG-encoded
  images), which TensorBoard's scalar and image dashboards read.
  """

  def __init__(self, logdir: str | pathlib.Path):
    # pylint: disable=g-import-not-at-top  (only runs without TensorFlow need these)
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer import event_file_writer
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._writer = event_file_writer.EventFileWriter(str(logdir))

  def _write(self, step: int, values: Sequence[Any]) -> None:
    summary = self._summary_pb2.Summary(value=values)
    self._writer.add_event(self._event_pb2.Event(step=int(step), wall_time=time.time(),
                                                 summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    value = self._summary_pb2.Summary.Value
    self._write(step, [value(tag=name, simple_value=float(np.asarray(v)))
                       for name, v in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """images: name -> uint8 [1, H, W, C] (the first image of each is written)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    values = []
    for name, batch in images.items():
      image = np.asarray(batch)[0]
      png = io.BytesIO()
      Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(png, "PNG")
      encoded = self._summary_pb2.Summary.Image(
          height=image.shape[0], width=image.shape[1], colorspace=image.shape[-1],
          encoded_image_string=png.getvalue())
      values.append(self._summary_pb2.Summary.Value(tag=name, image=encoded))
    self._write(step, values)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class Writers:
  """Every call goes to each writer in turn."""

  def __init__(self, writers: Sequence[Any]):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_images(step, images)

  def flush(self):
    for writer in self._writers:
      writer.flush()

  def close(self):
    for writer in self._writers:
      writer.close()


def _warn_once(message: str) -> None:
  global _warned_without_tensorflow
  if not _warned_without_tensorflow:
    _warned_without_tensorflow = True
    logging.warning(message)


def tensorboard_writer(logdir: str | pathlib.Path | None, *, log_lines: bool = True):
  """TensorBoard summaries under `logdir` (None: none), with log lines of every scalar unless
  `log_lines` is False; None when there is nothing to write.

  clu's writers where TensorFlow imports; otherwise `EventWriter`, or no summaries when the
  `tensorboard` package is missing too (one warning line says which).
  """
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  except ImportError as error:
    logger = [LogWriter()] if log_lines else []
    if logdir is None:
      return Writers(logger) if logger else None
    try:
      writer = EventWriter(logdir)
    except ImportError as missing:
      _warn_once(f"No TensorBoard summaries: clu's writer needs TensorFlow ({error}) and the "
                 f"tensorboard package does not import ({missing}); metrics.jsonl holds every "
                 "scalar.")
      return Writers(logger) if logger else None
    _warn_once(f"TensorBoard summaries come from the tensorboard package's event writer: clu's "
               f"writer needs TensorFlow ({error}).")
    return Writers(logger + [writer])
  if not log_lines:
    return None if logdir is None else metric_writers.SummaryWriter(str(logdir))
  return metric_writers.create_default_writer(
      None if logdir is None else str(logdir), just_logging=logdir is None,
      asynchronous=False)


def make_writer(workdir: str, config=None) -> Writers:
  """Process 0: TensorBoard under `workdir/tensorboard`, metrics.jsonl, and W&B when
  `config.wandb.project` is set (`ssl_jax.wandb_writer`); other processes: nothing."""
  if jax.process_index() != 0:
    return Writers([])
  tensorboard = tensorboard_writer(pathlib.Path(workdir) / "tensorboard", log_lines=False)
  writers = [w for w in (tensorboard, JsonlWriter(pathlib.Path(workdir) / "metrics.jsonl"))
             if w is not None]
  if config is not None and config.wandb.project:
    from ssl_jax import wandb_writer  # pylint: disable=g-import-not-at-top  (optional)

    writers.append(wandb_writer.WandbWriter(config, workdir))
  return Writers(writers)


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
