"""The one conversion of epoch-valued settings to optimizer steps (as big_vision's `u.steps`).

Every count the configs state in epochs or in steps goes through `steps`: the run's length
(`total_steps` / `epochs`), warm-ups (`warmup_steps` / `warmup_epochs`), frozen windows
(`freeze_steps` / `freeze_epochs`), and any other `<name>_steps` / `<name>_epochs` pair. An epoch
is `steps_per_epoch` optimizer steps (the train data's: split size // global batch size, drop-
remainder batches; ssl_jax/data/streams.py), and a fractional epoch count is rounded to the
nearest step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssl_jax import config_lib


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  """round(epochs * steps_per_epoch)."""
  return int(round(float(epochs) * steps_per_epoch))


def _keys(name: str) -> tuple[str, str]:
  # The run's length is spelled `total_steps` / `epochs` in the config's top level.
  return ("total_steps", "epochs") if name == "total" else (f"{name}_steps", f"{name}_epochs")


def steps(section: Mapping[str, Any], name: str, *, steps_per_epoch: int,
          default: int | None = 0) -> int:
  """`section[name_steps]` or `section[name_epochs] * steps_per_epoch` as a step count.

  `name='total'` reads `total_steps` / `epochs`. A key that is absent or 0 is not set; setting
  both is a config error (which one wins would be a guess). With neither set, `default` is
  returned, or a config error raised if it is None.
  """
  steps_key, epochs_key = _keys(name)
  num_steps = int(section.get(steps_key, 0) or 0)
  num_epochs = float(section.get(epochs_key, 0) or 0)
  if num_steps < 0 or num_epochs < 0:
    raise config_lib.ConfigError(f"{steps_key}={num_steps} and {epochs_key}={num_epochs} must "
                                 "be >= 0.")
  if num_steps and num_epochs:
    raise config_lib.ConfigError(f"Both {steps_key}={num_steps} and {epochs_key}={num_epochs} "
                                 f"are set; set one of them and the other to 0.")
  if num_steps:
    return num_steps
  if num_epochs:
    return epochs_to_steps(num_epochs, steps_per_epoch)
  if default is None:
    raise config_lib.ConfigError(f"Set {steps_key} > 0 or {epochs_key} > 0.")
  return default


def total_steps(config, steps_per_epoch: int) -> int:
  """The run's length: `total_steps`, or `epochs` of `steps_per_epoch` steps (at least 1)."""
  return max(steps(config, "total", steps_per_epoch=steps_per_epoch, default=None), 1)
