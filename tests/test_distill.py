"""Knowledge distillation and the SimCLR v2 recipe: the loss against numpy, the frozen teacher
(no gradient, unchanged, not optimised, a larger one than the student), the errors for a bad
teacher, fine-tuning from the projection head's middle layer, and the chains through the loop."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, errors, runs, train, trainer
from ssl_jax.losses import knowledge_distillation
from ssl_jax.methods import build_method

REPO = pathlib.Path(__file__).resolve().parents[1]
TEACHER_STEP = 7


def load(spec, **overrides):
  config = config_lib.load_config(f"{REPO}/configs/{spec}")
  config.lock()
  config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
  return config


def save_run(workdir, config, step, *, random_values=False):
  """`workdir` holding config.json and one checkpoint of `config`'s freshly initialised state
  (a run made without training); `random_values`: normal draws in the state's shapes instead
  (no compilation, for a run that is read but never run)."""
  method = build_method(config)
  size = config.data.image_size
  batch = {"image": np.zeros((2, size, size, 3), np.uint8), "label": np.zeros(2, np.int32)}
  if random_values:
    rng = np.random.default_rng(step)
    params, state = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype),
                                 jax.eval_shape(method.init, jax.random.PRNGKey(0), batch))
  else:
    params, state = jax.device_get(jax.jit(method.init)(jax.random.PRNGKey(0), batch))
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(config_lib.to_json(config))
  checkpointer = ckpt_lib.Checkpointer(str(workdir), async_save=False)
  checkpointer.save(step, {"step": np.int32(step), "params": params, "opt_state": {},
                           "method_state": state}, None, force=True)
  checkpointer.close()
  return params, state


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("t_squared", [True, False])
def test_distillation_loss_is_the_temperature_scaled_kl_against_numpy(t_squared):
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 5, 7)) * 3
  temperature = 4.0
  log_p, log_q = np_log_softmax(teacher / temperature), np_log_softmax(student / temperature)
  cross_entropy = -np.mean(np.sum(np.exp(log_p) * log_q, -1))        # SimCLR v2, Eq. 3
  entropy = -np.mean(np.sum(np.exp(log_p) * log_p, -1))
  expected = (cross_entropy - entropy) * (temperature ** 2 if t_squared else 1.0)
  loss = knowledge_distillation.distillation_loss(jnp.asarray(student), jnp.asarray(teacher),
                                                  temperature, t_squared=t_squared)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # Same gradients as SimCLR v2's cross-entropy: the KL only drops the teacher's entropy.
  grad = jax.grad(lambda s: knowledge_distillation.distillation_loss(
      s, jnp.asarray(teacher), temperature, t_squared=False))(jnp.asarray(student))
  q = np.exp(log_q)
  np.testing.assert_allclose(grad, (q - np.exp(log_p)) / temperature / len(student), atol=1e-6)
  assert float(knowledge_distillation.distillation_loss(
      jnp.asarray(teacher), jnp.asarray(teacher), temperature)) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="temperature"):
    knowledge_distillation.distillation_loss(jnp.asarray(student), jnp.asarray(teacher), 0.0)


# ----------------------------------------------------------------------------- the teacher


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  """A FixMatch smoke run with a WRN-10-2 (twice the student's width), saved untrained."""
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  config = load("fixmatch.py:smoke", **{"model.name": "wrn_10_2"})
  params, state = save_run(workdir, config, TEACHER_STEP)
  return workdir, params, state


@pytest.fixture(scope="module")
def distilled(teacher_run, tmp_path_factory):
  """A few steps of distill smoke (WRN-10-1 student) through the real loop."""
  workdir = tmp_path_factory.mktemp("student")
  config = load("distill.py:smoke", **{
      "method.teacher_workdir": str(teacher_run[0]), "total_steps": 5, "log_every": 1,
      "checkpoint_every": 0, "export_at_end": False, "visualize": False,
      "eval.protocols": "classifier"})
  result = train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  return workdir, config, result


def test_teacher_is_frozen_unoptimised_and_restored_in_the_checkpoint(teacher_run, distilled):
  teacher_dir, teacher_params, teacher_state = teacher_run
  workdir, config, result = distilled
  run = runs.load_checkpoint(workdir)
  assert run.step == 5 and set(run.params) == {"encoder", "head"}  # the optimizer's params
  saved = run.method_state["teacher"]
  assert int(saved["step"]) == TEACHER_STEP
  # After 5 optimizer steps the teacher is bit-for-bit the teacher run's checkpoint.
  for got, want in ((saved["params"], teacher_params), (saved["state"], teacher_state)):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, got, want)
  # The student is the smaller network (WRN-10-1 vs the teacher's WRN-10-2).
  size = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))
  assert size(run.params) < size(teacher_params) / 2
  records = [r for r in runs.read_metrics(workdir) if "train/loss" in r]
  assert [r["train/teacher_step"] for r in records] == [TEACHER_STEP] * 5
  assert 0.0 <= result["eval/top1"] <= 1.0


