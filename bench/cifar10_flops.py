r"""What bench/cifar10_accelerator.sh asks of a device, counted on CPU before renting one.

    python bench/cifar10_flops.py [--epochs 200] [--mfu 0.2] [--peak 989e12] [METHOD ...]
    python bench/cifar10_flops.py --list    # the methods, heaviest run first (no counting)

For every method with a `cifar10` preset (or the listed ones), in bfloat16 as the script runs
them: the train step's matmul FLOPs (`flops.count_flops` on the step's jaxpr: all matmuls,
augmentation included), the run's steps (`epochs` x the steps per epoch of its real training
data, ../shared/data's 10k split), their product, and the device seconds that product takes at
`--mfu` of `--peak` (default: an H100's dense bf16 989 TFLOP/s). Prints one JSON line per method
and a `total` line. Tracing only; needs ../shared/data (or SSL_JAX_DATA) for the split's size.
"""

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from ssl_jax import config_lib, flops, steps, trainer  # noqa: E402
from ssl_jax.data import streams  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
NEEDS_A_TEACHER = ("distill", "noisy_student")  # bench/cifar10_accelerator.sh leaves them out
# This script's output at 200 epochs, kept with the docs (docs/performance.md).
COUNTED = REPO / "docs" / "data" / "cifar10_200_epoch_flops.jsonl"


def methods_with_cifar10_preset() -> list[str]:
  names = []
  for path in sorted((REPO / "configs").glob("*.py")):
    if path.stem == "common" or path.stem in NEEDS_A_TEACHER:
      continue
    try:
      config_lib.load_config(f"{path}:cifar10")
    except ValueError:  # No cifar10 preset.
      continue
    names.append(path.stem)
  return names


def heaviest_first(methods: list[str], counted: pathlib.Path = COUNTED) -> list[str]:
  """`methods` by their run's FLOPs in `counted` (this script's JSON lines), largest first;
  methods it does not hold go last, in their given order."""
  cost = {}
  if counted.exists():
    for line in counted.read_text().splitlines():
      record = json.loads(line)
      if "method" in record:
        cost[record["method"]] = record["run_flops"]
  return sorted(methods, key=lambda m: -cost.get(m, 0.0))


def count(method: str, epochs: float) -> dict:
  config = config_lib.load_config(str(REPO / "configs" / f"{method}.py") + ":cifar10")
  config.lock()
  config_lib.apply_overrides(config, ["model.dtype=bfloat16", f"epochs={epochs}",
                                      "total_steps=0"])
  steps_per_epoch = streams.make_train_data(config).steps_per_epoch
  total_steps = steps.total_steps(config, steps_per_epoch)
  setup = trainer.build(config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
  step_flops = flops.count_flops(setup.step, *setup.step_arg_shapes()).all
  return {"method": method, "flops_per_step": step_flops, "steps_per_epoch": steps_per_epoch,
          "steps": total_steps, "batch": streams.batch_sizes(config),
          "run_flops": step_flops * total_steps}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--epochs", type=float, default=200)
  parser.add_argument("--mfu", type=float, default=0.2, help="assumed achieved / peak")
  parser.add_argument("--peak", type=float, default=989e12, help="device bf16 FLOP/s")
  parser.add_argument("--list", action="store_true",
                      help="print the methods, heaviest run first, one per line, and stop")
  parser.add_argument("methods", nargs="*")
  args = parser.parse_args()
  if args.list:
    print("\n".join(heaviest_first(args.methods or methods_with_cifar10_preset())))
    return
  total = 0.0
  for method in args.methods or methods_with_cifar10_preset():
    record = count(method, args.epochs)
    record["device_s_at_mfu"] = record["run_flops"] / (args.mfu * args.peak)
    total += record["run_flops"]
    common.emit({"bench": "cifar10_flops", "epochs": args.epochs, **record})
  common.emit({"bench": "cifar10_flops_total", "epochs": args.epochs, "run_flops": total,
               "mfu": args.mfu, "peak": args.peak,
               "device_s_at_mfu": total / (args.mfu * args.peak),
               "mfu_for_15_minutes": total / (900 * args.peak)})


if __name__ == "__main__":
  main()
