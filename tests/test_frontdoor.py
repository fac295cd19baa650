"""The front door of a run: one log line per log step with ETA, evaluation progress, the
profiler window, collapse metrics and their warning, and the optional W&B writer."""

import json
import os
import logging as std_logging
import pathlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import collapse, config_lib, profiler, progress, runs, train, wandb_writer

REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- progress / ETA
def test_format_seconds_and_the_one_step_line():
  assert progress.format_seconds(3725.9) == "1:02:05"
  assert progress.format_seconds(-3) == "0:00:00"
  scalars = {"train/loss": 0.81234, "train/lr": 1.5e-4, "train/steps_per_sec": 6.1,
             "train/images_per_sec": 390.4, "train/epoch": 2.0, "train/collapse_std": 0.912,
             "eval/knn_top1": 0.717, "eval/knn_top5": 0.9, "eval/knn_seconds": 3.0}
  assert progress.step_line(40, 60, scalars, eta_seconds=3.4) == (
      "step 40/60  loss 0.8123  lr 1.5e-04  6.10 steps/s  390 img/s  ETA 0:00:03  "
      "collapse_std 0.912  knn_top1 71.70%")
  # An evaluation at a step that is not a log step: the same one line, without throughput.
  assert progress.step_line(50, 60, {"eval/knn_top1": 0.5}, eta_seconds=None) == (
      "step 50/60  knn_top1 50.00%")


def test_progress_logs_every_interval_with_eta_and_skips_short_passes():
  now = [0.0]
  lines = []
  bar = progress.Progress("train features: batch", 10, interval=5.0, clock=lambda: now[0],
                          log=lines.append)
  for done, t in zip(range(1, 11), (1, 2, 3, 4, 5, 6, 7, 8, 9.5, 10)):
    now[0] = t
    bar.update(done)
  # 5 batches in 5 s: 1 s per batch, 5 to go -> 5 s. The last line closes a logged pass.
  assert lines == ["train features: batch 5/10  ETA 0:00:05",
                   "train features: batch 10/10  done in 0:00:10"]
  short = []
  items = list(progress.track(range(3), "linear probe", 3, interval=5.0,
                              clock=lambda: 0.0, log=short.append))
  assert items == [0, 1, 2] and short == []  # Shorter than the interval: silent.


# ----------------------------------------------------------------------------------- collapse
def test_collapse_std_is_one_when_spread_and_zero_when_collapsed():
  d = 16
  spread = jnp.concatenate([jnp.eye(d), -jnp.eye(d)]) * 3.0  # each dim: +-1 in 2 of 2d rows
  # Per dimension var = 2 / (2d) = 1/d, so std = 1/sqrt(d); x sqrt(d) = 1 (scale-free).
  np.testing.assert_allclose(collapse.embedding_std(spread), 1.0, rtol=1e-6)
  collapsed = jnp.tile(jnp.arange(1.0, d + 1.0), (8, 1))
  np.testing.assert_allclose(collapse.embedding_std(collapsed), 0.0, atol=1e-6)


def test_teacher_entropy_is_normalised_by_log_k():
  np.testing.assert_allclose(collapse.normalised_entropy(jnp.full((4, 64), 1 / 64)), 1.0,
                             rtol=1e-6)
  np.testing.assert_allclose(collapse.normalised_entropy(jax.nn.one_hot([3, 5], 64)), 0.0,
                             atol=1e-6)
  half = jnp.array([[0.5, 0.5, 0.0, 0.0]])  # H = log 2 of log 4
  np.testing.assert_allclose(collapse.normalised_entropy(half), 0.5, rtol=1e-6)


