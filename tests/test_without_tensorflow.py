"""Runs where TensorFlow is not installed: accelerator images often ship JAX without it.

Each test runs a subprocess in which `tensorflow` and `tensorflow_datasets` cannot be imported
(tests/fixtures/without_modules.py hides them from every import finder, as if uninstalled).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
HIDE = [sys.executable, str(REPO / "tests" / "fixtures" / "without_modules.py"),
        "tensorflow,tensorflow_datasets"]

# Imports every entry point, writes metrics as the loop does, reads the TensorBoard events back
# without TensorFlow, and asks for a TFDS source.
_CHECK = r"""
import json, sys
import ssl_jax.cli, ssl_jax.evaluate, ssl_jax.export, ssl_jax.report, ssl_jax.train, ssl_jax.viz
import bench.discriminator_layers, bench.fsdp_memory, bench.input_pipeline, bench.pmae_vs_mae
import bench.label_budget, bench.train_step
import numpy as np
from tensorboard.backend.event_processing import event_file_loader
from ssl_jax import errors, metrics_io
from ssl_jax.data import sources

workdir = sys.argv[1]
for _ in range(2):  # The warning comes once per process.
  writer = metrics_io.make_writer(workdir)
  writer.write_scalars(3, {"train/loss": 1.5})
  writer.write_images(3, {"images/x": np.zeros((1, 4, 6, 3), np.uint8)})
  writer.close()
events = []
for path in sorted((__import__("pathlib").Path(workdir) / "tensorboard").glob("events.*")):
  for event in event_file_loader.LegacyEventFileLoader(str(path)).Load():
    events += [(event.step, v.tag, v.simple_value if v.HasField("simple_value")
                else [v.image.height, v.image.width]) for v in event.summary.value]
try:
  sources.get_source("tfds:mnist", "train", image_size=8)
  tfds_error = None
except errors.UserError as error:
  tfds_error = str(error)
print("RESULT", json.dumps({"events": events, "tfds_error": tfds_error,
                            "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def _run(args, **kwargs):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(HIDE + args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600, **kwargs)


def test_loop_writers_and_entry_points_need_no_tensorflow(tmp_path):
  proc = _run(["-c", _CHECK, str(tmp_path)])
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert not result["tensorflow_imported"]
  assert sorted(map(tuple, (e[:2] for e in result["events"]))) == [
      (3, "images/x"), (3, "images/x"), (3, "train/loss"), (3, "train/loss")]
  assert [1.5, 1.5] == [e[2] for e in result["events"] if e[1] == "train/loss"]
  assert [[4, 6], [4, 6]] == [e[2] for e in result["events"] if e[1] == "images/x"]
  assert "pip install .[tf]" in result["tfds_error"]
  warnings = [line for line in proc.stderr.splitlines() if "clu's writer needs" in line]
  assert len(warnings) == 1, proc.stderr[-3000:]
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [{"step": 3, "train/loss": 1.5}] * 2


@pytest.mark.slow
def test_smoke_run_trains_and_evaluates_without_tensorflow(tmp_path):
  proc = _run(["-m", "ssl_jax.train", "--config", "configs/mae.py:smoke", "--workdir",
               str(tmp_path), "--config.total_steps=2", "--config.log_every=1",
               "--config.checkpoint_every=0", "--config.visualize=False",
               "--config.export_at_end=False"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2] and 0 < records[-1]["eval/knn_top1"] <= 1
  assert "same encoder untrained" in proc.stdout  # The closing k-NN baselines ran too.
  assert list((tmp_path / "tensorboard").glob("events.*"))
  assert (tmp_path / "eval" / "random.json").exists()


def test_without_tensorboard_either_metrics_go_to_jsonl(tmp_path, monkeypatch, caplog):
  import clu
  from ssl_jax import metrics_io

  def no_tensorboard(logdir):
    raise ModuleNotFoundError("No module named 'tensorboard'")

  monkeypatch.setitem(sys.modules, "clu.metric_writers", None)  # `import` raises ImportError.
  monkeypatch.delattr(clu, "metric_writers", raising=False)
  monkeypatch.setattr(metrics_io, "EventWriter", no_tensorboard)
  monkeypatch.setattr(metrics_io, "_warned_without_tensorflow", False)
  with caplog.at_level("INFO", logger="absl"):
    for step in (1, 2):
      writer = metrics_io.make_writer(str(tmp_path))
      writer.write_scalars(step, {"train/loss": 0.5})
      writer.close()
  assert not (tmp_path / "tensorboard").exists()
  assert [json.loads(line)["step"] for line in
          (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
  messages = [r.getMessage() for r in caplog.records]
  assert sum("No TensorBoard summaries" in m for m in messages) == 1
  # No second line per step: the loop prints its own (ssl_jax.progress.step_line).
  assert not any(m.startswith("[2]") for m in messages)
  # evaluate and viz keep clu-style log lines where nothing else prints their scalars.
  with caplog.at_level("INFO", logger="absl"):
    metrics_io.tensorboard_writer(None).write_scalars(3, {"eval/knn_top1": 0.5})
  assert "[3] eval/knn_top1=0.5" in [r.getMessage() for r in caplog.records]
