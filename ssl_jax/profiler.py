"""A profiler window: a `jax.profiler` trace of a few training steps, for TensorBoard.

`--config.profile_steps=START:STOP` traces the steps after step START up to and including step
STOP (e.g. "10:15": steps 11-15, after compilation and the first batches) into
`W/tensorboard/plugins/profile/<date>/`, the layout TensorBoard's Profile tab reads
(`tensorboard --logdir W/tensorboard`, with the `tensorboard-plugin-profile` package). Only
process 0 traces (its own devices). A window a resumed run starts past is skipped.
"""

from __future__ import annotations

import pathlib

import jax
from absl import logging

from ssl_jax import config_lib


def parse_window(text: str) -> tuple[int, int] | None:
  """"START:STOP" -> (START, STOP) with 0 <= START < STOP; "" -> None."""
  if not text.strip():
    return None
  start, sep, stop = text.partition(":")
  try:
    window = (int(start), int(stop)) if sep else None
  except ValueError:
    window = None
  if window is None or not 0 <= window[0] < window[1]:
    raise config_lib.ConfigError(
        f"profile_steps must be 'START:STOP' with 0 <= START < STOP (trace the steps after "
        f"step START up to step STOP, e.g. '10:15'), or '' for none; got {text!r}.")
  return window


class Window:
  """Starts the trace once step START is done and stops it once step STOP is done."""

  def __init__(self, text: str, workdir: str, start_step: int):
    window = parse_window(text)
    self._window = window if jax.process_index() == 0 else None
    if window is not None and start_step > window[0]:
      logging.info("profile_steps=%s: the run resumes at step %d, past the window; no trace.",
                   text, start_step)
      self._window = None
    self._logdir = str(pathlib.Path(workdir) / "tensorboard")
    self._active = False

  def before_step(self, done_steps: int, state) -> None:
    """Call before dispatching the step after `done_steps` (`state`: the current state)."""
    if self._window is not None and done_steps == self._window[0] and not self._active:
      jax.block_until_ready(state)  # The trace holds the window's steps, not earlier ones.
      jax.profiler.start_trace(self._logdir)
      self._active = True

  def after_step(self, step: int, state) -> None:
    """Call after dispatching step `step` (`state`: its output, waited on before stopping)."""
    if self._active and step == self._window[1]:
      self.close(state)

  def close(self, state=None) -> None:
    """Stops an active trace (the window's end, or the run ended or was preempted inside it)."""
    if not self._active:
      return
    if state is not None:
      jax.block_until_ready(state)
    jax.profiler.stop_trace()
    self._active = False
    logging.info("Profile of steps %d-%d written under %s/plugins/profile.",
                 self._window[0] + 1, self._window[1], self._logdir)
