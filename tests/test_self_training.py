"""Self-training: the label CLI (order, ragged last batch, ensembles, teachers without a head), the
pseudo_labeled stream (selection, counts, mismatches, resume) and Noisy Student (loss against
numpy, a smoke run that learns from a labels file and then teaches)."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config_lib, label, runs, train
from ssl_jax.data import pseudo_labels, sources, streams
from ssl_jax.methods import build_method, noisy_student
from ssl_jax.methods import semi_supervised as ssl

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 16  # The smoke preset's canvas.


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def student_config(labels_file, **overrides):
  config = config_lib.load_config(f"{REPO}/configs/noisy_student.py:smoke")
  config.lock()
  overrides = {"data.streams.pseudo_labeled.labels_file": str(labels_file), **overrides}
  config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
  return config


def digits_labels(path, *, records=None, source="digits", split="train", seed=0):
  """A labels file for the digits train split from a teacher that is right with confidence
  0.5..0.95 (so every soft row is distinct and the threshold 0.3 keeps all of them)."""
  truth = sources.get_source("digits", "train", image_size=SIZE)
  labels = np.asarray([truth[i]["label"] for i in range(len(truth))])[:records]
  confidence = np.random.default_rng(seed).uniform(0.5, 0.95, labels.shape[0])
  soft = np.tile(((1 - confidence) / 9)[:, None], (1, 10))
  soft[np.arange(labels.shape[0]), labels] = confidence
  pseudo_labels.write(path, soft, {"source": source, "split": split,
                                   "records": int(labels.shape[0])})
  return soft.astype(np.float32)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
  """One Noisy Student smoke run on a labels file, reused as the teacher of the label tests."""
  root = tmp_path_factory.mktemp("self_training")
  digits_labels(root / "labels.npz")
  config = student_config(root / "labels.npz", export_at_end=False, visualize=False,
                          checkpoint_every=0)
  result = train.train_and_evaluate(config, str(root / "student"), devices=jax.devices()[:1])
  return root / "student", result


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
  """21 digits test images as an npz source: ragged against a batch of 8."""
  path = tmp_path_factory.mktemp("small") / "small.npz"
  test = sources.get_source("digits", "test", image_size=SIZE)
  np.savez(path, images=np.stack([test[i]["image"] for i in range(21)]))
  return f"npz:{path}"


# ----------------------------------------------------------------------------- the labels file


def _labels(confidence, hard, num_classes=3):
  soft = np.full((len(hard), num_classes), 0.0, np.float32)
  soft[np.arange(len(hard)), hard] = confidence
  return pseudo_labels.PseudoLabels(soft=soft, hard=np.asarray(hard, np.int32),
                                    confidence=np.asarray(confidence, np.float32), meta={},
                                    path="x")


def test_selection_filters_by_confidence_then_balances_each_class():
  confidence = [0.9, 0.2, 0.6, 0.4, 0.35, 0.8, 0.1]
  hard = [0, 0, 0, 0, 1, 1, 2]
  labels = _labels(confidence, hard)
  np.testing.assert_array_equal(pseudo_labels.select(labels, min_confidence=0.3, per_class=0),
                                [0, 2, 3, 4, 5])
  # Class 0 keeps its 2 most confident, class 1 (2 records) as is, class 2 (none left) is empty.
  np.testing.assert_array_equal(pseudo_labels.select(labels, min_confidence=0.3, per_class=2),
                                [0, 2, 5, 4])
  # Too few: repeated, most confident first.
  np.testing.assert_array_equal(pseudo_labels.select(labels, min_confidence=0.3, per_class=5),
                                [0, 2, 3, 0, 2, 5, 4, 5, 4, 5])


# ----------------------------------------------------------------------------- the stream


def test_pseudo_labeled_stream_zips_each_record_with_its_labels_and_resumes(tmp_path):
  soft = digits_labels(tmp_path / "labels.npz")
  config = student_config(tmp_path / "labels.npz")
  data = streams.make_train_data(config, process_index=0, process_count=1)
  truth = sources.get_source("digits", "train", image_size=SIZE)
  batch = next(data.iterator)["pseudo_labeled"]
  assert batch["soft"].shape == (64, 10) and batch["soft"].dtype == np.float32
  for row in range(8):
    record = int(np.flatnonzero((soft == batch["soft"][row]).all(axis=1))[0])
    np.testing.assert_array_equal(batch["image"][row], truth[record]["image"])
    assert batch["label"][row] == soft[record].argmax() == truth[record]["label"]
  # Exact resume: the batch after a restored state is the one the first iterator draws.
  state = data.iterator.get_state()
  expected = next(data.iterator)
  resumed = streams.make_train_data(config, process_index=0, process_count=1).iterator
  resumed.set_state(state)
  got = next(resumed)
  for name in expected:
    for key in expected[name]:
      np.testing.assert_array_equal(got[name][key], expected[name][key])


def test_pseudo_labeled_stream_counts_records_after_selection(tmp_path):
  digits_labels(tmp_path / "labels.npz")
  spec = streams.parse_streams(student_config(tmp_path / "labels.npz"))[1]
  assert (spec.kind, spec.min_confidence, spec.per_class) == ("pseudo_labeled", 0.3, 150)
  truth = sources.get_source("digits", "train", image_size=SIZE)
  source = streams.pseudo_labeled_source(student_config(tmp_path / "labels.npz"), spec, truth)
  assert len(source) == 10 * 150  # Balanced: 150 records of each digit.
  counts = np.bincount([source[i]["label"] for i in range(len(source))], minlength=10)
  np.testing.assert_array_equal(counts, [150] * 10)
  # The batch read (in-memory sources) equals stacking the records.
  rows = [3, 0, 1499, 7]
  batch = source.get_batch(rows)
  for key in ("image", "label", "soft"):
    np.testing.assert_array_equal(batch[key], np.stack([source[i][key] for i in rows]))
  # Without balancing every record reaching the threshold (here all) is read once.
  unbalanced = dataclasses.replace(spec, per_class=0)
  assert len(streams.pseudo_labeled_source(student_config(tmp_path / "labels.npz"), unbalanced,
                                           truth)) == len(truth)


def test_pseudo_labeled_stream_rejects_labels_of_other_records(tmp_path, monkeypatch):
  digits_labels(tmp_path / "short.npz", records=100)
  with pytest.raises(sources.DataError, match="holds 100 predictions but 'digits' split "
                                              "'train' has 1497 records"):
    streams.make_train_data(student_config(tmp_path / "short.npz"), process_index=0,
                            process_count=1)
  digits_labels(tmp_path / "other.npz", source="npz:/data/{split}.npz")
  with pytest.raises(sources.DataError, match="labels source 'npz:/data/{split}.npz'"):
    streams.make_train_data(student_config(tmp_path / "other.npz"), process_index=0,
                            process_count=1)
  # The same npz named by a relative and by an absolute path is the same source.
  monkeypatch.chdir(tmp_path)
  assert pseudo_labels.same_source("npz:./{split}.npz", f"npz:{tmp_path}/{{split}}.npz")
  assert not pseudo_labels.same_source("npz:/a/{split}.npz", "npz:/b/{split}.npz")
  with pytest.raises(sources.DataError, match="ssl_jax.label"):
    streams.make_train_data(student_config(""), process_index=0, process_count=1)
  with pytest.raises(config_lib.ConfigError, match="min_confidence"):
    config_lib.validate(student_config(tmp_path / "x.npz", **{
        "data.streams.pseudo_labeled.min_confidence": 1.5}))


# ----------------------------------------------------------------------------- the loss


def test_noisy_student_loss_is_labelled_ce_plus_soft_ce_against_numpy(tmp_path):
  rng = np.random.default_rng(0)
  logits_l, logits_u = rng.normal(size=(2, 4, 10)).astype(np.float32)
  labels = np.array([1, 0, 3, 9])
  soft = np_softmax(rng.normal(size=(4, 10))).astype(np.float32)
  hard = soft.argmax(-1)
  ce = -np.mean(np.log(np_softmax(logits_l))[np.arange(4), labels])
  soft_ce = -np.mean(np.sum(soft * np.log(np_softmax(logits_u)), axis=-1))
  hard_ce = -np.mean(np.log(np_softmax(logits_u))[np.arange(4), hard])
  np.testing.assert_allclose(ssl.soft_cross_entropy(jnp.asarray(logits_u), soft), soft_ce,
                             rtol=1e-6)
  # The method's total with fixed student logits: CE_l + w * H(q, p_u), soft or one-hot q.
  for soft_targets, unlabeled in ((True, soft_ce), (False, hard_ce)):
    config = student_config(tmp_path / "x.npz", **{"method.soft_targets": soft_targets,
                                                   "method.unlabeled_weight": 2.0,
                                                   "method.randaugment_layers": 0})

    class Fixed(noisy_student.NoisyStudent):
      def student_logits(self, params, state, views, rng=None):
        return [jnp.asarray(logits_l), jnp.asarray(logits_u)], state["batch_stats"]

    method = Fixed(config=config, total_steps=1, steps_per_epoch=1)
    image = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    batch = {"labeled": {"image": image, "label": labels},
             "pseudo_labeled": {"image": image, "label": hard, "soft": soft}}
    loss, (metrics, _) = jax.jit(method.loss)({}, {"batch_stats": {}}, batch,
                                              jax.random.PRNGKey(0), 0)
    np.testing.assert_allclose(loss, ce + 2.0 * unlabeled, rtol=1e-5)
    np.testing.assert_allclose(metrics["unlabeled_loss"], unlabeled, rtol=1e-5)


# ----------------------------------------------------------------------------- through the loop


def test_smoke_student_lowers_its_loss_and_beats_chance(student):
  workdir, result = student
  records = runs.read_metrics(workdir)
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  # The soft targets' entropy (~1.2 nats here) bounds the pseudo-labelled term from below.
  assert losses[-1] < 0.9 * losses[0], losses
  assert result["eval/top1"] > 0.3 and result["eval/knn_top1"] > 0.3, result  # chance: 0.1


def _teacher(workdir):
  config = runs.load_config(workdir)
  run = runs.load_checkpoint(workdir)
  return build_method(config), run.params, run.method_state


def test_label_cli_writes_one_prediction_per_input_in_input_order(student, small_source,
                                                                  tmp_path, capsys):
  workdir, _ = student
  out = tmp_path / "labels.npz"
  label.main(label._parse_flags(["label", f"--workdir={workdir}", f"--data={small_source}",
                                 "--split=test", f"--out={out}", "--batch_size=8"]))
  assert "21 records" in capsys.readouterr().out
  written = pseudo_labels.read(out)
  assert written.soft.shape == (21, 10)  # 2 full batches + a ragged one of 5, over 8 devices
  method, params, state = _teacher(workdir)
  images = np.stack([sources.get_source(small_source, "test", image_size=SIZE)[i]["image"]
                     for i in range(21)])
  direct = np_softmax(np.asarray(method.logits(params, state, images)))
  np.testing.assert_allclose(written.soft, direct, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(written.hard, direct.argmax(-1))
  np.testing.assert_allclose(written.confidence, direct.max(-1), rtol=1e-4)
  assert written.meta["source"] == small_source and written.meta["split"] == "test"
  assert written.meta["transforms"] == ["identity"]
  assert written.meta["step"] == 60 and written.meta["method"] == "noisy_student"


def test_label_ensemble_is_the_mean_of_per_transform_predictions(student, small_source,
                                                                  tmp_path):
  workdir, _ = student
  out = tmp_path / "ensemble.npz"
  meta = label.label_workdir(str(workdir), data=small_source, split="test", out=str(out),
                             transforms="flip,scales", scales=(0.5, 1.5), batch_size=16)
  assert meta["transforms"] == ["identity", "flip", "scale_0.5", "scale_1.5"]
  method, params, state = _teacher(workdir)
  images = jnp.asarray(np.stack([sources.get_source(small_source, "test",
                                                    image_size=SIZE)[i]["image"]
                                 for i in range(21)]))
  per_transform = [np_softmax(np.asarray(method.logits(params, state, view)))
                   for view in (images, images[:, :, ::-1], label.rescale(images, 0.5),
                                label.rescale(images, 1.5))]
  # The transformations are not no-ops, and the ensemble is their plain mean.
  assert np.abs(per_transform[2] - per_transform[0]).max() > 1e-3
  np.testing.assert_allclose(pseudo_labels.read(out).soft, np.mean(per_transform, axis=0),
                             rtol=1e-4, atol=1e-6)


def test_rescale_is_a_resolution_change_on_the_same_canvas():
  rescale = jax.jit(label.rescale, static_argnums=1)
  flat = jnp.full((2, 8, 8, 3), 77, jnp.uint8)
  np.testing.assert_array_equal(rescale(flat, 0.5), flat)  # A flat image stays flat.
  ramp = jnp.asarray(np.broadcast_to(np.arange(0, 256, 32, dtype=np.uint8)[None, None, :, None],
                                     (2, 8, 8, 3)))
  half = rescale(ramp, 0.5)
  assert half.shape == ramp.shape and half.dtype == jnp.uint8
  assert not np.array_equal(half, ramp)  # 4 px of detail, upsampled.


def test_label_refuses_a_teacher_without_a_classifier_and_unknown_transforms(tmp_path):
  config = config_lib.load_config(f"{REPO}/configs/simclr.py:smoke")
  (tmp_path / "config.json").write_text(config_lib.to_json(config))
  with pytest.raises(label.LabelError, match="method.name='simclr', which has no classifier"):
    label.label_workdir(str(tmp_path), data="digits", out=str(tmp_path / "l.npz"))
  with pytest.raises(label.LabelError, match="Unknown --transforms \\['rotate'\\]"):
    label.label_workdir(str(tmp_path), data="digits", out=str(tmp_path / "l.npz"),
                        transforms="flip,rotate")
  assert not (tmp_path / "l.npz").exists()
  assert json.loads((tmp_path / "config.json").read_text())["method"]["name"] == "simclr"
  # An --out the labels could not be written to is refused before the teacher is even read
  # (the write comes after the whole labelling pass).
  with pytest.raises(label.LabelError, match="cannot be written \\(it is a directory"):
    label.label_workdir(str(tmp_path), data="digits", out=str(tmp_path))
  with pytest.raises(label.LabelError, match="--out .*/config.json/l.npz cannot be written"):
    label.label_workdir(str(tmp_path), data="digits", out=str(tmp_path / "config.json" / "l.npz"))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_student_noise_is_stochastic_depth_and_head_dropout_in_training_only(student):
  # The smoke student's trained WRN-10-1 (drop_path_rate 0.2), and the same model without noise.
  method, params, state = _teacher(student[0])
  noisy = method.encoder
  plain = noisy.clone(drop_path_rate=0.0)
  assert noisy.drop_path_rate == pytest.approx(0.2)
  variables = {"params": params["encoder"], "batch_stats": state["batch_stats"]}
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, SIZE, SIZE, 3)), jnp.float32)

  @jax.jit
  def outputs(keys):
    """Both models at evaluation, and the noisy one in training under each key."""
    evaluate = [m.apply(variables, images)["pooled"] for m in (plain, noisy)]
    train = jax.vmap(lambda key: noisy.apply(variables, images, train=True,
                                             mutable=["batch_stats"],
                                             rngs={"dropout": key})[0]["pooled"])(keys)
    return evaluate, train

  (eval_plain, eval_noisy), train = outputs(jax.random.split(jax.random.PRNGKey(0), 4))
  # Identical at evaluation; in training, draws drop whole residual branches.
  np.testing.assert_array_equal(eval_noisy, eval_plain)
  assert len({np.asarray(t).tobytes() for t in train}) > 1
  # Head dropout: each feature zeroed or scaled by 1 / (1 - 0.5), only in training.
  head = ssl.ClassifierHead(6, dropout_rate=0.5)
  kernel = np.random.default_rng(1).normal(size=(6, 6))
  head_params = {"params": {"head": {"kernel": jnp.asarray(kernel, jnp.float32),
                                     "bias": jnp.zeros((6,))}}}
  features = jnp.ones((1, 6))
  apply = jax.jit(lambda train: head.apply(head_params, features, train=train,
                                           rngs={"dropout": jax.random.PRNGKey(1)}),
                  static_argnums=0)
  np.testing.assert_allclose(apply(False), features @ kernel, rtol=1e-5)
  scale = np.asarray(apply(True), np.float64) @ np.linalg.inv(kernel)
  np.testing.assert_allclose(np.minimum(np.abs(scale), np.abs(scale - 2.0)), 0.0, atol=1e-3)
  assert 0 < np.sum(np.abs(scale) < 1e-3) < 6, scale  # Some dropped, some kept.


@pytest.mark.slow
def test_noisy_student_gives_the_same_losses_on_one_and_eight_devices(tmp_path):
  # Noise included: RandAugment, stochastic depth and dropout draw from the step's key alone.
  digits_labels(tmp_path / "labels.npz")
  overrides = {"total_steps": 3, "log_every": 1, "export_at_end": False, "visualize": False,
               "checkpoint_every": 0, "eval_every": 0, "eval.protocols": ""}
  for devices, workdir in ((jax.devices()[:1], tmp_path / "one"),
                           (jax.devices(), tmp_path / "eight")):
    train.train_and_evaluate(student_config(tmp_path / "labels.npz", **overrides),
                             str(workdir), devices=devices)
  one, eight = ([r["train/loss"] for r in runs.read_metrics(w) if "train/loss" in r]
                for w in (tmp_path / "one", tmp_path / "eight"))
  assert len(one) == len(eight) == 3
  np.testing.assert_allclose(eight, one, rtol=2e-4)


@pytest.mark.slow
def test_teacher_label_student_label_chain_through_the_clis(tmp_path):
  """docs/methods.md's iteration at smoke size, through the real commands."""
  def run(*args):
    subprocess.run([sys.executable, "-m", *args], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})

  run("ssl_jax.train", "--config", "configs/fixmatch.py:smoke", "--workdir",
      str(tmp_path / "teacher"), "--config.total_steps=20", "--config.export_at_end=False")
  for generation, teacher in enumerate(("teacher", "student_1")):
    labels_file = tmp_path / f"labels_{generation}.npz"
    run("ssl_jax.label", "--workdir", str(tmp_path / teacher), "--data", "digits", "--out",
        str(labels_file), "--transforms", "flip", "--batch_size", "64")
    written = pseudo_labels.read(labels_file)
    assert written.soft.shape == (1497, 10) and written.meta["transforms"] == ["identity", "flip"]
    run("ssl_jax.train", "--config", "configs/noisy_student.py:smoke", "--workdir",
        str(tmp_path / f"student_{generation + 1}"), "--config.total_steps=20",
        "--config.export_at_end=False",
        f"--config.data.streams.pseudo_labeled.labels_file={labels_file}")
  assert runs.read_metrics(tmp_path / "student_2")[-1]["eval/top1"] > 0.1
