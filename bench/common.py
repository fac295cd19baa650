"""Helpers shared by the benchmarks: JSON-line output, timing and the device's matmul peak."""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import config_lib, flops
from ssl_jax.data import streams


def config_parser(description: str, steps: int = 5) -> argparse.ArgumentParser:
  """The command line of the benchmarks that time one config's train step: --config,
  --batch_size, --steps and trailing key.path=value overrides; each adds its own flags."""
  parser = argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="configs/<method>.py:<presets>")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's batch_size")
  parser.add_argument("--steps", type=int, default=steps)
  parser.add_argument("overrides", nargs="*", help="key.path=value config overrides")
  return parser


def load_config(spec: str, overrides=(), batch_size: int = 0):
  """A benchmark's run config: `configs/<m>.py:<presets>`, locked, `key=value` overrides
  applied, and `batch_size` when non-zero (0 keeps the config's)."""
  config = config_lib.load_config(spec)
  config.lock()
  config_lib.apply_overrides(config, list(overrides))
  if batch_size:
    config.batch_size = batch_size
  return config


def random_batch(setup, config):
  """Random images in the structure the step receives (one batch, or one per data stream),
  placed as the loop places them (`TrainSetup.global_batch`)."""
  rng = np.random.default_rng(0)
  return setup.global_batch(jax.tree.map(
      lambda s: rng.integers(0, 256, s.shape, dtype=s.dtype) if s.dtype == np.uint8
      else np.zeros(s.shape, s.dtype),
      streams.batch_shapes(config, process_count=jax.process_count())))


def emit(record: dict) -> None:
  """One JSON object per line on stdout: the benchmarks' whole output contract."""
  print(json.dumps(record, sort_keys=True), flush=True)
  sys.stdout.flush()


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
  """Median seconds of `fn(*args)` with the result blocked on."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  times.sort()
  return times[len(times) // 2]


def device_peak_flops(dtype=jnp.float32, size: int = 2048) -> tuple[float, str]:
  """(FLOP/s, how it was obtained): the chip's published bf16 peak (`ssl_jax.flops`), or, on
  CPU and unknown chips, a large matmul measured by XLA right now (a CPU-relative MFU).

  2048^2 reaches the CPU's matmul rate as well as 4096^2 did (this 2-core machine: 194 vs 176
  GFLOP/s) in 0.6 s instead of 4.8 s, which every bench process paid at start-up."""
  device = jax.devices()[0]
  peak = flops.bf16_peak_flops(device.device_kind) if device.platform != "cpu" else None
  if peak:
    return peak, f"published bf16 peak of {device.device_kind}"
  a = jnp.ones((size, size), dtype)
  b = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  seconds = time_fn(matmul, a, b, repeats=5)
  return 2 * size**3 / seconds, f"measured {size}x{size} {jnp.dtype(dtype).name} matmul"
