"""Progress lines with an ETA: the training loop's one line per log step, and evaluation passes.

A training log step prints exactly one line (TensorBoard, metrics.jsonl and W&B get the full
scalars; the clu logging writer, which printed a second line of every scalar, is not used)::

  step 40/60  loss 0.8123  lr 1.5e-04  6.10 steps/s  390 img/s  ETA 0:00:03  collapse_std 0.91  knn_top1 71.70%

An evaluation pass over batches (feature extraction, the linear probe's weight-decay sweep)
logs `what i/n  ETA h:mm:ss` every `interval` seconds and, if it logged any, a last line when it
ends; a pass shorter than `interval` logs nothing (its time is in metrics.jsonl as
`eval/<protocol>_seconds`).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

from absl import logging

T = TypeVar("T")


def format_seconds(seconds: float) -> str:
  """H:MM:SS (hours unbounded)."""
  seconds = max(int(seconds), 0)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def step_line(step: int, total_steps: int, scalars: Mapping[str, float], *,
              eta_seconds: float | None) -> str:
  """The one line of a log step: progress and throughput when the step logged them, then the
  collapse metrics and every evaluation top-1 in `scalars`."""
  parts = [f"step {step}/{total_steps}"]
  if "train/loss" in scalars:
    parts.append(f"loss {scalars['train/loss']:.4f}")
  if "train/lr" in scalars:
    parts.append(f"lr {scalars['train/lr']:.1e}")
  if "train/steps_per_sec" in scalars:
    parts.append(f"{scalars['train/steps_per_sec']:.2f} steps/s")
    parts.append(f"{scalars['train/images_per_sec']:.0f} img/s")
  if eta_seconds is not None:
    parts.append(f"ETA {format_seconds(eta_seconds)}")
  parts += [f"{name[6:]} {value:.3f}" for name, value in scalars.items()
            if name.startswith("train/collapse_")]
  parts += [f"{name[5:]} {100 * value:.2f}%" for name, value in scalars.items()
            if name.startswith("eval/") and name.endswith("top1")]
  return "  ".join(parts)


class Progress:
  """Logs `what done/total  ETA` every `interval` seconds, and a last line at done == total
  when the pass took at least `interval` seconds."""

  def __init__(self, what: str, total: int, *, interval: float = 10.0,
               clock: Callable[[], float] = time.monotonic,
               log: Callable[[str], None] | None = None):
    self.what, self.total, self.interval = what, int(total), interval
    self._clock = clock
    self._log = log or (lambda line: logging.info("%s", line))
    self._start = self._last = clock()

  def update(self, done: int) -> str | None:
    """Reports `done` of `total` finished; returns the line it logged, if any."""
    now = self._clock()
    if now - self._last < self.interval and (done < self.total or self._last == self._start):
      return None
    self._last = now
    elapsed = now - self._start
    if done >= self.total:
      line = f"{self.what} {done}/{self.total}  done in {format_seconds(elapsed)}"
    else:
      eta = elapsed / max(done, 1) * (self.total - done)
      line = f"{self.what} {done}/{self.total}  ETA {format_seconds(eta)}"
    self._log(line)
    return line


def track(items: Iterable[T], what: str, total: int, **kwargs) -> Iterator[T]:
  """Yields `items`, logging progress after each (see `Progress`)."""
  progress = Progress(what, total, **kwargs)
  for done, item in enumerate(items, start=1):
    yield item
    progress.update(done)
