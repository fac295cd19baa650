"""A two-process `jax.distributed` run on localhost (gloo collectives) equals one process, and a
SIGTERM to one of its processes stops both at one checkpoint that a restart finishes from."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import runs

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multihost_worker.py"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(process_id, num_processes, port, out, workdir, *extra):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  return subprocess.Popen(
      [sys.executable, str(WORKER), str(process_id), str(num_processes), str(port), str(out),
       str(workdir), *map(str, extra)], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT)


def _finish(procs, timeout=420):
  outputs = []
  for proc in procs:
    output = proc.communicate(timeout=timeout)[0].decode()
    assert proc.returncode == 0, output[-4000:]
    outputs.append(output)
  return outputs


def test_two_processes_give_the_same_loss_as_one(tmp_path):
  port = _free_port()
  procs = [_launch(i, 2, port, tmp_path / f"p{i}.json", tmp_path / "two") for i in range(2)]
  single = _launch(0, 1, port, tmp_path / "single.json", tmp_path / "one")
  for proc in procs + [single]:
    output = proc.communicate(timeout=420)[0].decode()
    assert proc.returncode == 0, output[-4000:]
  results = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
  reference = json.loads((tmp_path / "single.json").read_text())
  assert results[0]["process_count"] == 2 and results[0]["device_count"] == 2
  assert reference["process_count"] == 1
  np.testing.assert_allclose(results[0]["losses"], reference["losses"], rtol=1e-5)
  np.testing.assert_allclose(results[1]["losses"], reference["losses"], rtol=1e-5)
  # Both hosts agree on the k-NN accuracy computed from sharded features.
  assert results[0]["knn_top1"] == results[1]["knn_top1"]
  assert (tmp_path / "two" / "checkpoints").is_dir()


STEPS = 150  # Long enough that the run is still going when the signal lands.


def _two_process_run(tmp_path, name, workdir, started):
  port = _free_port()
  procs = [_launch(i, 2, port, tmp_path / f"{name}{i}.json", workdir, STEPS) for i in range(2)]
  started.extend(procs)
  return procs


def _logged_steps(workdir):
  path = workdir / "metrics.jsonl"
  return [r["step"] for r in runs.read_metrics(workdir)] if path.exists() else []


@pytest.mark.slow  # Three two-process runs of 150 steps: minutes on 2 busy cores.
def test_sigterm_to_one_process_stops_both_at_one_checkpoint_and_a_restart_finishes(tmp_path):
  started = []
  try:
    _sigterm_one_process_then_resume(tmp_path, started)
  finally:
    for proc in started:  # Only on failure are any left running.
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def _sigterm_one_process_then_resume(tmp_path, started):
  reference = _two_process_run(tmp_path, "ref", tmp_path / "uninterrupted", started)
  workdir = tmp_path / "preempted"
  procs = _two_process_run(tmp_path, "first", workdir, started)
  deadline = time.time() + 400
  while not [step for step in _logged_steps(workdir) if step >= 3]:
    assert time.time() < deadline and procs[1].poll() is None, "no step logged in time"
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # Only process 1: a preemption notice to one host.
  _finish(procs)
  first = [json.loads((tmp_path / f"first{i}.json").read_text()) for i in range(2)]
  stopped = first[0]["preempted_at"]
  assert stopped is not None and 3 <= stopped < STEPS and first[1]["preempted_at"] == stopped
  # One checkpoint, written by both together; a stopped run exports nothing.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [str(stopped)]
  assert not (workdir / "export").exists()

  outputs = _finish(_two_process_run(tmp_path, "resumed", workdir, started))
  resumed = [json.loads((tmp_path / f"resumed{i}.json").read_text()) for i in range(2)]
  assert [r["step"] for r in resumed] == [STEPS, STEPS]
  _finish(reference)
  params = ckpt_lib.Checkpointer(str(workdir)).restore_params(STEPS)
  expected = ckpt_lib.Checkpointer(str(tmp_path / "uninterrupted")).restore_params(STEPS)
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  # Process 0 alone logs and exports: each step once in metrics.jsonl, its closing lines only.
  assert _logged_steps(workdir) == list(range(1, STEPS + 1))
  assert (workdir / "export" / "params.npz").exists()
  assert "final k-NN top-1" in outputs[0] and "final k-NN top-1" not in outputs[1]
