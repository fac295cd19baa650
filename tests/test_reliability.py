"""Never lose a run, never report a wrong number (docs/reliability.md): one test per guarantee.

Runs are the MAE smoke preset cut to a few steps without evaluation; one finished 4-step run
(checkpoints at steps 2 and 4) is shared, and each test damages its own copy of it.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, errors, export, runs, train, viz
from ssl_jax import workdir as workdir_lib
from ssl_jax.data import pipeline, sources

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICK = {"eval.protocols": "", "export_at_end": False, "log_every": 1, "checkpoint_every": 2}


def smoke_config(spec="configs/mae.py:smoke", **overrides):
  config = config_lib.load_config(f"{REPO}/{spec}")
  config.lock()
  config_lib.apply_overrides(config, [f"{k}={v}" for k, v in {**QUICK, **overrides}.items()])
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A 4-step MAE run with checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp("run") / "w"
  train.train_and_evaluate(smoke_config(total_steps=4), str(workdir))
  return workdir


def copy_of(run, tmp_path, name="w"):
  target = tmp_path / name
  shutil.copytree(run, target)
  return target


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


# ------------------------------------------------------------------ 1: no non-finite checkpoint


def test_divergence_never_leaves_a_checkpoint_with_non_finite_params(tmp_path):
  # lr=1e6: the loss stays finite for a few steps while the gradients and params are NaN.
  config = smoke_config(total_steps=5, checkpoint_every=1, log_every=100,
                        **{"optim.lr": 1e6, "optim.warmup_steps": 0})
  with pytest.raises(train.NonFiniteLossError, match="became|NaN") as e:
    train.train_and_evaluate(config, str(tmp_path))
  saved = _steps(tmp_path) if (tmp_path / "checkpoints").exists() else []
  for step in saved:
    _, state = ckpt_lib.restore_checkpoint(tmp_path, step)
    assert not ckpt_lib.non_finite_names(state["params"]), step
  if saved:
    assert f"step {saved[-1]}" in str(e.value)


def test_export_and_evaluate_refuse_non_finite_params(tmp_path):
  params = {"encoder": {"kernel": np.array([[1.0, np.nan]], np.float32)},
            "head": {"bias": np.zeros((2,), np.float32)}}
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(3, {"step": np.int32(3), "params": params, "method_state": {}}, None)
  checkpointer.close()
  with pytest.raises(ckpt_lib.NonFiniteError, match="1 of 2 parameter arrays.*encoder/kernel"):
    export.export_checkpoint(str(tmp_path))
  assert not (tmp_path / "export").exists()
  with pytest.raises(ckpt_lib.NonFiniteError, match="step 3"):
    runs.load_variables(tmp_path)


# ------------------------------------------------------------------ 2: range validation


@pytest.mark.parametrize("override, message", [
    ("keep_checkpoints=0", "keep_checkpoints must be >= 1"),
    ("optim.lr=-1.0", "optim.lr must be > 0"),
    ("optim.lr=0.0", "optim.lr must be > 0"),
    ("model.dtype=bfloat", "model.dtype must be one of 'float32', 'bfloat16'; got 'bfloat'"),
    ("optim.b2=1.0", "optim.b2 must be >= 0 and < 1"),
    ("data.worker_count=-1", "data.worker_count must be >= 0"),
    ("optim.schedule=cosin", "optim.schedule must be one of 'cosine', 'constant'"),
    ("eval.protocols=knn,lineer", "unknown protocol"),
    ("model.name=vit_q4", "model.name must be one of"),
    ("optim.clip_per_tensor=-1.0", "optim.clip_per_tensor must be >= 0"),
    ("eval.softnn_temperature=0.0", "eval.softnn_temperature must be > 0"),
])
def test_settings_that_destroy_or_invert_work_are_config_errors(override, message):
  config = smoke_config()
  config_lib.apply_overrides(config, [override])
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")):
    config_lib.validate(config)


def test_refused_before_any_work_and_method_typos_in_files_are_caught(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="keep_checkpoints"):
    train.train_and_evaluate(smoke_config(keep_checkpoints=0), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  config.method.mask_ratoi = 0.5  # A typo a config file can write: the section is unlocked.
  with pytest.raises(config_lib.ConfigError, match="method.mask_ratoi.*method.mask_ratio"):
    config_lib.validate(config)


# ------------------------------------------------------------------ 3: corrupt checkpoints


def _empty(step_dir):
  shutil.rmtree(step_dir)
  step_dir.mkdir()


def _truncated_arrays(step_dir):
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:10])


def _no_data_item(step_dir):
  shutil.rmtree(step_dir / "data")


def _no_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()
  (step_dir / "_CHECKPOINT_METADATA").unlink()


CORRUPTIONS = {"empty": _empty, "truncated": _truncated_arrays, "no_data": _no_data_item,
               "no_metadata": _no_metadata}


def _train_iterator(config):
  source = sources.get_source(config.data.source, "train", image_size=config.data.image_size)
  return iter(pipeline.make_train_loader(source, global_batch_size=config.batch_size,
                                         seed=config.seed))


# A damaged array file makes tensorstore callbacks hit orbax's closed event loop later.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_each_corruption_of_the_latest_checkpoint_falls_back_to_the_previous_step(
    finished_run, tmp_path):
  config = smoke_config(total_steps=4)
  _, reference = ckpt_lib.restore_checkpoint(finished_run, 2)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          reference)
  for name, corrupt in CORRUPTIONS.items():
    workdir = copy_of(finished_run, tmp_path, name)
    corrupt(workdir / "checkpoints" / "4")
    if name != "no_data":  # Readers take only the state item.
      assert ckpt_lib.restore_checkpoint(workdir)[0] == 2, name
      with pytest.raises(ckpt_lib.CheckpointError, match="step 4.*cannot be restored"):
        ckpt_lib.restore_checkpoint(workdir, 4)
    checkpointer = ckpt_lib.Checkpointer(str(workdir))
    step, state = checkpointer.restore_latest(abstract, _train_iterator(config))
    checkpointer.close()
    assert step == 2, name
    np.testing.assert_array_equal(jax.tree.leaves(state["params"])[0],
                                  jax.tree.leaves(reference["params"])[0])
    assert _steps(workdir) == [2], name
    assert len(list((workdir / ckpt_lib.CORRUPT_DIR).iterdir())) == 1, name

  # None restores: one message naming the folder to delete, for the loop and the readers.
  workdir = copy_of(finished_run, tmp_path, "all")
  for step in (2, 4):
    _empty(workdir / "checkpoints" / str(step))
  checkpointer = ckpt_lib.Checkpointer(str(workdir))
  with pytest.raises(ckpt_lib.CheckpointError, match=f"delete {workdir}/checkpoints"):
    checkpointer.restore_latest(abstract, _train_iterator(config))
  checkpointer.close()
  with pytest.raises(ckpt_lib.CheckpointError, match="step 4: .*step 2: "):
    ckpt_lib.restore_checkpoint(workdir)


def test_a_run_with_a_corrupt_latest_step_resumes_finishes_and_logs_each_step_once(
    finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  _empty(workdir / "checkpoints" / "4")
  with (workdir / "metrics.jsonl").open("a") as f:
    f.write('{"step": 5, "train/lo')  # A line cut short by a kill.
  train.train_and_evaluate(smoke_config(total_steps=6), str(workdir))
  assert _steps(workdir) == [2, 4, 6]
  steps = [r["step"] for r in runs.read_metrics(workdir)]
  assert steps == [1, 2, 3, 4, 5, 6]
  # total_steps may change mid-run: accepted and recorded (item 5).
  history = [json.loads(l) for l in (workdir / "config_history.jsonl").read_text().splitlines()]
  assert history[-1]["changes"] == {"total_steps": [4, 6]}
  assert json.loads((workdir / "config.json").read_text())["total_steps"] == 6


def _small_state(value: float = 1.0):
  return {"step": np.int32(0), "params": {"w": jax.numpy.full((64, 64), value)}}


def test_a_disk_too_full_for_the_next_checkpoint_stops_with_the_saved_steps(tmp_path,
                                                                            monkeypatch):
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
  checkpointer.save(1, _small_state(), None)
  checkpointer.wait()
  # The disk now holds 100 kB: less than the state's 16 kB plus 256 kB of margin.
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(ckpt_lib.shutil, "disk_usage",
                      lambda path: usage._replace(free=100_000))
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"Not enough free space to save checkpoint step 2 .* needs about "
                           r"0\.3 MiB, 0\.1 MiB are free\. Saved steps: \[1\]; the run resumes "
                           r"from step 1"):
    checkpointer.save(2, _small_state(2.0), None)
  checkpointer.close()
  assert ckpt_lib.checkpoint_steps(tmp_path) == [1]


def test_a_failed_asynchronous_save_is_one_error_naming_the_step_and_the_saved_ones(
    tmp_path, monkeypatch):
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
  checkpointer.save(1, _small_state(), None)
  checkpointer.wait()
  checkpointer.save(2, _small_state(2.0), None)

  def storage_failure():
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database\n'
                     + "details\n" * 200)

  monkeypatch.setattr(checkpointer.manager, "wait_until_finished", storage_failure)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"Saving checkpoint step 2 in .* failed \(ValueError: "
                           r"RESOURCE_EXHAUSTED: Error writing .*\)\. Saved steps: \[1"):
    checkpointer.save(3, _small_state(3.0), None)  # Finds the previous save's failure.
  with pytest.raises(ckpt_lib.CheckpointError, match="Saving checkpoint step 2"):
    checkpointer.wait()
  monkeypatch.undo()
  checkpointer.close()


# ------------------------------------------------------------------ 5: config changes


def test_a_changed_model_width_or_batch_size_is_refused_and_config_json_kept(
    finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  before = (workdir / "config.json").read_bytes()
  with pytest.raises(errors.WorkdirError,
                     match=r"batch_size: 64 -> 32; model.hidden_size: 64 -> 32.*new --workdir"):
    train.train_and_evaluate(smoke_config(total_steps=4, batch_size=32,
                                          **{"model.hidden_size": 32}), str(workdir))
  assert (workdir / "config.json").read_bytes() == before
  assert not (workdir / workdir_lib.LOCK_FILE).exists()
  assert _steps(workdir) == [2, 4]


def test_a_resumed_run_may_turn_the_vit_speed_levers_on(finished_run, tmp_path):
  """The levers keep the params and the math (docs/performance.md): a resume may change them,
  as it may change the mesh; the change is recorded."""
  workdir = copy_of(finished_run, tmp_path)
  levers = {"model.attention_impl": "xla", "model.remat": "full", "model.scan_blocks": True,
            "model.token_gather": "onehot"}
  train.train_and_evaluate(smoke_config(total_steps=5, **levers), str(workdir))
  assert _steps(workdir) == [2, 4, 5]
  history = [json.loads(l) for l in (workdir / "config_history.jsonl").read_text().splitlines()]
  assert history[-1]["changes"]["model.attention_impl"] == ["plain", "xla"]
  assert history[-1]["changes"]["model.token_gather"] == ["take", "onehot"]


# ------------------------------------------------------------------ 4, 7, 9: kill -9, lock


def _children(pid):
  found = []
  for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
      fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == pid:
      found.append(int(stat.parent.name))
  return found


def _alive(pid):
  try:
    state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
  except OSError:
    return False
  return state != "Z"


def test_a_live_trainer_lock_refuses_and_a_dead_ones_is_taken_over(tmp_path):
  sleeper = subprocess.Popen(["sleep", "60"])
  lock_path = tmp_path / workdir_lib.LOCK_FILE
  lock_path.write_text(json.dumps({
      "host": socket.gethostname(), "pid": sleeper.pid, "since": "earlier",
      "start_time": workdir_lib._start_time(sleeper.pid)}))  # pylint: disable=protected-access
  try:
    with pytest.raises(errors.WorkdirError, match=f"in use by another trainer \\(pid {sleeper.pid}"):
      workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()
  lock = workdir_lib.WorkdirLock(str(tmp_path))
  lock.acquire()  # Its owner is gone: stale, taken over.
  assert json.loads(lock_path.read_text())["pid"] == os.getpid()
  lock.release()
  assert not lock_path.exists()


_SPAWNING_PARENT = """
import multiprocessing, pickle, sys, time
import numpy as np
from ssl_jax.data import sources