def test_monitor_warns_once_per_metric_below_its_threshold():
  config = config_lib.base_config()
  monitor = collapse.Monitor(config)
  assert monitor.check(10, {collapse.STD: 0.5, collapse.TEACHER_ENTROPY: 0.3}) == []
  first = monitor.check(20, {collapse.STD: 0.05})
  assert len(first) == 1 and "collapse_std = 0.0500 < collapse.min_std = 0.1" in first[0]
  assert monitor.check(30, {collapse.STD: 0.01}) == []  # Once per run.
  assert len(monitor.check(30, {collapse.TEACHER_ENTROPY: 0.001})) == 1
  config.collapse.min_std = 0.0  # Off.
  assert collapse.Monitor(config).check(1, {collapse.STD: 0.0}) == []


# ----------------------------------------------------------------------------------- profiler
def test_profile_window_parsing_and_config_errors():
  assert profiler.parse_window("") is None
  assert profiler.parse_window("10:15") == (10, 15)
  for bad in ("10", "5:5", "a:b", "-1:3", "10-15"):
    with pytest.raises(config_lib.ConfigError, match="profile_steps must be 'START:STOP'"):
      profiler.parse_window(bad)
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  config.profile_steps = "3:1"
  with pytest.raises(config_lib.ConfigError, match="profile_steps"):
    config_lib.validate(config)


# -------------------------------------------------------------------------------------- W&B
def test_wandb_asked_for_but_missing_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
  config = config_lib.base_config()
  wandb_writer.check_available(config)  # Off: nothing is imported.
  config.wandb.project = "ssl"
  with pytest.raises(wandb_writer.WandbMissingError, match=r"pip install 'ssl-jax\[wandb\]'"):
    wandb_writer.check_available(config)


class _FakeRun:
  def __init__(self, log):
    self.log_calls, self.finished = log, False

  def log(self, values, step):
    self.log_calls.append((step, dict(values)))

  def finish(self):
    self.finished = True


def _fake_wandb():
  module = types.ModuleType("wandb")
  module.inits, module.logged, module.runs = [], [], []

  def init(**kwargs):
    module.inits.append(kwargs)
    module.runs.append(_FakeRun(module.logged))
    return module.runs[-1]

  module.init = init
  module.Image = lambda array: ("image", np.shape(array))
  return module


def test_wandb_writer_resumes_one_run_per_workdir_and_logs_each_image(tmp_path, monkeypatch):
  fake = _fake_wandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  config = config_lib.base_config()
  config.wandb.project = "p"
  writer = wandb_writer.WandbWriter(config, str(tmp_path))
  writer.write_images(7, {"reconstruction": np.zeros((2, 4, 4, 3), np.uint8)})
  writer.close()
  wandb_writer.WandbWriter(config, str(tmp_path))  # The resumed run: the same W&B id.
  assert fake.inits[0]["id"] == fake.inits[1]["id"] and len(fake.inits[0]["id"]) == 16
  assert fake.logged == [(7, {"reconstruction": [("image", (4, 4, 3))] * 2})]
  assert fake.runs[0].finished


# ------------------------------------------------------ one toy run through the real loop
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """SimCLR smoke at toy size, 4 steps on 1 device: W&B (fake), a 2-step profile window and a
  collapse threshold no run meets, so the warning must fire; k-NN at the end."""
  workdir = tmp_path_factory.mktemp("toy_run")
  fake = _fake_wandb()
  saved = sys.modules.get("wandb")
  sys.modules["wandb"] = fake
  config = config_lib.load_config(f"{REPO}/configs/simclr.py:smoke")
  config.lock()
  config_lib.apply_overrides(config, [
      "total_steps=4", "log_every=2", "batch_size=16", "checkpoint_every=0", "eval_every=0",
      "export_at_end=False", "visualize=False", "profile_steps=1:3", "wandb.project=toy",
      "wandb.mode=offline", "collapse.min_std=100.0", "eval.batch_size=256",
      "data.image_size=16"])
  handler = _ListHandler()
  absl_logger = std_logging.getLogger("absl")
  absl_logger.addHandler(handler)
  level = absl_logger.level
  absl_logger.setLevel(std_logging.INFO)
  try:
    result = train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  finally:
    absl_logger.setLevel(level)  # As it was (absl's set_verbosity would pin a level).
    absl_logger.removeHandler(handler)
    if saved is None:
      sys.modules.pop("wandb", None)
    else:
      sys.modules["wandb"] = saved
  return workdir, result, fake, handler.lines


