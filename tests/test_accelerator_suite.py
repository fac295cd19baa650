"""bench/accelerator_suite.{py,sh}: missing requirements listed up front, jobs isolated (a missing
module is a 'skipped' line, not a traceback; timeouts and the budget bound every job), levers and
stages checked before anything runs, and the --smoke suite runs every stage end to end (about two
minutes of CPU: one process per measurement)."""

import json
import pathlib
import subprocess
import sys

import pytest

from bench import accelerator_suite as suite

REPO = pathlib.Path(__file__).resolve().parents[1]


def _records(text: str) -> list[dict]:
  return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_requirements_stage_alone_lists_missing_modules_and_a_summary():
  done = subprocess.run([sys.executable, "bench/accelerator_suite.py", "--smoke", "--stages",
                         "requirements"], cwd=REPO, capture_output=True, text=True, check=True)
  records = _records(done.stdout)
  assert [r["stage"] for r in records] == ["requirements", "summary"]
  assert records[0]["missing"] == records[1]["missing_requirements"] == []  # This venv has all.
  assert records[0]["missing_optional"] == []
  assert records[0]["installed"]["jax"]


def test_missing_requirements_names_the_absent_ones(tmp_path, monkeypatch):
  (tmp_path / "pyproject.toml").write_text(
      '[project]\ndependencies = ["jax>=0.1,<1", "ml-collections>=1.0", "surely-absent>=1",\n'
      '  "orbax-absentmodule>=2"]\n'
      '[project.optional-dependencies]\ntf = ["tensorflow-absent>=2"]\ntpu = ["libtpu-x"]\n')
  monkeypatch.setattr(suite, "REPO", tmp_path)
  report = suite.missing_requirements()
  assert report["missing"] == ["surely-absent", "orbax-absentmodule"]
  assert report["missing_optional"] == ["tensorflow-absent"]  # tpu is not an extra we check.
  assert set(report["installed"]) == {"jax", "ml-collections"}


def _job(code: str) -> list[str]:
  return ["-c", code]


def test_runner_tags_lines_and_turns_failures_into_one_line(tmp_path, capsys):
  runner = suite.Runner(budget_s=0, log_dir=tmp_path)
  records = runner.run("step", "ok", _job('print("noise"); print(\'{"x": 1}\')'), timeout_s=30)
  [record] = records
  assert 0 < record.pop("job_wall_s") < 30
  assert record == {"x": 1, "suite": "accelerator", "stage": "step", "job": "ok"}
  assert runner.run("step", "absent", _job("import surely_absent_module"), 30) == []
  runner.run("step", "crash", _job("raise RuntimeError('device lost')"), timeout_s=30)
  runner.run("step", "hang", _job("import time; time.sleep(30)"), timeout_s=1)
  lines = _records(capsys.readouterr().out)
  assert lines[1]["skipped"] == "needs module surely_absent_module (not installed)"
  assert lines[2]["error"] == "RuntimeError: device lost"
  assert (tmp_path / "step.crash.log").read_text().startswith("Traceback")
  assert lines[3]["error"].startswith("timed out after 1 s")


def test_spent_budget_skips_jobs_without_running_them(tmp_path, capsys):
  runner = suite.Runner(budget_s=5, log_dir=tmp_path)  # < 20 s left: no job fits.
  assert runner.run("pmae", "pmae_vs_mae", _job("raise SystemExit(1)"), 30) == []
  assert _records(capsys.readouterr().out)[0]["skipped"].startswith("suite budget spent")


def test_loop_rate_is_the_median_after_the_compile_window(tmp_path):
  rates = [5.0, 100.0, 90.0, 110.0]  # The first window holds the compile.
  (tmp_path / "metrics.jsonl").write_text("".join(
      json.dumps({"step": i, "train/images_per_sec": r}) + "\n" for i, r in enumerate(rates))
      + json.dumps({"step": 9, "eval/knn_top1": 0.5}) + "\n")
  assert suite._loop_images_per_sec(tmp_path) == 100.0
  assert suite._loop_images_per_sec(tmp_path / "absent") is None


@pytest.mark.parametrize("sizes", [suite.full_sizes(), suite.smoke_sizes()],
                         ids=["full", "smoke"])
def test_every_loop_run_is_loop_steps_long_and_bf16_where_asked(sizes):
  # The presets give their length in epochs; a loop run that set total_steps alone was refused
  # by the loop (both set) on the first accelerator run.
  from ssl_jax import config_lib, steps
  for workload in sizes.workloads:
    config = config_lib.load_config(workload.config)
    config.lock()
    config_lib.apply_overrides(config, suite.loop_overrides(workload, sizes))
    assert steps.total_steps(config, steps_per_epoch=1000) == sizes.loop_steps, workload.name
    assert config.batch_size == workload.batch_size
    if "model.dtype=bfloat16" in workload.overrides:
      assert config.model.dtype == "bfloat16"

def test_the_float32_cifar10_preset_is_measured_in_bfloat16():
  simclr = next(w for w in suite.full_sizes().workloads if w.name == "simclr_cifar10")
  assert "model.dtype=bfloat16" in simclr.overrides


