"""`python -m ssl_jax.evaluate` and `python -m ssl_jax.report` on a smoke checkpoint."""

import json
import pathlib

import jax
import numpy as np
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, errors, evaluate, optim, report, runs
from ssl_jax.methods import build_method

REPO = pathlib.Path(__file__).resolve().parents[1]
STEP = 7


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A supervised smoke run's workdir holding one checkpoint (made without training)."""
  workdir = tmp_path_factory.mktemp("run")
  config = config_lib.load_config(f"{REPO}/configs/supervised.py:smoke")
  (workdir / "config.json").write_text(config_lib.to_json(config))
  method = build_method(config)
  batch = {"image": np.zeros((8, 32, 32, 3), np.uint8), "label": np.zeros((8,), np.int32)}
  params, state = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  tx, _ = optim.build_optimizer(config, params, total_steps=10, steps_per_epoch=10)
  train_state = {"step": np.int32(STEP), "params": params, "opt_state": tx.init(params),
                 "method_state": state}
  checkpointer = ckpt_lib.Checkpointer(str(workdir))
  checkpointer.save(STEP, train_state, None, force=True)
  checkpointer.close()
  return workdir


def test_every_protocol_lands_in_the_json_and_tensorboard(workdir):
  record = evaluate.evaluate_workdir(str(workdir), protocols="knn,linear,fewshot,classifier")
  written = json.loads((workdir / "eval" / f"{STEP}.json").read_text())
  assert written == json.loads(json.dumps(record))
  assert written["step"] == STEP and written["init"] == "checkpoint"
  metrics = written["metrics"]
  for name in ("knn_top1", "knn_top5", "linear_top1", "linear_top5", "fewshot_1shot_top1",
               "fewshot_10shot_top1", "fewshot_25shot_top1_std", "classifier_top1",
               "classifier_top5"):
    assert 0.0 <= metrics[f"eval/{name}"] <= 1.0, name
  for protocol in ("knn", "linear", "fewshot", "classifier"):
    assert metrics[f"eval/{protocol}_seconds"] > 0.0
  # Random features of 10 balanced digit classes: above chance for k-NN, and the untrained
  # head (std 0.01) predicts about one class for everything.
  assert metrics["eval/knn_top1"] > 0.3
  assert metrics["eval/classifier_top1"] < 0.5
  assert list((workdir / "tensorboard" / "eval_checkpoint").iterdir())


def test_the_cli_evaluates_baselines_and_the_report_tabulates_them(workdir, capsys):
  evaluate.main(evaluate._parse_flags(
      ["evaluate", "--workdir", str(workdir), "--init", "raw", "--protocols", "knn",
       "--eval.batch_size=64"]))
  raw = json.loads((workdir / "eval" / "raw.json").read_text())
  assert raw["init"] == "raw" and "mean-centred" in raw["origin"]
  assert raw["metrics"]["eval/knn_top1"] > 0.9  # k-NN on digit pixels is ~97% (and a check)
  evaluate.main(evaluate._parse_flags(
      ["evaluate", "--workdir", str(workdir), "--init", "random", "--protocols", "knn",
       "--tag", "seed0"]))
  random_record = json.loads((workdir / "eval" / "random_seed0.json").read_text())
  assert 0.1 < random_record["metrics"]["eval/knn_top1"] <= 1.0
  out = capsys.readouterr().out
  assert "eval/knn_top1" in out and "%" in out

  table = report.main([str(workdir), "--seconds"])
  lines = table.splitlines()
  assert lines[0].startswith("| Run | Method | Backbone")
  assert "k-NN s" in lines[0]
  assert any("raw pixels" in line and f"{100 * raw['metrics']['eval/knn_top1']:.1f}" in line
             for line in lines)
  assert any("random init" in line for line in lines)
  assert any("supervised from scratch" in line for line in lines)

  # --throughput: the run's median logged images/s (first window, with the compile, left out).
  # This workdir's checkpoint was written directly (no metrics.jsonl), so give it a log.
  rates = [5.0, 100.0, 120.0, 110.0]  # the first window includes the compile
  with open(workdir / "metrics.jsonl", "w") as f:
    for step, rate in enumerate(rates):
      f.write(json.dumps({"step": step, "train/loss": 1.0, "train/images_per_sec": rate}) + "\n")
  table = report.main([str(workdir), "--throughput"]).splitlines()
  assert table[0].rstrip(" |").endswith("Train img/s")
  run_row = table[2].split("|")
  assert run_row[-2].strip() == "110"
  assert all(line.split("|")[-2].strip() == "—" for line in table[3:])  # baselines


def test_bad_paths_and_steps_are_clear_errors(workdir, tmp_path):
  with pytest.raises(SystemExit, match="does not exist"):
    evaluate.main(evaluate._parse_flags(["evaluate", "--workdir", str(tmp_path / "nope")]))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text((workdir / "config.json").read_text())
  with pytest.raises(runs.RunError, match="no checkpoints/<step>/state"):
    runs.load_variables(empty)
  with pytest.raises(FileNotFoundError, match=rf"step 99 .* available steps: \[{STEP}\]"):
    runs.load_variables(workdir, step=99)
  with pytest.raises(evaluate.EvaluationError, match="Unknown or no protocols"):
    evaluate.evaluate_workdir(str(workdir), protocols="knn,svm")
  # The tag names the output file: a path in it would fail at the write, after the evaluation.
  with pytest.raises(evaluate.EvaluationError, match="--tag 'a/b' must be letters"):
    evaluate.evaluate_workdir(str(workdir), protocols="knn", tag="a/b")
  with pytest.raises(SystemExit, match="Unknown config key"):
    evaluate.main(evaluate._parse_flags(["evaluate", "--workdir", str(workdir),
                                         "--data.eval_sorce=digits"]))
  with pytest.raises(SystemExit, match="report: .* has no config.json"):
    report.main([str(tmp_path)])


def test_a_dataset_without_labels_is_a_clear_error(workdir, tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  for split in ("train", "test"):
    np.savez(tmp_path / f"unlabelled_{split}.npz", images=images)
  with pytest.raises(evaluate.EvaluationError, match="has no labels"):
    evaluate.evaluate_workdir(
        str(workdir), protocols="knn",
        overrides=[f"data.eval_source=npz:{tmp_path}/unlabelled_{{split}}.npz"])


def test_an_override_that_changes_the_model_is_refused_before_evaluating(workdir):
  with pytest.raises(evaluate.EvaluationError, match=r"saved \(.*\), built \(.*Evaluate "
                     r"without model.hidden_size=48"):
    evaluate.evaluate_workdir(str(workdir), protocols="knn",
                              overrides=["model.hidden_size=48"])


def test_more_knn_neighbours_than_training_records_is_refused_at_start_up(workdir):
  with pytest.raises(errors.UserError, match="eval.knn_k=100000 neighbours, but the 'train' "
                     "split of .* has only"):
    evaluate.evaluate_workdir(str(workdir), protocols="knn", overrides=["eval.knn_k=100000"])