def test_no_gradient_reaches_the_teacher(teacher_run, distilled):
  _, teacher_params, teacher_state = teacher_run
  method = build_method(distilled[1])
  images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)

  def teacher_output(params):
    state = {"teacher": {"params": params, "state": teacher_state}}
    return jnp.sum(method.teacher_logits(state, images) ** 2)

  assert float(jax.jit(teacher_output)(teacher_params)) > 0
  grads = jax.jit(jax.grad(teacher_output))(teacher_params)
  assert all(not np.any(g) for g in jax.tree.leaves(grads))


def test_distill_smoke_lowers_its_loss_through_the_loop(distilled):
  records = [r for r in runs.read_metrics(distilled[0]) if "train/loss" in r]
  losses = [r["train/distillation"] for r in records]
  assert len(losses) == 5 and losses[-1] < losses[0], losses


@pytest.mark.slow
def test_distill_gives_the_same_losses_on_one_and_eight_devices(teacher_run, tmp_path):
  losses = []
  for devices, name in ((jax.devices()[:1], "one"), (jax.devices(), "eight")):
    config = load("distill.py:smoke", **{
        "method.teacher_workdir": str(teacher_run[0]), "total_steps": 3, "log_every": 1,
        "checkpoint_every": 0, "export_at_end": False, "visualize": False,
        "eval.protocols": ""})
    train.train_and_evaluate(config, str(tmp_path / name), devices=devices)
    losses.append([r["train/loss"] for r in runs.read_metrics(tmp_path / name)
                   if "train/loss" in r])
  assert len(losses[0]) == 3
  np.testing.assert_allclose(losses[1], losses[0], rtol=2e-4)


def _build(config):
  return trainer.build(config, total_steps=2, steps_per_epoch=2, devices=jax.devices()[:1])


def test_a_missing_or_classifierless_teacher_is_a_clear_user_error(tmp_path):
  config = load("distill.py:smoke")
  with pytest.raises(errors.UserError, match="teacher_workdir is empty"):
    _build(config)
  config = load("distill.py:smoke", **{"method.teacher_workdir": str(tmp_path / "nope")})
  with pytest.raises(errors.UserError, match="nope: it does not exist"):
    _build(config)
  simclr = tmp_path / "simclr"
  simclr.mkdir()
  (simclr / "config.json").write_text(config_lib.to_json(load("simclr.py:smoke")))
  config = load("distill.py:smoke", **{"method.teacher_workdir": str(simclr)})
  with pytest.raises(errors.UserError, match="'simclr' run, which has no classifier"):
    _build(config)
  config = load("distill.py:smoke", **{"method.teacher_workdir": str(simclr),
                                       "method.alpha": 0.5})
  with pytest.raises(errors.UserError, match="declare a 'labeled' stream"):
    _build(config)


# ----------------------------------------------------------------------------- SimCLR v2