@pytest.mark.parametrize("lever", sorted(suite.LEVERS))
def test_every_lever_is_a_valid_override_of_the_lever_config(lever):
  from ssl_jax import config_lib
  config = config_lib.load_config(suite.full_sizes().lever_config)
  config.lock()
  config_lib.apply_overrides(config, list(suite.LEVERS[lever].overrides))
  config_lib.validate(config)
  for flag in suite.LEVERS[lever].xla_flags:
    assert flag.startswith("--xla_gpu_") and "=" in flag


def test_xla_flag_levers_append_to_the_callers_flags(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert suite.with_xla_flags() is None
  assert suite.with_xla_flags("--xla_gpu_autotune_level=0") == {
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_gpu_autotune_level=0"}


def test_unknown_lever_is_a_one_line_error():
  with pytest.raises(SystemExit, match="unknown lever.*'flash'.*levers: baseline, attention_xla"):
    suite.main(["--smoke", "--stages", "levers", "--levers", "flash"])
  with pytest.raises(SystemExit, match="unknown lever.*'fast'"):
    suite.main(["--smoke", "--stages", "profile", "--profile_lever", "fast"])


def test_unknown_stage_is_a_one_line_error():
  with pytest.raises(SystemExit, match="unknown stage.*'stepp'.*stages: requirements"):
    suite.main(["--smoke", "--stages", "stepp"])


# Issue 13: both suites' --smoke modes run in the default suite, so neither rots unseen
# (about 2.5 minutes of CPU together).
def test_smoke_suite_runs_every_stage(tmp_path):
  done = subprocess.run(["bash", "bench/accelerator_suite.sh", "--smoke", "--log_dir",
                         str(tmp_path)], cwd=REPO, capture_output=True, text=True, check=True,
                        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
  records = _records(done.stdout)
  assert not [r for r in records if "error" in r or "skipped" in r], done.stdout
  # visible_only has no jobs of its own: it adds --compare_encode_all to the MAE step job.
  assert {r["stage"] for r in records} == set(suite.STAGES) - {"visible_only"} | {"summary"}
  summary = records[-1]
  for key in ("loader_images_per_sec", "mae_smoke/mfu_model", "mae_smoke/compile_s",
              "mae_visible_only_speedup", "simclr_smoke/loop_to_step_ratio",
              "pmae_dcgan_ratio", "pmae_msg_ratio", "profile_matmul_share",
              "profile_op_ms_per_step", "mae_large/mfu_model",
              *(f"lever_{lever}/step_time_s" for lever in suite.CPU_LEVERS)):
    assert summary[key] is not None and summary[key] > 0, key


def test_previous_run_supplies_the_step_rates_of_a_later_loop_stage():
  lines = [{"stage": "step", "bench": "train_step", "variant": "default", "job": "mae",
            "images_per_sec": 3000.0},
           {"stage": "step", "bench": "train_step", "variant": "encode_all_patches",
            "job": "mae", "images_per_sec": 1500.0},
           {"stage": "loop", "bench": "loop", "job": "mae", "loop_images_per_sec": 2900.0}]
  assert suite.step_rates_of(lines) == {"mae": 3000.0}


def test_levers_and_the_profiled_lever_reach_their_jobs(tmp_path):
  """Each lever's overrides, XLA flags and batch size reach its job's command line and
  environment, in the levers stage and, with --profile_lever, the profile stage."""
  calls = []

  class Recording:
    def run(self, stage, job, argv, timeout_s, env=None):
      calls.append((stage, job, argv, (env or {}).get("XLA_FLAGS", "")))
      return []

  sizes = suite.full_sizes()
  suite.run_suite(["profile", "levers"], sizes, Recording(), smoke=False,
                  levers=("batch_1024", "autotune_0"), profile_lever="cudnn_onehot_1024")
  (_, profile_job, profile_argv, profile_flags), batch, autotune = calls
  assert profile_job == "mae_step_cudnn_onehot_1024"
  assert profile_argv[profile_argv.index("--batch_size") + 1] == "1024"
  assert {"model.attention_impl=cudnn", "model.token_gather=onehot"} <= set(profile_argv)
  assert "--xla_gpu_enable_command_buffer=" in profile_flags
  assert batch[2][batch[2].index("--batch_size") + 1] == "1024"
  assert autotune[2][autotune[2].index("--batch_size") + 1] == str(sizes.lever_batch_size)
  assert "--xla_gpu_autotune_level=0" in autotune[3]

  calls.clear()
  suite.run_suite(["profile"], sizes, Recording(), smoke=False, profile_target="pmae_dcgan")
  [(_, job, argv, _)] = calls
  assert job == "pmae_dcgan_step"
  assert argv[argv.index("--config") + 1] == (
      f"configs/perceptual_mae.py:{sizes.pmae_preset},dcgan")
  assert argv[argv.index("--batch_size") + 1] == str(sizes.pmae_batch_size)


@pytest.mark.parametrize("target", sorted(suite.PROFILE_TARGETS))
def test_every_profile_target_is_a_loadable_config(target):
  from ssl_jax import config_lib
  config, _ = suite.PROFILE_TARGETS[target](suite.full_sizes())
  config_lib.validate(config_lib.load_config(config))
