"""bench/cifar10_accelerator.sh and bench/cifar10_flops.py: the CIFAR-10 table's script (its
--smoke chain, parallel runs, failures) and what the table asks of a device."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_cifar10_accelerator_smoke_writes_the_table_of_the_runs_that_did_not_fail(tmp_path):
  # Two at once (JOBS=2); 'no_such_method' fails at once and must not cost simclr its row.
  done = subprocess.run(
      ["bash", "bench/cifar10_accelerator.sh", "--smoke", str(tmp_path), "simclr",
       "no_such_method"], cwd=REPO, capture_output=True, text=True, check=False,
      env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
           "JOBS": "2"})
  assert done.returncode == 1, done.stderr[-2000:]
  assert (tmp_path / "failed.txt").read_text().split() == ["no_such_method"]
  assert "no_such_method failed; see" in done.stderr
  table = (tmp_path / "table.md").read_text().splitlines()
  rows = [line.split("|")[2].strip() for line in table[2:]]
  assert rows == ["simclr", "random init", "raw pixels"], table
  assert json.loads((tmp_path / "wall_times.jsonl").read_text())["method"] == "simclr"
  assert {p.name for p in (tmp_path / "simclr" / "eval").iterdir()} >= {"random.json", "raw.json"}


def test_cifar10_accelerator_rejects_a_bad_jobs_value(tmp_path):
  done = subprocess.run(["bash", "bench/cifar10_accelerator.sh", "--smoke", str(tmp_path)],
                        cwd=REPO, capture_output=True, text=True, check=False,
                        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "JOBS": "two"})
  assert done.returncode == 2 and "JOBS=two is not a positive integer" in done.stderr


def test_cifar10_flops_counts_a_run_as_its_steps_times_its_step(shared_data):
  del shared_data  # The cifar10 presets read its 10k split (steps per epoch).
  from bench import cifar10_flops
  methods = cifar10_flops.methods_with_cifar10_preset()
  assert "simclr" in methods and "fixmatch" in methods
  assert not set(methods) & set(cifar10_flops.NEEDS_A_TEACHER)
  record = cifar10_flops.count("simclr", epochs=2)
  assert (record["steps_per_epoch"], record["steps"]) == (10_000 // 256, 2 * (10_000 // 256))
  assert record["run_flops"] == record["flops_per_step"] * record["steps"]
  # ResNet-18 on 2 x 256 32-px views, forward + backward: about 1.7 TFLOP (the CIFAR ResNet-18's
  # 0.56 GMAC = 1.1 GFLOP per forward, x3 with the backward, x512 images, plus the heads).
  assert 1.5e12 < record["flops_per_step"] < 1.9e12


def test_cifar10_table_starts_the_heaviest_runs_first(tmp_path):
  from bench import cifar10_flops
  counted = tmp_path / "flops.jsonl"
  counted.write_text("\n".join(json.dumps(r) for r in [
      {"bench": "cifar10_flops", "method": "mae", "run_flops": 1.0},
      {"bench": "cifar10_flops", "method": "paws", "run_flops": 60.0},
      {"bench": "cifar10_flops_total", "run_flops": 61.0}]))
  assert cifar10_flops.heaviest_first(["mae", "simclr", "paws", "byol"], counted) == [
      "paws", "mae", "simclr", "byol"]
  listed = subprocess.run([sys.executable, "bench/cifar10_flops.py", "--list"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.split()
  assert listed == cifar10_flops.heaviest_first(cifar10_flops.methods_with_cifar10_preset())
  assert listed[0] == "paws" and "distill" not in listed