class _ListHandler(std_logging.Handler):
  def __init__(self):
    super().__init__(level=std_logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append((record.levelno, record.getMessage()))


def test_toy_run_logs_one_line_per_log_step_and_collapse_metrics(toy_run):
  workdir, result, _, lines = toy_run
  step_lines = [m for _, m in lines if m.startswith("step ")]
  assert [m.split()[1] for m in step_lines] == ["2/4", "4/4"], step_lines
  assert "ETA" in step_lines[0] and "collapse_std" in step_lines[0]
  assert "knn_top1" in step_lines[1]  # The final evaluation is on the same one line.
  records = runs.read_metrics(workdir)
  assert [r["step"] for r in records] == [2, 4]
  assert all(r["train/collapse_std"] >= 0 for r in records)
  assert result["train/collapse_std"] == records[-1]["train/collapse_std"]
  warnings = [m for level, m in lines if level == std_logging.WARNING and "collapse" in m]
  assert len(warnings) == 1 and "Possible collapse at step 2" in warnings[0], warnings


def test_toy_run_writes_a_profile_trace(toy_run):
  workdir = toy_run[0]
  traces = list((workdir / "tensorboard" / "plugins" / "profile").rglob("*.xplane.pb"))
  assert traces and traces[0].stat().st_size > 0


def test_toy_run_logs_to_wandb_what_metrics_jsonl_holds(toy_run):
  workdir, _, fake, _ = toy_run
  (init,) = fake.inits
  assert init["project"] == "toy" and init["mode"] == "offline"
  assert init["name"] == workdir.name and init["dir"] == str(workdir)
  assert init["config"]["method"]["name"] == "simclr" and init["resume"] == "allow"
  assert init["id"] == (workdir / "wandb_id").read_text().strip()
  records = runs.read_metrics(workdir)
  assert [step for step, _ in fake.logged] == [r["step"] for r in records]
  for (_, logged), record in zip(fake.logged, records):
    assert set(logged) == set(record) - {"step"}
    assert logged["train/loss"] == pytest.approx(record["train/loss"])
  assert fake.runs[0].finished
  assert json.loads((workdir / "config.json").read_text())["wandb"]["project"] == "toy"


def test_compilation_cache_dir_is_off_by_default_and_relative_to_the_workdir():
  from ssl_jax import compile_cache
  assert config_lib.base_config().compilation_cache_dir == ""
  assert compile_cache.resolve("", "/runs/w") is None
  assert compile_cache.resolve("xla_cache", "/runs/w") == "/runs/w/xla_cache"
  assert compile_cache.resolve("/shared/cache", "/runs/w") == "/shared/cache"
  assert compile_cache.resolve("gs://bucket/cache", "/runs/w") == "gs://bucket/cache"


def test_a_compilation_cache_dir_that_cannot_be_written_is_refused_before_any_work(tmp_path):
  from ssl_jax import compile_cache, errors
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(errors.WorkdirError, match="compilation_cache_dir .* cannot be created"):
    compile_cache.enable(str(blocker / "cache"), str(tmp_path))
  read_only = tmp_path / "read_only"
  read_only.mkdir(mode=0o500)
  if os.access(read_only, os.W_OK):  # root ignores permission bits.
    pytest.skip("this user can write into a read-only folder")
  with pytest.raises(errors.WorkdirError, match="read_only cannot be created or written"):
    compile_cache.enable(str(read_only), str(tmp_path))
  assert not jax.config.jax_compilation_cache_dir


def test_a_relative_compilation_cache_dir_is_created_in_the_workdir(tmp_path):
  from ssl_jax import compile_cache
  compile_cache._check_writable(str(tmp_path / "w" / "xla_cache"))
  assert (tmp_path / "w" / "xla_cache").is_dir()
  assert not any((tmp_path / "w" / "xla_cache").iterdir())  # The probe file is gone.