def test_finetune_from_the_middle_layer_loads_the_pretrained_encoder_and_first_head_layer(
    tmp_path):
  pretrain = load("simclr.py:smoke,simclrv2")
  assert pretrain.method.proj_layers == 3
  params, state = save_run(tmp_path / "simclr", pretrain, 3, random_values=True)
  config = load("supervised.py:smoke", **{
      "method.init_from": str(tmp_path / "simclr"), "method.init_head_layers": 1,
      "method.init_head_hidden_dim": pretrain.method.proj_hidden_dim})
  method = build_method(config)
  batch = {"image": np.zeros((2, 32, 32, 3), np.uint8), "label": np.zeros(2, np.int32)}
  tuned, tuned_state = jax.device_get(jax.jit(method.init)(jax.random.PRNGKey(5), batch))
  assert set(tuned) == {"encoder", "projector", "head"}
  kept = {"linear_0", "batch_norm_0"}
  jax.tree.map(np.testing.assert_array_equal, tuned["encoder"], params["encoder"])
  jax.tree.map(np.testing.assert_array_equal, tuned["projector"],
               {k: v for k, v in params["projector"].items() if k in kept})
  assert set(params["projector"]) > kept  # the other two layers are left behind
  jax.tree.map(np.testing.assert_array_equal, tuned_state["batch_stats"]["projector"],
               {k: v for k, v in state["batch_stats"]["projector"].items() if k in kept})
  # The classifier reads the kept layer's output: hidden_dim inputs.
  assert tuned["head"]["kernel"].shape == (pretrain.method.proj_hidden_dim, 10)
  assert jax.eval_shape(method.logits, tuned, tuned_state, batch["image"]).shape == (2, 10)
  wrong = load("supervised.py:smoke", **{
      "method.init_from": str(tmp_path / "simclr"), "method.init_head_layers": 1,
      "method.init_head_hidden_dim": 64})
  with pytest.raises(ValueError, match="linear_0/kernel: \\(64, 128\\) vs \\(64, 64\\)"):
    jax.eval_shape(build_method(wrong).init, jax.random.PRNGKey(0), batch)


def _run(spec, workdir, **overrides):
  config = load(spec, **{"export_at_end": False, "visualize": False, **overrides})
  return train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])


@pytest.mark.slow
def test_simclrv2_chain_pretrain_finetune_from_middle_layer_distill(tmp_path):
  """docs/methods.md's SimCLR v2 sequence at smoke size: the student beats chance."""
  _run("simclr.py:smoke,simclrv2", tmp_path / "pretrain")
  _run("supervised.py:smoke", tmp_path / "finetune", **{
      "method.init_from": str(tmp_path / "pretrain"), "method.init_head_layers": 1,
      "method.init_head_hidden_dim": 128, "data.train_subset": "per_class:10",
      "batch_size": 32, "eval.protocols": "knn,classifier"})
  result = _run("distill.py:smoke", tmp_path / "distill", **{
      "method.teacher_workdir": str(tmp_path / "finetune")})
  losses = [r["train/loss"] for r in runs.read_metrics(tmp_path / "distill") if "train/loss" in r]
  assert losses[-1] < losses[0], losses
  assert result["eval/top1"] > 0.3, result  # chance: 0.1


@pytest.mark.slow
def test_distill_smoke_from_a_fixmatch_teacher_beats_chance(tmp_path):
  _run("fixmatch.py:smoke", tmp_path / "teacher", total_steps=30)
  result = _run("distill.py:smoke", tmp_path / "student",
                **{"method.teacher_workdir": str(tmp_path / "teacher")})
  records = [r for r in runs.read_metrics(tmp_path / "student") if "train/loss" in r]
  assert records[-1]["train/distillation"] < 0.5 * records[0]["train/distillation"], records
  assert result["eval/top1"] > 0.3 and result["eval/knn_top1"] > 0.3, result


# ----------------------------------------------------------------------------- the bench


def test_label_budget_rows_take_the_last_metric_and_the_table_has_a_line_per_method(tmp_path):
  from bench import label_budget
  workdir = tmp_path / "fixmatch_250"
  workdir.mkdir()
  (workdir / "config.json").write_text(config_lib.to_json(load("fixmatch.py:smoke")))
  (workdir / "metrics.jsonl").write_text(
      '{"step": 10, "eval/top1": 0.2, "eval/knn_top1": 0.3}\n'
      '{"step": 20, "train/loss": 1.0}\n{"step": 20, "eval/top1": 0.45}\n')
  row = label_budget.row(str(workdir), method="fixmatch", labels=250, wall_s=12.0)
  assert (row["test_top1"], row["knn_top1"], row["steps"], row["model"]) == (
      0.45, 0.3, 20, "wrn_10_1")
  with pytest.raises(errors.UserError, match="no eval/softnn_top1"):
    label_budget.row(str(workdir), method="paws", labels=250, wall_s=1.0,
                     metric="eval/softnn_top1")
  rows = [row, {**row, "labels": 1000, "test_top1": 0.6, "wall_s": 30.0},
          {**row, "method": "paws", "test_top1": 0.5}]
  assert label_budget.table(rows).splitlines() == [
      "| Method | 250 labels: test top-1 % | 250 labels: wall s | 1000 labels: test top-1 % "
      "| 1000 labels: wall s |",
      "|---|---|---|---|---|",
      "| fixmatch | 45.0 | 12 | 60.0 | 30 |",
      "| paws | 50.0 | 12 | — | — |"]
