"""`ssl_jax.runs`: reading a workdir (config, checkpoints, exports, metrics), and clear errors."""

import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, export, metrics_io, parallel, runs
from ssl_jax.methods import build_method

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = (2, 5)


def _state(params, step):
  """A train state whose params and method state differ by step (params + step)."""
  shifted = jax.tree.map(lambda x: np.asarray(x) + step, params)
  return {"step": np.int32(step), "params": shifted, "opt_state": {"mu": shifted},
          "method_state": {"batch_stats": {"mean": np.full((3,), float(step), np.float32)}}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A supervised smoke run's workdir: config.json, checkpoints at STEPS, an export of the last
  step and a metrics.jsonl whose last line was cut short (written without training)."""
  workdir = tmp_path_factory.mktemp("run")
  config = config_lib.load_config(f"{REPO}/configs/supervised.py:smoke")
  (workdir / "config.json").write_text(config_lib.to_json(config))
  method = build_method(config)
  batch = {"image": np.zeros((8, 32, 32, 3), np.uint8), "label": np.zeros((8,), np.int32)}
  params = jax.device_get(method.init(jax.random.PRNGKey(0), batch)[0])
  checkpointer = ckpt_lib.Checkpointer(str(workdir), async_save=False)
  for step in STEPS:
    checkpointer.save(step, _state(params, step), None, force=True)
  checkpointer.close()
  ckpt_lib.export_params(_state(params, STEPS[-1])["params"], workdir / "export")
  writer = metrics_io.JsonlWriter(workdir / "metrics.jsonl")
  writer.write_scalars(1, {"train/loss": 2.5})
  writer.write_scalars(2, {"train/loss": 2.0, "eval/knn_top1": 0.25})
  writer.close()
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "train/lo')  # killed mid-write
  return workdir, config, params


def _assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_config_is_the_one_the_run_wrote_with_validated_overrides(run):
  workdir, config, _ = run
  loaded = runs.load_config(workdir)
  assert json.loads(config_lib.to_json(loaded)) == json.loads(config_lib.to_json(config))
  with pytest.raises(AttributeError):
    loaded.new_key = 1  # locked: a typo cannot add a key silently
  loaded = runs.load_config(workdir, ["eval.knn_k=7", "--data.eval_source=digits"])
  assert loaded.eval.knn_k == 7 and loaded.data.eval_source == "digits"
  with pytest.raises(config_lib.ConfigError, match="Did you mean"):
    runs.load_config(workdir, ["eval.knn_kk=7"])
  with pytest.raises(config_lib.ConfigError, match="batch_size must be positive"):
    runs.load_config(workdir, ["batch_size=0"])


def test_latest_and_given_step_on_host(run):
  workdir, _, params = run
  assert runs.checkpoint_steps(workdir) == list(STEPS)
  for step, asked in ((STEPS[-1], None), (STEPS[0], STEPS[0])):
    loaded = runs.load_checkpoint(workdir, asked)
    expected = _state(params, step)
    assert loaded.step == step and loaded.origin == f"checkpoint step {step} of {workdir}"
    _assert_tree_equal(loaded.params, expected["params"])
    _assert_tree_equal(loaded.method_state, expected["method_state"])
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(loaded.params))
  with pytest.raises(FileNotFoundError, match=r"step 3 .* available steps: \[2, 5\]"):
    runs.load_checkpoint(workdir, 3)
  # The Checkpointer's params-only reader is the same function.
  _assert_tree_equal(ckpt_lib.Checkpointer(str(workdir)).restore_params(STEPS[0]),
                     _state(params, STEPS[0])["params"])


def test_checkpoint_restores_into_given_shardings(run):
  workdir, _, params = run
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 8}))
  expected = _state(params, STEPS[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          {"params": expected["params"],
                           "method_state": expected["method_state"]})
  shardings = parallel.state_shardings(abstract, mesh)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, shardings)
  loaded = runs.load_checkpoint(workdir, STEPS[0], shardings=target)
  got = {"params": loaded.params, "method_state": loaded.method_state}
  for array, sharding in zip(jax.tree.leaves(got), jax.tree.leaves(shardings)):
    assert isinstance(array, jax.Array) and array.sharding == sharding
  # At least one leaf is really split over the 8 devices (FSDP), not replicated.
  assert any(not a.sharding.is_fully_replicated for a in jax.tree.leaves(loaded.params))
  _assert_tree_equal(jax.device_get(got), {"params": expected["params"],
                                           "method_state": expected["method_state"]})


def test_exported_params_and_the_export_fallback(run, tmp_path):
  workdir, _, params = run
  expected = _state(params, STEPS[-1])["params"]
  exported = runs.load_exported(workdir / "export")
  assert exported.step is None and exported.method_state is None
  _assert_tree_equal(exported.params, expected)
  npz = runs.read_exported_npz(workdir / "export")
  assert set(npz) == set(ckpt_lib.flatten_params(expected))
  np.testing.assert_array_equal(npz["head/kernel"], expected["head"]["kernel"])
  # A workdir with checkpoints gives a checkpoint; one holding only an export gives the export,
  # whether named by the workdir or by the export directory itself.
  assert runs.load_variables(workdir).step == STEPS[-1]
  ckpt_lib.export_params(expected, tmp_path / "only_export" / "export")
  for path in (tmp_path / "only_export", tmp_path / "only_export" / "export"):
    variables = runs.load_variables(path)
    assert variables.step is None and "exported params" in variables.origin
    _assert_tree_equal(variables.params, expected)
  (tmp_path / "nothing").mkdir()
  with pytest.raises(runs.RunError, match="no checkpoints/<step>/state and no exported params"):
    runs.load_variables(tmp_path / "nothing")
  with pytest.raises(runs.RunError, match="has no exported params"):
    runs.load_exported(tmp_path / "nothing")


def test_metrics_skip_a_truncated_last_line_only(run, tmp_path):
  workdir, _, _ = run
  assert runs.read_metrics(workdir) == [{"step": 1, "train/loss": 2.5},
                                        {"step": 2, "train/loss": 2.0, "eval/knn_top1": 0.25}]
  damaged = tmp_path / "damaged"
  damaged.mkdir()
  (damaged / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "tr\n{"step": 3}\n')
  with pytest.raises(runs.RunError, match="line 2 is not JSON"):
    runs.read_metrics(damaged)
  assert runs.read_metrics(tmp_path) == []  # nothing logged yet


def test_the_runs_encoder_is_found_in_its_params(run):
  workdir, config, params = run
  encoder = runs.load_encoder(workdir, step=STEPS[0])
  assert encoder.params_path == "encoder" and encoder.image_size == config.method.view.size
  assert encoder.mean == tuple(config.method.view.mean)
  _assert_tree_equal(encoder.params, _state(params, STEPS[0])["params"]["encoder"])
  with pytest.raises(ValueError, match="method.feature_extractor_params_path='head'"):
    runs.load_encoder(workdir, params_path="head",
                      params_path_key="method.feature_extractor_params_path")


def test_a_misspelt_workdir_is_a_clear_error_and_creates_nothing(run):
  workdir, _, _ = run
  misspelt = workdir.parent / (workdir.name + "_typo")
  readers = [runs.load_config, runs.load_checkpoint, runs.load_variables, runs.load_exported,
             runs.read_metrics, runs.read_evaluations, runs.checkpoint_steps,
             runs.load_encoder, export.export_checkpoint]
  for reader in readers:
    with pytest.raises(runs.RunError, match=f"{misspelt}: it does not exist"):
      reader(str(misspelt))
  assert not misspelt.exists()
  # Today's export message is kept for scripts that match it.
  with pytest.raises(FileNotFoundError, match="No checkpoints"):
    export.export_checkpoint(str(misspelt))
  with pytest.raises(runs.RunError, match="it is a file"):
    runs.load_config(workdir / "config.json")
