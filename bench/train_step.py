r"""Train-step throughput and MFU for any config.

    python bench/train_step.py --config configs/mae.py:vit_b16,imagenet --batch_size 8
    python bench/train_step.py --config configs/mae.py:vit_b16,imagenet --batch_size 8 \
        --compare_encode_all   # MAE: visible-only encoder vs encoder on every patch

Prints JSON lines: images/s, step time, model FLOPs per step (XLA's cost analysis of the
compiled step), achieved FLOP/s and MFU = achieved / peak, where the peak is, on CPU, the FLOP/s
of a large float32 matmul measured by XLA on the same machine in the same run, and on an
accelerator the chip's published bf16 peak.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from ssl_jax import config_lib, trainer  # noqa: E402
from ssl_jax.data import streams  # noqa: E402


def measure(config, *, steps: int) -> dict:
  setup = trainer.build(config, total_steps=1000, steps_per_epoch=100)
  rng = np.random.default_rng(0)
  # Random images in the structure the step receives (one batch, or one per data stream).
  batch = setup.global_batch(jax.tree.map(
      lambda s: rng.integers(0, 256, s.shape, dtype=s.dtype) if s.dtype == np.uint8
      else np.zeros(s.shape, s.dtype),
      streams.batch_shapes(config, process_count=jax.process_count())))
  state = setup.init_state()
  step_fn = setup.step
  compiled = step_fn.lower(state, batch).compile()
  flops = common.compiled_flops(compiled)
  state, _ = compiled(state, batch)  # warm-up
  jax.block_until_ready(state)
  import time
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  step_time = (time.perf_counter() - start) / steps
  params = sum(x.size for x in jax.tree.leaves(state["params"]))
  images = sum(x.shape[0] for x in jax.tree.leaves(batch) if x.ndim == 4)
  return {"step_time_s": step_time, "images_per_sec": images / step_time,
          "model_flops_per_step": flops, "achieved_flops_per_sec": flops / step_time,
          "num_params": int(params)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's batch_size")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--compare_encode_all", action="store_true",
                      help="MAE only: also time the encoder on all patches (no token dropping)")
  parser.add_argument("overrides", nargs="*", help="key.path=value config overrides")
  args = parser.parse_args()

  config = config_lib.load_config(args.config)
  config.lock()
  config_lib.apply_overrides(config, args.overrides)
  if args.batch_size:
    config.batch_size = args.batch_size
  peak, peak_source = common.device_peak_flops()
  variants = [("default", {})]
  if args.compare_encode_all:
    variants.append(("encode_all_patches", {"method.encode_all_patches": "True"}))
  results = {}
  for name, extra in variants:
    variant = config_lib.from_json(config_lib.to_json(config))
    variant.lock()
    config_lib.apply_overrides(variant, [f"{k}={v}" for k, v in extra.items()])
    result = measure(variant, steps=args.steps)
    result.update(bench="train_step", config=args.config, variant=name,
                  batch_size=config.batch_size, model=config.model.name,
                  dtype=config.model.dtype, device=jax.devices()[0].device_kind,
                  num_devices=jax.device_count(), peak_flops_per_sec=peak,
                  peak_source=peak_source, mfu=result["achieved_flops_per_sec"] / peak)
    results[name] = result
    common.emit(result)
  if args.compare_encode_all:
    common.emit({"bench": "mae_visible_only_speedup",
                 "speedup": results["encode_all_patches"]["step_time_s"]
                            / results["default"]["step_time_s"],
                 "mask_ratio": config.method.mask_ratio})


if __name__ == "__main__":
  main()
