r"""Per-device bytes of params + optimizer state: replicated vs FSDP on an 8-device mesh.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python bench/fsdp_memory.py --config configs/mae.py:vit_b16,imagenet

Shapes come from `jax.eval_shape` and each leaf's bytes on the most loaded device from the
sharding the loop would use (`parallel.state_shardings`), so ViT-B/L measure without
allocating them. Prints one JSON line per layout and the FSDP/replicated ratio (ideal: 1/8).
"""

import argparse
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from ssl_jax import config_lib, trainer  # noqa: E402


def per_device_bytes(abstract_tree, shardings) -> int:
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    shard_shape = sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard_shape, dtype=np.int64)) * leaf.dtype.itemsize
  return total


def measure(config, fsdp: int) -> dict:
  config = config_lib.from_json(config_lib.to_json(config))
  config.mesh.data, config.mesh.fsdp = -1, fsdp
  setup = trainer.build(config, total_steps=100, steps_per_epoch=10)
  state = {k: setup.abstract_state[k] for k in ("params", "opt_state")}
  shardings = {k: setup.shardings[k] for k in ("params", "opt_state")}
  total = sum(int(np.prod(l.shape, dtype=np.int64)) * l.dtype.itemsize
              for l in jax.tree.leaves(state))
  return {"per_device_bytes": per_device_bytes(state, shardings), "total_bytes": total,
          "mesh": dict(setup.mesh.shape)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/mae.py:vit_b16,imagenet")
  args = parser.parse_args()
  config = config_lib.load_config(args.config)
  devices = jax.device_count()
  replicated = measure(config, 1)
  sharded = measure(config, devices)
  for name, result in (("replicated", replicated), ("fsdp", sharded)):
    common.emit({"bench": "fsdp_memory", "layout": name, "config": args.config, **result})
  common.emit({"bench": "fsdp_memory_ratio", "config": args.config, "devices": devices,
               "fsdp_over_replicated": sharded["per_device_bytes"] / replicated["per_device_bytes"]})


if __name__ == "__main__":
  main()
