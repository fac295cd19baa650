"""End to end through the one loop: learning, resume == uninterrupted, SIGTERM, NaN guard."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, parallel, runs, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def smoke_config(**overrides):
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  config.lock()
  config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
  return config


def losses_by_step(workdir):
  """Last logged train/loss of every step (a resumed run re-logs the steps it repeats)."""
  return {r["step"]: r["train/loss"] for r in runs.read_metrics(workdir)
          if "train/loss" in r}


def test_mae_smoke_learns_and_writes_the_public_outputs(tmp_path, capsys):
  result = train.train_and_evaluate(smoke_config(), str(tmp_path))
  records = runs.read_metrics(tmp_path)
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert losses[-1] < 0.8 * losses[0], losses
  knn = [r["eval/knn_top1"] for r in records if "eval/knn_top1" in r]
  assert knn and 0.0 <= knn[-1] <= 1.0
  assert knn[-1] > 0.3, knn  # 10 classes: chance is 0.1.
  assert all("step" in r for r in records)
  assert (tmp_path / "config.json").exists()
  assert json.loads((tmp_path / "config.json").read_text())["method"]["name"] == "mae"
  assert list((tmp_path / "tensorboard").iterdir())
  assert (tmp_path / "export" / "params.npz").exists()
  assert list((tmp_path / "images").glob("reconstruction_*.png"))
  exported = np.load(tmp_path / "export" / "params.npz")
  assert any(name.startswith("encoder/blocks_0/attn/qkv") for name in exported.files)
  out = capsys.readouterr().out
  assert f"final k-NN top-1: {100 * result['eval/knn_top1']:.1f}%" in out
  assert ckpt_lib.Checkpointer(str(tmp_path)).latest_step() == 60


class _Crash(Exception):
  pass


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
  overrides = dict(total_steps=12, log_every=1, checkpoint_every=4, eval_every=0)
  overrides["eval.protocols"] = ""
  overrides["export_at_end"] = False
  overrides["eval.online_probe"] = True  # its head and optimizer state must resume too
  train.train_and_evaluate(smoke_config(**overrides), str(tmp_path / "straight"))
  assert "train/online_probe_acc" in runs.read_metrics(tmp_path / "straight")[-1]

  real = parallel.host_to_global
  calls = {"n": 0}

  def crash_at_step_7(batch, mesh):
    calls["n"] += 1
    if calls["n"] == 1 + 7:  # the first call builds the init sample
      raise _Crash()
    return real(batch, mesh)

  monkeypatch.setattr(parallel, "host_to_global", crash_at_step_7)
  with pytest.raises(_Crash):
    train.train_and_evaluate(smoke_config(**overrides), str(tmp_path / "resumed"))
  monkeypatch.setattr(parallel, "host_to_global", real)
  assert ckpt_lib.Checkpointer(str(tmp_path / "resumed")).latest_step() == 4
  train.train_and_evaluate(smoke_config(**overrides), str(tmp_path / "resumed"))

  straight = losses_by_step(tmp_path / "straight")
  resumed = losses_by_step(tmp_path / "resumed")
  assert sorted(straight) == sorted(resumed) == list(range(1, 13))
  np.testing.assert_allclose([resumed[s] for s in range(1, 13)],
                             [straight[s] for s in range(1, 13)], rtol=1e-6)


def test_sigterm_saves_a_restorable_checkpoint_and_exits_cleanly(tmp_path):
  workdir = tmp_path / "w"
  # Every compilation is cached (smoke steps compile in under JAX's 1 s default threshold).
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cmd = [sys.executable, "-m", "ssl_jax.train", "--config", "configs/mae.py:smoke",
         "--workdir", str(workdir), "--config.total_steps=100000", "--config.log_every=1",
         "--config.checkpoint_every=0", "--config.eval.protocols=",
         "--config.compilation_cache_dir=xla_cache"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 240
  metrics = workdir / "metrics.jsonl"
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.5)
  assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=120)[0].decode()
  assert proc.returncode == 0, output[-3000:]
  step = ckpt_lib.Checkpointer(str(workdir)).latest_step()
  assert step is not None and step >= 3, output[-3000:]
  params = ckpt_lib.Checkpointer(str(workdir)).restore_params(step)
  assert "encoder" in params and "decoder" in params
  # The restart's compiled steps are waiting in the workdir (the train step's jit is named
  # after the trainer's step function).
  cached = [p.name for p in (workdir / "xla_cache").iterdir()]
  assert any(name.startswith("jit_") and "step" in name for name in cached), cached


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_last_checkpoint(tmp_path):
  config = smoke_config(total_steps=40, checkpoint_every=5, log_every=100)
  config.unlock()
  config.optim.lr = 1e6  # diverges
  config.optim.warmup_steps = 0
  config.lock()
  with pytest.raises(train.NonFiniteLossError, match="(Loss|Gradient norm) became|hold NaN") as e:
    train.train_and_evaluate(config, str(tmp_path))
  last = ckpt_lib.Checkpointer(str(tmp_path)).latest_step()
  message = str(e.value)
  if last is not None:
    assert f"step {last}" in message
    params = ckpt_lib.Checkpointer(str(tmp_path)).restore_params(last)
    import jax
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_command_line_rejects_unknown_key_before_training(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "ssl_jax.train", "--config", "configs/mae.py:smoke",
       "--workdir", str(tmp_path), "--config.optim.lrr=1"], cwd=REPO, capture_output=True,
      text=True, timeout=120)
  assert proc.returncode != 0
  assert "Unknown config key 'optim.lrr'" in proc.stderr
  assert "optim.lr" in proc.stderr
  assert not (tmp_path / "checkpoints").exists()
