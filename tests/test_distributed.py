"""Which multi-process job a process joins (flags, SLURM, Open MPI), and (slow) a two-process
localhost training run through the CLI flags where only process 0 writes logs and exports."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from ssl_jax import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
SLURM_STEP = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu[01-04]", "SLURM_NTASKS": "4",
              "SLURM_PROCID": "2", "SLURM_LOCALID": "0"}
OPENMPI = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911",
           "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_RANK": "5"}


def test_single_process_environments_join_nothing():
  assert distributed.plan({}) is None
  assert distributed.plan(dict(SLURM_STEP, SLURM_NTASKS="1", SLURM_PROCID="0")) is None
  # In the sbatch script itself (no srun step yet) there is nothing to join.
  batch_script = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}
  assert distributed.plan(batch_script) is None
  assert distributed.plan({}, coordinator_address="h:1", num_processes=1, process_id=0) is None


def test_cluster_variables_and_flags():
  assert distributed.plan(SLURM_STEP) == distributed.Plan("slurm", 4, 2)
  assert distributed.plan(OPENMPI) == distributed.Plan("openmpi", 8, 5)
  # Explicit flags win over the cluster's variables.
  assert distributed.plan(SLURM_STEP, coordinator_address="node0:12355", num_processes=2,
                          process_id=1) == distributed.Plan("flags", 2, 1, "node0:12355")


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator_address="node0:1"), "without --num_processes, --process_id"),
    (dict(coordinator_address="node0", num_processes=2, process_id=0), "must be HOST:PORT"),
    (dict(coordinator_address="node0:1", num_processes=2, process_id=2), r"\[0, --num_processes=2"),
])
def test_bad_flags_are_clear_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    distributed.plan({}, **kwargs)


def test_bad_cluster_variable_is_a_clear_error():
  with pytest.raises(ValueError, match="SLURM_NTASKS='four' is not an integer"):
    distributed.plan(dict(SLURM_STEP, SLURM_NTASKS="four"))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cli_run_writes_logs_and_exports_once(tmp_path):
  port, workdir = _free_port(), tmp_path / "run"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "ssl_jax.train", "--config", "configs/mae.py:smoke",
       "--workdir", str(workdir), "--coordinator_address", f"localhost:{port}",
       "--num_processes", "2", "--process_id", str(i), "--config.total_steps=4",
       "--config.eval_every=4", "--config.log_every=2"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = [proc.communicate(timeout=600)[0] for proc in procs]
  for proc, output in zip(procs, outputs):
    assert proc.returncode == 0, output[-3000:]
  for i, output in enumerate(outputs):
    assert f"Joined a 2-process job (flags) as process {i}." in output
  # One metrics record per logged step (process 0 alone writes), one final summary.
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == [2, 4], steps
  for closing in ("final k-NN top-1", "k-NN top-1, same split: trained encoder"):
    assert closing in outputs[0] and closing not in outputs[1]
  assert (workdir / "export" / "params.npz").is_file()
