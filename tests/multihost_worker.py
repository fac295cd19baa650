"""One process of the two-process `jax.distributed` test (run by tests/test_multihost.py).

Usage: python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON WORKDIR [STEPS]
With NUM_PROCESSES=1 it is the single-process reference. With STEPS it only runs the training
loop for STEPS steps in WORKDIR (resuming what is there; a SIGTERM saves and exits) and writes
the loop's result (tests/test_multihost.py's preemption test).
"""

import json
import os
import pathlib
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main():
  process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
  out_json, workdir = sys.argv[4], sys.argv[5]
  if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                               num_processes=num_processes, process_id=process_id)
  if len(sys.argv) > 6:
    result = preemptible_loop(workdir, int(sys.argv[6]))
    with open(out_json, "w") as f:
      json.dump({"preempted_at": result.get("preempted_at"), "step": result.get("step"),
                 "process_index": jax.process_index()}, f)
    return
  from ssl_jax import config_lib, trainer

  config = config_lib.load_config("configs/mae.py:smoke")
  config.batch_size = 8
  setup = trainer.build(config, total_steps=10, steps_per_epoch=10)
  # A fixed global batch; each process contributes its contiguous half.
  rng = np.random.default_rng(0)
  global_images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  local = 8 // num_processes
  rows = slice(process_id * local, (process_id + 1) * local)
  batch = setup.global_batch({"image": global_images[rows],
                              "label": np.zeros((local,), np.int32)})
  state, step = setup.init_state(), setup.step
  losses = []
  for _ in range(3):
    state, metrics = step(state, batch)
    losses.append(float(metrics["train/loss"]))

  result = {"eval/knn_top1": None}
  if num_processes > 1:  # The whole loop across hosts: sharded data, eval collectives, ckpts.
    result = run_loop(workdir)
  with open(out_json, "w") as f:
    json.dump({"losses": losses, "knn_top1": result["eval/knn_top1"],
               "process_count": jax.process_count(), "device_count": jax.device_count()}, f)


def run_loop(workdir):
  from ssl_jax import config_lib, train
  loop_config = config_lib.load_config("configs/mae.py:smoke")
  loop_config.total_steps = 6
  loop_config.checkpoint_every = 3
  loop_config.batch_size = 16
  return train.train_and_evaluate(loop_config, workdir)


def preemptible_loop(workdir, total_steps):
  """MAE smoke, logging (and so agreeing on a SIGTERM across hosts) every step, saving only at
  the end or when stopped, k-NN and export at the end."""
  from ssl_jax import config_lib, train
  config = config_lib.load_config("configs/mae.py:smoke")
  config.total_steps = total_steps
  config.log_every = 1
  config.checkpoint_every = 0
  config.batch_size = 16
  config.visualize = False
  return train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  main()
