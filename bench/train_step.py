r"""Train-step throughput and MFU for any config.

    python bench/train_step.py --config configs/mae.py:vit_b16,imagenet --batch_size 8
    python bench/train_step.py --config configs/mae.py:vit_b16,imagenet --batch_size 8 \
        --compare_encode_all   # MAE: visible-only encoder vs encoder on every patch
    python bench/train_step.py --config configs/mae.py:vit_b16,imagenet --batch_size 256 \
        --matmul_dtypes        # only trace: the share of matmul FLOPs per operand dtype

Prints JSON lines: images/s, step time, compile seconds, model and hardware FLOPs per step
(counted on the step's jaxpr by ssl_jax/flops.py, the same on every backend: XLA's GPU cost
analysis misses cuBLAS/cuDNN calls), and `mfu_model` / `mfu_hardware` = achieved / peak, where the
peak is the chips' published bf16 peak times the device count, and on CPU (or an unknown chip)
the FLOP/s of a large float32 matmul measured by XLA on the same machine in the same run.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench import common  # noqa: E402
from ssl_jax import config_lib, flops, trainer  # noqa: E402


def measure(config, *, steps: int, peak_flops_per_sec: float | None = None) -> dict:
  """Step time, images/s, compile seconds and FLOPs of `config`'s jitted train step.

  `model_flops_per_step`: the networks' forward + backward matmuls on the same config with remat
  off and plain attention (`trainer.model_flops_per_step`), the numerator of `mfu_model`;
  `hardware_flops_per_step`: every matmul the step as configured runs (remat recomputation,
  augmentation, losses), the numerator of `mfu_hardware`. Both are None-safe against a missing
  peak (`mfu_*` then None).
  """
  setup = trainer.build(config, total_steps=1000, steps_per_epoch=100)
  batch = common.random_batch(setup, config)
  state = setup.init_state()
  hardware = flops.count_flops(setup.step, state, batch)
  model_flops = trainer.model_flops_per_step(config, total_steps=1000, steps_per_epoch=100,
                                             setup=setup)
  # compile_s = lower_s (trace, when the FLOP count has not already cached it, and lowering
  # to StableHLO: host Python) + xla_compile_s (XLA's passes and, on GPUs, gemm autotuning).
  start = time.perf_counter()
  lowered = setup.step.lower(state, batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  lower_seconds = lowered_at - start
  state, _ = compiled(state, batch)  # warm-up
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  step_time = (time.perf_counter() - start) / steps
  params = sum(x.size for x in jax.tree.leaves(state["params"]))
  images = sum(x.shape[0] for x in jax.tree.leaves(batch) if x.ndim == 4)
  return {"step_time_s": step_time, "images_per_sec": images / step_time,
          "compile_s": compile_seconds, "lower_s": lower_seconds,
          "xla_compile_s": compile_seconds - lower_seconds,
          "model_flops_per_step": model_flops, "hardware_flops_per_step": hardware.all,
          "model_flops_per_image": model_flops / images,
          "achieved_flops_per_sec": model_flops / step_time,
          "mfu_model": flops.mfu(model_flops, step_time, peak_flops_per_sec),
          "mfu_hardware": flops.mfu(hardware.all, step_time, peak_flops_per_sec),
          "num_params": int(params)}


def matmul_dtypes(config) -> dict:
  """The train step's matmul FLOPs per "lhs x rhs -> result" dtype, from its jaxpr."""
  setup = trainer.build(config, total_steps=1000, steps_per_epoch=100)
  batch = common.random_batch(setup, config)
  by_dtype = flops.matmul_flops_by_dtype(setup.step, jax.eval_shape(setup.init_state), batch)
  total = sum(by_dtype.values())
  return {"matmul_flops_per_step": total,
          "share_by_dtype": {key: value / total for key, value in by_dtype.items()}}


def main():
  parser = common.config_parser(__doc__)
  parser.add_argument("--compare_encode_all", action="store_true",
                      help="MAE only: also time the encoder on all patches (no token dropping)")
  parser.add_argument("--matmul_dtypes", action="store_true",
                      help="trace only (no compile, any machine): the step's matmul FLOPs per "
                           "operand/result dtype")
  args = parser.parse_args()

  config = common.load_config(args.config, args.overrides, args.batch_size)
  if args.matmul_dtypes:
    common.emit(matmul_dtypes(config) | {"bench": "matmul_dtypes", "config": args.config,
                                         "batch_size": config.batch_size,
                                         "dtype": config.model.dtype})
    return
  peak, peak_source = common.device_peak_flops()
  variants = [("default", {})]
  if args.compare_encode_all:
    variants.append(("encode_all_patches", {"method.encode_all_patches": "True"}))
  results = {}
  for name, extra in variants:
    variant = config_lib.from_json(config_lib.to_json(config))
    variant.lock()
    config_lib.apply_overrides(variant, [f"{k}={v}" for k, v in extra.items()])
    result = measure(variant, steps=args.steps, peak_flops_per_sec=peak * jax.device_count())
    result.update(bench="train_step", config=args.config, variant=name,
                  batch_size=config.batch_size, model=config.model.name,
                  dtype=config.model.dtype, device=jax.devices()[0].device_kind,
                  num_devices=jax.device_count(), peak_flops_per_sec=peak,
                  peak_source=peak_source)
    results[name] = result
    common.emit(result)
  if args.compare_encode_all:
    common.emit({"bench": "mae_visible_only_speedup",
                 "speedup": results["encode_all_patches"]["step_time_s"]
                            / results["default"]["step_time_s"],
                 "mask_ratio": config.method.mask_ratio})


if __name__ == "__main__":
  main()
