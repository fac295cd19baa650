"""Start-up work done once: the MFU meter's trace and the background compile of the train step
are what the loop's first step reuses (jit's trace and compile caches), not repeated."""

import dataclasses

import jax
import pytest

from ssl_jax import config_lib, trainer

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _mae_smoke(**overrides):
  config = config_lib.load_config("configs/mae.py:smoke")
  config.lock()
  config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
  return config


def _events_during(fn) -> list[str]:
  """The jax.monitoring duration events (trace, compile, ...) recorded while `fn()` runs."""
  events = []
  def on_duration(event, duration, **kwargs):
    del duration, kwargs
    events.append(event)
  jax.monitoring.register_event_duration_secs_listener(on_duration)
  try:
    fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
  return events


def test_counting_the_runs_own_step_leaves_it_traced_for_the_first_call():
  # Start-up counts FLOPs on the step's shapes; jit's trace cache is keyed on shardings too, so
  # counting on unsharded shapes made the first real step trace the whole step a second time.
  config = _mae_smoke(batch_size=8)
  setup = trainer.build(config, total_steps=10, steps_per_epoch=5)
  state, batch = setup.init_state(), setup.sample_batch()
  trainer.model_flops_per_step(config, total_steps=10, steps_per_epoch=5, setup=setup)
  assert TRACE_EVENT not in _events_during(lambda: setup.step.trace(state, batch))


def test_background_compile_is_the_first_steps_executable():
  config = _mae_smoke(batch_size=8)
  setup = trainer.build(config, total_steps=10, steps_per_epoch=5)
  compiled = setup.compile_step_in_background()
  state, batch = setup.init_state(), setup.sample_batch()  # Start-up work meanwhile.
  compiled.result()
  events = _events_during(lambda: jax.block_until_ready(setup.step(state, batch)))
  assert TRACE_EVENT not in events and COMPILE_EVENT not in events


def test_background_compile_reraises_what_the_compile_raised():
  setup = trainer.build(_mae_smoke(batch_size=8), total_steps=10, steps_per_epoch=5)
  broken = dataclasses.replace(setup, step=jax.jit(lambda state, batch: 1 / "x"))
  with pytest.raises(TypeError, match="unsupported operand"):
    broken.compile_step_in_background().result()