def worker(blob):
  pickle.loads(blob)  # What a grain worker does with the source it reads.
  time.sleep(120)

if __name__ == "__main__":
  source = sources.ArraySource(np.zeros((1, 2, 2, 3), np.uint8), None, image_size=2,
                               num_classes=None, description="one image")
  child = multiprocessing.get_context("spawn").Process(target=worker,
                                                       args=(pickle.dumps(source),))
  child.start()
  print(child.pid, flush=True)
  time.sleep(120)
"""


@pytest.mark.skipif(not pathlib.Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_a_worker_that_unpickled_a_source_exits_when_its_parent_is_killed(tmp_path):
  script = tmp_path / "parent.py"
  script.write_text(_SPAWNING_PARENT)
  parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
  try:
    child = int(parent.stdout.readline())
    time.sleep(1.0)
    assert _alive(child)
  finally:
    parent.kill()
    parent.wait()
  deadline = time.time() + 30
  while time.time() < deadline and _alive(child):
    time.sleep(0.2)
  alive = _alive(child)
  if alive:
    os.kill(child, signal.SIGKILL)
  assert not alive


@pytest.mark.slow
@pytest.mark.skipif(not pathlib.Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_kill_9_leaves_no_worker_then_a_second_trainer_and_a_resume(tmp_path):
  workdir = tmp_path / "w"
  overrides = ["--config.total_steps=100000", "--config.log_every=1",
               "--config.checkpoint_every=2", "--config.eval.protocols=",
               "--config.data.worker_count=1"]
  proc = subprocess.Popen(
      [sys.executable, "-m", "ssl_jax.train", "--config", "configs/mae.py:smoke", "--workdir",
       str(workdir), *overrides], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if (workdir / "checkpoints" / "4").exists() and _children(proc.pid):
        break
      time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    workers = _children(proc.pid)
    assert workers
    # 4: a second trainer in the same workdir is refused while the first runs.
    config = smoke_config(total_steps=100000, **{"data.worker_count": 1})
    with pytest.raises(errors.WorkdirError, match=f"in use by another trainer \\(pid {proc.pid}"):
      train.train_and_evaluate(config, str(workdir))
  finally:
    proc.kill()
    proc.wait()
  # 7: the grain worker exits with its parent.
  deadline = time.time() + 20
  while time.time() < deadline and any(_alive(p) for p in workers):
    time.sleep(0.2)
  assert not any(_alive(p) for p in workers), workers
  # 4 + 9: the stale lock is taken over; each step is in metrics.jsonl once.
  last = _steps(workdir)[-1]
  logged = [r["step"] for r in runs.read_metrics(workdir)]
  assert max(logged) >= last
  config = smoke_config(**{"total_steps": last + 2, "data.worker_count": 1, "log_every": 1,
                           "checkpoint_every": 2})
  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags (parsed under absl.app.run).
  train.train_and_evaluate(config, str(workdir))
  steps = [r["step"] for r in runs.read_metrics(workdir)]
  assert steps == list(range(1, last + 3))
  assert not (workdir / workdir_lib.LOCK_FILE).exists()


# ------------------------------------------------------------------ 6: fine-tune resume


def test_a_fine_tune_resumes_after_its_init_from_source_is_deleted(finished_run, tmp_path):
  source = copy_of(finished_run, tmp_path, "source")
  spec = "configs/supervised.py:smoke,finetune_mae"
  overrides = {"method.init_from": str(source), "checkpoint_every": 1}
  train.train_and_evaluate(smoke_config(spec, total_steps=1, **overrides), str(tmp_path / "ft"))
  shutil.rmtree(source)
  # Restarting the finished run restores it and stops: all of resuming but the (slow) steps.
  result = train.train_and_evaluate(smoke_config(spec, total_steps=1, **overrides),
                                    str(tmp_path / "ft"))
  assert result["step"] == 1 and _steps(tmp_path / "ft") == [1]


# ------------------------------------------------------------------ 8: split folders


def _image(path, seed):
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.RandomState(seed).randint(0, 256, (8, 8, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return pixels


def test_imagefolder_split_folders_evaluate_on_the_held_out_split(tmp_path):
  _image(tmp_path / "train" / "cat" / "a.png", 0)
  _image(tmp_path / "train" / "dog" / "b.png", 1)
  with pytest.raises(sources.DataError, match="no held-out folder.*training images"):
    sources.get_source(f"imagefolder:{tmp_path}", "test", image_size=8)
  val_cat = _image(tmp_path / "val" / "cat" / "c.png", 2)
  _image(tmp_path / "val" / "dog" / "d.png", 3)
  train_source = sources.get_source(f"imagefolder:{tmp_path}", "train", image_size=8)
  test_source = sources.get_source(f"imagefolder:{tmp_path}", "test", image_size=8)
  assert train_source.class_names == test_source.class_names == ["cat", "dog"]
  np.testing.assert_array_equal(test_source[0]["image"], val_cat)
  # Class folders without split folders: training works, a test split is refused.
  flat = tmp_path / "flat"
  _image(flat / "cat" / "a.png", 0)
  assert sources.get_source(f"imagefolder:{flat}", "train", image_size=8).num_classes == 1
  with pytest.raises(sources.DataError, match="held-out"):
    sources.get_source(f"imagefolder:{flat}", "test", image_size=8)


# ------------------------------------------------------------------ 10: clean errors


def test_data_errors_are_clean_user_errors(tmp_path):
  np.save(tmp_path / "arr.npy", np.zeros((2, 4, 4, 3), np.uint8))
  os.rename(tmp_path / "arr.npy", tmp_path / "renamed.npz")
  with pytest.raises(sources.DataError, match="single array.*not an .npz"):
    sources.get_source(f"npz:{tmp_path}/renamed.npz", "train", image_size=4)
  with open(tmp_path / "pickled.npz", "wb") as f:
    np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(sources.DataError, match="not a readable .npz|single array"):
    sources.get_source(f"npz:{tmp_path}/pickled.npz", "train", image_size=4)
  np.savez(tmp_path / "nolabels.npz", images=np.zeros((4, 4, 4, 3), np.uint8))
  config = smoke_config(**{"data.eval_source": f"npz:{tmp_path}/nolabels.npz",
                           "eval.protocols": "knn"})
  from ssl_jax.evaluators import runner  # pylint: disable=g-import-not-at-top
  from ssl_jax.methods import build_method  # pylint: disable=g-import-not-at-top
  with pytest.raises(sources.DataError, match="--config.eval.protocols=$"):
    runner.FeatureEvaluator(build_method(config), config, None)
  # viz --images takes a folder of class subfolders.
  _image(tmp_path / "images" / "cat" / "a.png", 0)
  assert len(viz.load_image_folder(tmp_path / "images", 4)) == 1


def test_workdir_errors_are_one_line_without_traceback(tmp_path, capsys, monkeypatch):
  (tmp_path / "file").write_text("not a directory")
  with pytest.raises(errors.WorkdirError, match="is a file"):
    train.train_and_evaluate(smoke_config(), str(tmp_path / "file"))
  with pytest.raises(errors.WorkdirError, match="lies under .*file, which is a file"):
    train.train_and_evaluate(smoke_config(), str(tmp_path / "file" / "w"))
  # export on a misspelt workdir: an error, and nothing created.
  monkeypatch.setattr(sys, "argv", ["export", f"--workdir={tmp_path / 'typo'}"])
  with pytest.raises(SystemExit) as exit_info:
    export.run()
  assert "export: No checkpoints" in str(exit_info.value.code)
  assert not (tmp_path / "typo").exists()
  # --debug (or SSL_JAX_DEBUG=1) shows the traceback instead.
  monkeypatch.setenv(errors.DEBUG_ENV, "1")
  with pytest.raises(errors.WorkdirError):
    with errors.clean_exit("train"):
      train.train_and_evaluate(smoke_config(), str(tmp_path / "file"))


def test_a_workdir_nothing_can_create_is_a_workdir_error():
  if not pathlib.Path("/proc/self").is_dir():
    pytest.skip("needs Linux's /proc, where no directory can be made")
  with pytest.raises(errors.WorkdirError, match="/proc/ssl_jax_w cannot be created or written"):
    train.train_and_evaluate(smoke_config(), "/proc/ssl_jax_w")


def test_the_train_command_line_prints_no_traceback(tmp_path):
  (tmp_path / "file").write_text("")
  proc = subprocess.run(
      [sys.executable, "-m", "ssl_jax.train", "--config", "configs/mae.py:smoke", "--workdir",
       str(tmp_path / "file" / "w")], cwd=REPO, capture_output=True, text=True, timeout=300,
      env={k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV})
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1].startswith("train: --workdir"), proc.stderr


def test_a_method_rejecting_its_own_values_is_a_config_error_before_any_work(tmp_path):
  """MAE checks its view size against the patch size when it is built: a ConfigError (one
  line on the command line), raised by the setup before any workdir file or compile."""
  from ssl_jax import trainer
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  config.method.view.size = 30  # not divisible by the 4-pixel patches
  with pytest.raises(config_lib.ConfigError, match="not divisible by the patch size"):
    trainer.build(config, total_steps=2, steps_per_epoch=1)


@pytest.mark.parametrize("override,match", [
    ("mesh.data=3", r"mesh.data \* mesh.fsdp = 3 \* 1 = 3, but there are 8 devices"),
    ("mesh.fsdp=3", "mesh.fsdp=3 does not divide the 8 devices; use a divisor"),
    ("batch_size=12", r"batch_size=12 is not divisible .* e.g. 8 or 16\.$"),
    ("batch_size=6", r"batch_size=6 is not divisible .* e.g. 8\.$")])
def test_a_mesh_or_batch_that_does_not_fit_the_devices_is_a_user_error(override, match):
  """User errors (one line on the command line, no traceback), raised by the setup before any
  compile."""
  from ssl_jax import parallel, trainer
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  config_lib.apply_overrides(config, [override])
  with pytest.raises(parallel.MeshError, match=match) as error:
    trainer.build(config, total_steps=2, steps_per_epoch=1)
  assert isinstance(error.value, errors.UserError)


def test_a_bad_eval_batch_size_fails_before_the_train_step_compiles(tmp_path, monkeypatch):
  from ssl_jax import parallel, trainer
  compiles = []
  monkeypatch.setattr(trainer.TrainSetup, "compile_step_in_background",
                      lambda self: compiles.append(self))
  config = smoke_config(**{"eval.batch_size": 12, "eval.protocols": "knn"})
  with pytest.raises(parallel.MeshError, match="eval.batch_size=12"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not compiles


@pytest.mark.parametrize("spec,override,match", [
    ("configs/dino.py:smoke", "method.out_dim=0", "method.out_dim must be an integer >= 1"),
    ("configs/jigsaw.py:smoke", "method.num_permutations=0", "num_permutations must be"),
    ("configs/swav.py:smoke", "method.nmb_prototypes=2.5",
     "method.nmb_prototypes must be of type int"),
    ("configs/mae.py:smoke", "method.decoder_heads=-1", "method.decoder_heads must be an integer"),
    ("configs/swav.py:smoke", "method.hidden_mlp=-1", "method.hidden_mlp must be an integer >= 1"),
    ("configs/rotation.py:smoke", "method.head_hidden_dim=-1",
     r"method.head_hidden_dim must be an integer >= 0 \(a layer width or count, 0 for none"),
    # Values of the paper's quantities (by leaf name, in every method), checked at start-up;
    # before, each of these trained (a negative weight ascends its loss) or crashed later.
    ("configs/fixmatch.py:smoke", "method.unlabeled_weight=-1.0",
     "method.unlabeled_weight must be >= 0 .a negative weight ascends that loss"),
    ("configs/dino.py:smoke", "method.center_momentum=1.5", "method.center_momentum must be"),
    ("configs/dino.py:smoke", "method.attention_keep_mass=2.0",
     "method.attention_keep_mass must be > 0 and <= 1"),
    ("configs/paws.py:smoke", "method.sharpen=0.0", "method.sharpen must be > 0"),
    ("configs/colorization.py:smoke", "method.temperature=0.0", "method.temperature must be > 0"),
    ("configs/colorization.py:smoke", "method.rebalance_mix=1.5", "method.rebalance_mix must be"),
])
def test_zero_widths_and_mistyped_values_are_config_errors(spec, override, match):
  config = config_lib.load_config(f"{REPO}/{spec}")
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.apply_overrides(config, [override])
    config_lib.validate(config)


def test_a_classifier_head_narrower_than_the_labels_is_refused():
  from ssl_jax import trainer
  config = config_lib.load_config(f"{REPO}/configs/fixmatch.py:smoke")
  config_lib.apply_overrides(config, ["method.num_classes=3"])
  with pytest.raises(config_lib.ConfigError, match="method.num_classes=3, but the training "
                     "labels have 10 classes; set --config.method.num_classes=10"):
    trainer.build(config, total_steps=2, steps_per_epoch=1, num_classes=10)


def test_a_zero_width_is_allowed_where_zero_is_the_default():
  config = config_lib.load_config(f"{REPO}/configs/rotation.py:smoke")
  config_lib.apply_overrides(config, ["method.head_hidden_dim=0"])  # A linear head.
  config_lib.validate(config)


@pytest.mark.parametrize("spec,override,error,match", [
    # Method values first read while the train step traces (after the state is initialised).
    ("configs/simclr.py:smoke", "method.temperature=0", config_lib.ConfigError,
     "method.temperature must be > 0"),
    ("configs/dino.py:smoke", "method.local_crops_number=-1", config_lib.ConfigError,
     "local_crops_number must be >= 0"),
    ("configs/mae.py:smoke", "data.train_subset=abc", config_lib.ConfigError,
     "Bad data.train_subset 'abc'"),
    # A loss's own ValueError while the step traces (the background compile).
    ("configs/byol.py:smoke", "method.base_momentum=1.5", config_lib.ConfigError,
     "byol: EMA momentum must be in"),
    ("configs/dino.py:smoke", "method.teacher_temp=0", config_lib.ConfigError,
     "dino: Teacher temperatures must be > 0"),
    # Files and subsets the run reads at start-up.
    ("configs/supervised.py:smoke", "method.init_from=timm:/nonexistent/w.safetensors",
     errors.UserError, "/nonexistent/w.safetensors does not exist; pass a timm .safetensors"),
    ("configs/supervised.py:smoke", "data.train_subset=per_class:100000", errors.UserError,
     r"data.train_subset='per_class:100000': class 0 has only \d+ samples")])
def test_bad_values_found_at_start_up_are_user_errors_before_any_step(tmp_path, spec, override,
                                                                      error, match):
  """Each is one line on the command line (a UserError), raised before any step is saved."""
  config = config_lib.load_config(f"{REPO}/{spec}")
  config_lib.apply_overrides(config, [override, "total_steps=2", "eval.protocols="])
  with pytest.raises(error, match=match):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  checkpoints = tmp_path / "w" / "checkpoints"
  assert not checkpoints.exists() or not any(checkpoints.iterdir())


def test_a_first_ctrl_c_asks_for_a_save_and_a_second_one_stops_at_once():
  preemption = train._Preemption()
  before = signal.getsignal(signal.SIGINT)
  assert before is signal.default_int_handler  # pytest leaves Python's own handler.
  preemption.install()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread.
    assert preemption.requested and preemption.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before  # The second one restored the handlers.
  finally:
    preemption.uninstall()
  assert signal.getsignal(signal.SIGINT) is before


def test_a_ctrl_c_outside_the_loop_is_one_line_and_status_130(capsys):
  with pytest.raises(SystemExit) as exit_info:
    with errors.clean_exit("train"):
      raise KeyboardInterrupt
  assert exit_info.value.code == 130
  assert capsys.readouterr().err == "train: interrupted.\n"


def test_a_failed_command_line_does_not_wait_for_a_compile_still_running(monkeypatch, capsys):
  """XLA cannot cancel a compile and Python's exit joins its thread: `train.run` exits at once
  after the loop's own clean-up when one is still running (it held Ctrl-C 8 s on this CPU for a
  ViT-B step; minutes on a GPU), and exits as usual otherwise."""
  from ssl_jax import trainer
  exits = []
  monkeypatch.setattr(train.os, "_exit", exits.append)
  monkeypatch.setattr(train.std_logging, "shutdown", lambda: None)  # pytest's handlers stay.
  monkeypatch.setattr(sys, "argv", ["train", "--config", f"{REPO}/configs/mae.py:smoke",
                                    "--workdir", "/tmp/unused"])
  monkeypatch.setattr(train, "_define_flags", lambda: None)

  def failing_run(main, argv):
    raise SystemExit("train: something the user must fix.")

  monkeypatch.setattr(train.app, "run", failing_run)
  monkeypatch.setattr(trainer, "compile_in_flight", lambda: True)
  with pytest.raises(SystemExit):  # (os._exit is recorded instead of ending pytest.)
    train.run()
  assert exits == [1]
  assert "train: something the user must fix." in capsys.readouterr().err
  monkeypatch.setattr(trainer, "compile_in_flight", lambda: False)
  with pytest.raises(SystemExit, match="something the user must fix"):
    train.run()
  assert exits == [1]


def test_compile_in_flight_follows_the_background_compile(monkeypatch):
  from ssl_jax import trainer
  import threading
  release = threading.Event()
  config = smoke_config()
  setup = trainer.build(config, total_steps=2, steps_per_epoch=1)
  monkeypatch.setattr(trainer.TrainSetup, "step_arg_shapes", lambda self: ())
  slow_step = type("SlowStep", (), {
      "lower": lambda self: type("Lowered", (), {"compile": lambda _: release.wait(10)})()})()
  future = dataclasses.replace(setup, step=slow_step).compile_step_in_background()
  assert trainer.compile_in_flight()
  release.set()
  future.result(timeout=10)
  assert not trainer.compile_in_flight()


def test_a_checkpoint_this_run_cannot_use_is_not_taken_for_a_damaged_one(tmp_path, monkeypatch):
  """Other training data (records added or removed) fails every step's restore the same way:
  that is the user's error to hear, not damage to move aside or advise deleting."""
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  for step in (1, 2):
    checkpointer.save(step, _small_state(), None)

  def other_data(step, abstract_state, data_iterator=None):
    raise pipeline.DataChangedError("The training data changed since ...")

  monkeypatch.setattr(checkpointer, "restore", other_data)
  with pytest.raises(pipeline.DataChangedError, match="The training data changed"):
    checkpointer.restore_latest(_small_state())
  checkpointer.close()
  assert ckpt_lib.checkpoint_steps(tmp_path) == [1, 2]
  assert not (tmp_path / ckpt_lib.CORRUPT_DIR).exists()
