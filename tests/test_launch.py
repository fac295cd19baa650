"""The launch scripts: they parse and are shellcheck clean, every sub-command's --dry-run prints
the exact gcloud / sbatch / ssh invocations, and the supervisor restarts and stops as it says."""

import os
import pathlib
import shutil
import signal
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCHERS = ["launch/local.sh", "launch/setup_env.sh", "launch/tpu_vm.sh",
             "launch/gpu_multinode.sh", "launch/supervise.sh", "launch/dry_run.sh"]
SCRIPTS = LAUNCHERS + ["tests/run.sh", ".ci/run"]
TPU_ENV = dict(TPU_NAME="ssl-jax", TPU_ZONE="us-central2-b", TPU_TYPE="v4-32",
               TPU_PROJECT="my-proj")


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script):
  subprocess.run(["bash", "-n", str(REPO / script)], check=True)


def test_launchers_are_shellcheck_clean():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
  result = subprocess.run(["shellcheck", "--external-sources", *LAUNCHERS], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def _run(script, *args, env=None):
  env = dict({k: v for k, v in os.environ.items() if not k.startswith("TPU_")}, **(env or {}))
  return subprocess.run(["bash", str(REPO / script), *args], env=env, capture_output=True,
                        text=True)


def test_tpu_vm_help_and_unknown_command():
  ok = _run("launch/tpu_vm.sh", "help")
  assert ok.returncode == 0 and "create" in ok.stdout and "--dry-run" in ok.stdout
  bad = _run("launch/tpu_vm.sh", "launch-rockets", env=TPU_ENV)
  assert bad.returncode == 2 and "Unknown command" in bad.stderr


def test_tpu_vm_requires_name_and_zone():
  result = _run("launch/tpu_vm.sh", "create")
  assert result.returncode != 0 and "TPU_NAME" in result.stderr


SSH = "gcloud compute tpus tpu-vm ssh ssl-jax --zone us-central2-b --project my-proj"
LOCATION = "--zone us-central2-b --project my-proj"
TPU_DRY_RUNS = {
    ("create",): f"gcloud compute tpus tpu-vm create ssl-jax {LOCATION} --accelerator-type v4-32 "
                 "--version tpu-ubuntu2204-base",
    ("create", "--spot"): f"gcloud compute tpus tpu-vm create ssl-jax {LOCATION} "
                          "--accelerator-type v4-32 --version tpu-ubuntu2204-base --spot",
    ("create", "--queued", "--spot"): (
        f"gcloud compute tpus queued-resources create ssl-jax --node-id ssl-jax {LOCATION} "
        "--accelerator-type v4-32 --runtime-version tpu-ubuntu2204-base --spot"),
    ("status",): f"gcloud compute tpus tpu-vm describe ssl-jax {LOCATION} "
                 "--format 'value(state)'",
    ("status", "--queued"): f"gcloud compute tpus queued-resources describe ssl-jax {LOCATION} "
                            "--format 'value(state.state)'",
    ("setup",): "\n".join([
        f"git -C {REPO} archive --format=tar.gz -o /tmp/ssl_jax_ssl-jax.tar.gz HEAD",
        "gcloud compute tpus tpu-vm scp /tmp/ssl_jax_ssl-jax.tar.gz ssl-jax:ssl_jax.tar.gz "
        f"{LOCATION} --worker=all",
        f"{SSH} --worker=all --command 'set -e; rm -rf ~/ssl_jax && mkdir -p ~/ssl_jax && "
        "tar -xzf ~/ssl_jax.tar.gz -C ~/ssl_jax && cd ~/ssl_jax && python3 -m venv .venv && "
        ".venv/bin/pip install -q -U pip && .venv/bin/pip install -q -r requirements.txt && "
        ".venv/bin/pip install -q '\\''.[tpu,tf]'\\'' && .venv/bin/python -c "
        "'\\''import ssl_jax, jax; print(jax.devices())'\\'''"]),
    ("run", "configs/dino.py:vit_s16,imagenet", "gs://b/dino",
     "--config.data.data_dir=gs://b/tfds"): (
        f"{SSH} --worker=all --command 'mkdir -p ~/ssl_jax_run && cd ~/ssl_jax && nohup bash "
        "launch/supervise.sh --log ~/ssl_jax_run/train.log --pid-file "
        "~/ssl_jax_run/supervisor.pid -- .venv/bin/python -m ssl_jax.train --config "
        "configs/dino.py:vit_s16,imagenet --workdir gs://b/dino "
        "--config.data.data_dir=gs://b/tfds > /dev/null 2>&1 < /dev/null &'"),
    ("logs", "3"): f"{SSH} --worker=3 --command 'tail -n 100 -F ~/ssl_jax_run/train.log'",
    ("ssh",): f"{SSH} --worker=0",
    ("ssh", "2", "ls", "-l"): f"{SSH} --worker=2 --command 'ls -l'",
    ("stop",): (f"{SSH} --worker=all --command 'pid_file=~/ssl_jax_run/supervisor.pid; if [ -f "
                "$pid_file ]; then kill -TERM $(cat $pid_file) && echo \"stopping supervisor "
                "$(cat $pid_file)\"; rm -f $pid_file; else echo '\\''no supervisor recorded'\\''; "
                "fi'"),
    ("delete",): f"gcloud compute tpus tpu-vm delete ssl-jax {LOCATION} --quiet",
    ("delete", "--queued"): (f"gcloud compute tpus queued-resources delete ssl-jax {LOCATION} "
                             "--force --quiet"),
}


@pytest.mark.parametrize("args", list(TPU_DRY_RUNS), ids=" ".join)
def test_tpu_vm_dry_run_prints_the_gcloud_commands(args):
  result = _run("launch/tpu_vm.sh", "--dry-run", *args, env=dict(TPU_ENV, TMPDIR="/tmp"))
  assert result.returncode == 0, result.stderr
  assert result.stdout == TPU_DRY_RUNS[args] + "\n"


def test_tpu_vm_rejects_unknown_create_option():
  result = _run("launch/tpu_vm.sh", "--dry-run", "create", "--preemptible", env=TPU_ENV)
  assert result.returncode == 2 and "Unknown option for create: --preemptible" in result.stderr


def test_gpu_multinode_dry_runs():
  sbatch = _run("launch/gpu_multinode.sh", "sbatch", "--dry-run", "--nodes", "4",
                "--partition", "a100", "configs/dino.py:vit_s16,imagenet", "/shared/dino",
                "--config.data.data_dir=/data/my tfds", env={"SSL_JAX_PYTHON": "python3"})
  assert sbatch.returncode == 0, sbatch.stderr
  assert sbatch.stdout == "\n".join([
      "# sbatch script (read from stdin):", "#!/usr/bin/env bash", "#SBATCH --job-name=ssl_jax",
      "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
      "#SBATCH --time=24:00:00", "#SBATCH --signal=TERM@120",
      "#SBATCH --output=slurm-%x-%j.out", "#SBATCH --partition=a100", "set -euo pipefail",
      f"cd {REPO}",
      "srun --kill-on-bad-exit=1 python3 -m ssl_jax.train --config "
      "configs/dino.py:vit_s16,imagenet --workdir /shared/dino "
      "'--config.data.data_dir=/data/my tfds'", "# command:", "sbatch", ""])
  run = _run("launch/gpu_multinode.sh", "run", "--dry-run", "--nnodes", "2", "--node-rank", "1",
             "--coordinator", "node0:12355", "configs/mae.py:smoke", "/tmp/w",
             env={"SSL_JAX_PYTHON": "python3"})
  assert run.stdout == ("python3 -m ssl_jax.train --config configs/mae.py:smoke --workdir /tmp/w "
                        "--coordinator_address node0:12355 --num_processes 2 --process_id 1\n")
  hosts = _run("launch/gpu_multinode.sh", "hosts", "--dry-run", "--hosts", "n0,n1",
               "configs/mae.py:smoke", "/tmp/w", env={"SSL_JAX_PYTHON": "python3"})
  expected = ["mkdir -p multinode_logs"] + [
      f"ssh n{r} 'cd {REPO} && SSL_JAX_PYTHON=python3 bash launch/gpu_multinode.sh run --nnodes 2 "
      f"--node-rank {r} --coordinator n0:12355 configs/mae.py:smoke /tmp/w' "
      f"> multinode_logs/n{r}.log 2>&1 &" for r in range(2)]
  assert hosts.stdout == "\n".join(expected) + "\n"


@pytest.mark.parametrize("args, message", [
    (["run", "--nnodes", "2", "--node-rank", "2", "--coordinator", "n:1", "c", "w"],
     "--node-rank R in [0, 2)"),
    (["run", "--nnodes", "2", "--node-rank", "0", "--coordinator", "n0", "c", "w"],
     "--coordinator HOST:PORT"),
    (["sbatch", "c", "w"], "--nodes N"),
    (["sbatch", "--nodes", "2", "c"], "CONFIG and WORKDIR are required"),
    (["sbatch", "--nodes", "2", "c", "w", "--steps=3"], "unexpected argument '--steps=3'"),
])
def test_gpu_multinode_bad_arguments_are_clear_errors(args, message):
  result = _run("launch/gpu_multinode.sh", *args)
  assert result.returncode == 2 and message in result.stderr, result.stderr


def test_supervisor_watches_for_trains_preemption_line():
  line = "Preempted: checkpoint saved at step"
  assert line in (REPO / "launch/supervise.sh").read_text()
  assert line in (REPO / "ssl_jax/train.py").read_text()


FAKE_RUN = """
n=$(( $(cat count 2>/dev/null || echo 0) + 1 )); echo $n > count; echo "attempt $n"
case $n in
  1) exit 1 ;;
  2) echo "W Preempted: checkpoint saved at step 7; exiting." ;;
  *) echo "final k-NN top-1: 50.0%" ;;
esac
"""


def _supervise(tmp_path, script, *options):
  (tmp_path / "fake.sh").write_text(script)
  return subprocess.Popen(
      ["bash", str(REPO / "launch/supervise.sh"), "--log", "log.txt", "--pid-file", "pid",
       "--delay", "0", *options, "--", "bash", "fake.sh"], cwd=tmp_path)


def test_supervisor_restarts_after_a_crash_and_a_preemption_until_the_run_finishes(tmp_path):
  proc = _supervise(tmp_path, FAKE_RUN, "--min-seconds", "0")
  assert proc.wait(timeout=30) == 0
  log = (tmp_path / "log.txt").read_text()
  assert (tmp_path / "count").read_text().strip() == "3"
  assert "exit 1; restarting" in log and "exit 0, preempted; restarting" in log
  assert log.rstrip().endswith("finished")
  assert (tmp_path / "pid").read_text().strip() == str(proc.pid)


def test_supervisor_gives_up_on_quick_repeated_failures(tmp_path):
  proc = _supervise(tmp_path, "echo config error; exit 1\n", "--min-seconds", "60")
  assert proc.wait(timeout=30) == 1
  assert "giving up: 3 failures in a row" in (tmp_path / "log.txt").read_text()


def test_stop_signal_reaches_the_run_and_nothing_restarts(tmp_path):
  run = ("trap 'echo saved checkpoint; exit 0' TERM\necho started\n"
         "while true; do sleep 0.1; done\n")
  proc = _supervise(tmp_path, run)
  log_file, deadline = tmp_path / "log.txt", time.time() + 20
  while not (log_file.exists() and "started" in log_file.read_text()):
    assert time.time() < deadline, "the supervised command never started"
    time.sleep(0.1)
  os.kill(int((tmp_path / "pid").read_text()), signal.SIGTERM)
  assert proc.wait(timeout=20) == 0
  log = log_file.read_text()
  assert "saved checkpoint" in log and "stopped by signal" in log
  assert log.count("start (restart") == 1
