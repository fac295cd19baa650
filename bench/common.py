"""Helpers shared by the benchmarks: JSON-line output, timing and the device's matmul peak."""

import json
import sys
import time

import jax
import jax.numpy as jnp

from ssl_jax import flops


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


def device_peak_flops(dtype=jnp.float32, size: int = 4096) -> tuple[float, str]:
  """(FLOP/s, how it was obtained): the chip's published bf16 peak (`ssl_jax.flops`), or, on
  CPU and unknown chips, a large matmul measured by XLA right now (a CPU-relative MFU)."""
  device = jax.devices()[0]
  peak = flops.bf16_peak_flops(device.device_kind) if device.platform != "cpu" else None
  if peak:
    return peak, f"published bf16 peak of {device.device_kind}"
  a = jnp.ones((size, size), dtype)
  b = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  seconds = time_fn(matmul, a, b, repeats=5)
  return 2 * size**3 / seconds, f"measured {size}x{size} {jnp.dtype(dtype).name} matmul"
