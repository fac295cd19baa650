"""Pseudo-label, Mean Teacher and FixMatch: targets, masks, views, EMA, consistency and ramp-ups
against hand-computed numpy; WRN-28-2's size; smoke runs through the real loop; 1 vs 8 devices."""

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import config_lib, runs, train
from ssl_jax.methods import build_method, mean_teacher
from ssl_jax.methods import semi_supervised as ssl
from ssl_jax.models import registry

REPO = pathlib.Path(__file__).resolve().parents[1]


def smoke_config(name, **overrides):
  config = config_lib.load_config(f"{REPO}/configs/{name}.py:smoke")
  config.lock()
  config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
  return config


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- targets and masks


def test_confident_targets_are_the_argmax_above_the_threshold_and_nothing_below():
  logits = np.array([[4.0, 0.0, 0.0], [1.0, 1.2, 0.9], [0.0, 0.0, 9.0], [3.0, 3.0, -5.0]],
                    np.float32)
  probs = np_softmax(logits)
  targets, mask = ssl.confident_targets(jnp.asarray(logits), 0.9)
  np.testing.assert_array_equal(mask, probs.max(-1) >= 0.9)
  np.testing.assert_array_equal(np.asarray(mask), [True, False, True, False])
  np.testing.assert_array_equal(np.asarray(targets)[np.asarray(mask)], [0, 2])
  # The loss sees the confident rows only, averaged over ALL rows (FixMatch Eq. 2).
  strong = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  expected = np.mean([-np.log(np_softmax(strong[i])[t]) if m else 0.0
                      for i, (t, m) in enumerate(zip(np.asarray(targets), np.asarray(mask)))])
  np.testing.assert_allclose(ssl.masked_cross_entropy(jnp.asarray(strong), targets, mask),
                             expected, rtol=1e-6)
  # No gradient flows into the targets' logits.
  grad = jax.grad(lambda x: ssl.masked_cross_entropy(
      jnp.asarray(strong), *ssl.confident_targets(x, 0.9)))(jnp.asarray(logits))
  assert not np.any(np.asarray(grad))


def _fixmatch_pieces(threshold):
  config = smoke_config("fixmatch", **{"method.threshold": threshold,
                                       "method.randaugment_layers": 1})
  method = build_method(config)
  source_images = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
  return method, source_images


def test_fixmatch_weak_and_strong_views_come_from_the_same_image():
  method, images = _fixmatch_pieces(0.95)
  mean, std = np.asarray(method.config.method.mean), np.asarray(method.config.method.std)
  # With every augmentation off, both views are exactly image i in row i.
  plain = build_method(smoke_config("fixmatch", **{
      "method.flip_prob": 0.0, "method.max_shift_fraction": 0.0,
      "method.randaugment_layers": 0, "method.cutout_fraction": 0.0}))
  weak, strong = jax.jit(plain.weak_and_strong)(jax.random.PRNGKey(0), images)
  expected = (images.astype(np.float32) / 255.0 - mean) / std
  np.testing.assert_allclose(weak, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(strong, expected, rtol=1e-5, atol=1e-5)
  # With the full recipe on images of one constant colour each, the weak view (flip + shift)
  # keeps each row's colour exactly, and the strong view differs from it.
  colours = np.linspace(10, 245, 6).astype(np.uint8)
  flat = np.broadcast_to(colours[:, None, None, None], (6, 16, 16, 3)).copy()
  weak, strong = jax.jit(method.weak_and_strong)(jax.random.PRNGKey(0), flat)
  np.testing.assert_allclose(np.asarray(weak) * std + mean,
                             np.broadcast_to(colours[:, None, None, None] / 255.0, flat.shape),
                             atol=1e-5)
  assert weak.shape == strong.shape == (6, 16, 16, 3)
  assert not np.allclose(weak, strong)


def test_fixmatch_mask_is_exactly_the_confident_set_of_the_weak_view():
  method, images = _fixmatch_pieces(0.95)
  batch = {"labeled": {"image": images[:2], "label": np.array([0, 1], np.int32)},
           "unlabeled": {"image": images, "label": np.full((6,), -1, np.int32)}}
  params, state = method.init(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(5)

  @jax.jit
  def weak_and_strong_logits(params):
    # The loss's own steps: the same keys, views and single forward.
    labeled_rng, unlabeled_rng = jax.random.split(rng)
    weak, strong = method.weak_and_strong(unlabeled_rng, images)
    (_, logits_weak, logits_strong), _ = method.student_logits(
        params, state, [method.weak(labeled_rng, images[:2]), weak, strong])
    return logits_weak, logits_strong

  logits_weak, logits_strong = map(np.asarray, weak_and_strong_logits(params))
  probs = np_softmax(logits_weak.astype(np.float64))
  # A threshold between the weak view's confidences: half the rows pass, half do not.
  threshold = float(np.median(probs.max(-1)))
  mask = probs.max(-1) >= threshold
  assert 0 < mask.sum() < 6
  thresholded = build_method(smoke_config("fixmatch", **{"method.threshold": threshold,
                                                         "method.randaugment_layers": 1}))
  _, (metrics, _) = jax.jit(thresholded.loss)(params, state, batch, rng, 0)
  np.testing.assert_allclose(metrics["mask_rate"], mask.mean(), atol=1e-7)
  ce = -np.log(np_softmax(logits_strong.astype(np.float64))[np.arange(6), probs.argmax(-1)])
  np.testing.assert_allclose(metrics["unlabeled_loss"], np.mean(mask * ce), rtol=1e-4)


def test_fixmatch_ema_averages_the_weights_and_reads_the_students_batchnorm_statistics():
  """fixmatch `ema.apply(utils.model_vars())`: trainable variables only; the EMA classifier
  reads the student's raw moving averages (not an EMA of them)."""
  method = build_method(smoke_config("fixmatch"))
  batch = {"labeled": {"image": np.zeros((2, 16, 16, 3), np.uint8),
                       "label": np.zeros((2,), np.int32)},
           "unlabeled": {"image": np.zeros((4, 16, 16, 3), np.uint8),
                         "label": np.full((4,), -1, np.int32)}}
  params, state = method.init(jax.random.PRNGKey(0), batch)
  assert jax.tree.leaves(state["batch_stats"]), "the smoke backbone should have BatchNorm"
  student = jax.tree.map(lambda x: x + 1.0, params)
  moved = {**state, "batch_stats": jax.tree.map(lambda x: x + 3.0, state["batch_stats"])}
  updated = method.update_state(student, moved, 10)
  a = float(method.ema_momentum(10))  # The smoke preset's 0.9.
  for new, old, current in zip(jax.tree.leaves(updated["ema"]["params"]),
                               jax.tree.leaves(state["ema"]["params"]), jax.tree.leaves(student)):
    np.testing.assert_allclose(new, a * np.asarray(old) + (1 - a) * np.asarray(current),
                               rtol=1e-5, atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, updated["ema"]["batch_stats"],
               moved["batch_stats"])
  assert method.eval_model(student, updated)[1] is updated["ema"]["batch_stats"]


# ----------------------------------------------------------------------------- Mean Teacher


def test_mean_teacher_consistency_is_the_softmax_mse_against_numpy_and_spares_the_teacher():
  rng = np.random.default_rng(2)
  student, teacher = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  expected = np.mean((np_softmax(student) - np_softmax(teacher)) ** 2)
  np.testing.assert_allclose(mean_teacher.softmax_mse(jnp.asarray(student),
                                                      jnp.asarray(teacher)), expected, rtol=1e-5)
  grad = jax.grad(lambda t: mean_teacher.softmax_mse(jnp.asarray(student), t))(
      jnp.asarray(teacher))
  assert not np.any(np.asarray(grad))


def test_mean_teacher_ema_follows_the_papers_decays_against_numpy():
  config = smoke_config("mean_teacher", **{"method.rampup_steps": 10, "method.ema_decay": 0.999})
  method = build_method(config)
  decays = [float(method.ema_momentum(k)) for k in (0, 1, 5, 9, 10, 2000)]
  # min(1 - 1/(t + 1), a) at the t = k + 1-th update; a = 0.99 during ramp-up, 0.999 after.
  expected = [min(1 - 1 / (k + 2), 0.99 if k < 10 else 0.999) for k in (0, 1, 5, 9, 10, 2000)]
  np.testing.assert_allclose(decays, expected, rtol=1e-6)
  batch = {"labeled": {"image": np.zeros((2, 16, 16, 3), np.uint8),
                       "label": np.zeros((2,), np.int32)},
           "unlabeled": {"image": np.zeros((4, 16, 16, 3), np.uint8),
                         "label": np.full((4,), -1, np.int32)}}
  params, state = method.init(jax.random.PRNGKey(0), batch)
  student = jax.tree.map(lambda x: x + 1.0, params)
  updated = method.update_state(student, state, 2000)
  a = expected[-1]
  for path_leaves in zip(jax.tree.leaves(updated["ema"]["params"]),
                         jax.tree.leaves(state["ema"]["params"]), jax.tree.leaves(student)):
    new, old, current = map(np.asarray, path_leaves)
    np.testing.assert_allclose(new, a * old + (1 - a) * current, rtol=1e-5, atol=1e-6)
  # The teacher's BatchNorm statistics are its own (from its forward passes), not blended.
  jax.tree.map(np.testing.assert_array_equal, updated["ema"]["batch_stats"],
               state["ema"]["batch_stats"])


def test_mean_teacher_cifar10_weight_is_the_official_cost_at_a_fixed_labelled_share():
  """mean-teacher's cifar10_final_eval: CE summed over a batch's labelled rows / all rows, and
  consistency cost 100 x n_labeled / 50k; our step averages CE over its labelled rows. The two
  objectives differ by the labelled share p only (which Adam does not see) when our weight is
  100, for 250 and for 4000 labels, and the final-eval EMA decay is 0.999 from the start."""
  for preset, n_labeled in (("cifar10", 250), ("cifar10,labels_4000", 4000)):
    config = config_lib.load_config(f"configs/mean_teacher.py:{preset}")
    assert config.method.consistency_weight == 100.0
    assert config.method.ema_decay_rampup == config.method.ema_decay == 0.999
    # A batch of 200 whose labelled share is exactly p = n_labeled / 50k (1 and 16 rows).
    rng = np.random.default_rng(n_labeled)
    p = n_labeled / 50_000
    logits, teacher = rng.normal(size=(2, 200, 10))
    labels = rng.integers(0, 10, size=200)
    labelled = np.arange(200) < round(p * 200)
    ce = -np.log(np_softmax(logits)[np.arange(200), labels])
    mse = np.mean((np_softmax(logits) - np_softmax(teacher)) ** 2)
    official = ce[labelled].sum() / 200 + 100.0 * p * mse      # classification_costs + cost
    ours = ce[labelled].mean() + config.method.consistency_weight * mse
    np.testing.assert_allclose(official, p * ours, rtol=1e-12)


# ----------------------------------------------------------------------------- ramp-ups


def test_rampups_follow_their_formulas():
  steps = np.array([0, 5, 10, 35, 60, 100, 1000])
  lee = np.asarray(jax.vmap(lambda k: ssl.lee_rampup(k, 10.0, 60.0, 3.0))(steps))
  expected = np.where(steps < 10, 0.0, np.where(steps < 60, 3.0 * (steps - 10) / 50, 3.0))
  np.testing.assert_allclose(lee, expected, rtol=1e-6)
  sigmoid = np.asarray(jax.vmap(lambda k: ssl.sigmoid_rampup(k, 100.0))(steps))
  t = np.clip(steps / 100, 0, 1)
  np.testing.assert_allclose(sigmoid, np.exp(-5 * (1 - t) ** 2), rtol=1e-6)
  assert float(ssl.sigmoid_rampup(3, 0)) == 1.0


def test_fixmatch_learning_rate_is_cos_7_pi_k_over_16_K():
  from ssl_jax import optim
  config = config_lib.load_config(f"{REPO}/configs/fixmatch.py:cifar10")
  schedule = optim.learning_rate_schedule(optim.group_settings(config.optim)["base"],
                                         batch_size=config.batch_size, total_steps=1000,
                                         steps_per_epoch=10)
  k = np.array([0, 250, 999, 1000])
  np.testing.assert_allclose([float(schedule(i)) for i in k],
                             0.03 * np.cos(7 * np.pi * k / (16 * 1000)), rtol=1e-5)
  assert (config.optim.name, config.optim.nesterov, config.optim.weight_decay) == (
      "sgd", True, 5e-4)
  streams_config = config.data.streams
  assert streams_config.unlabeled.batch_size == 7 * streams_config.labeled.batch_size == 448


# ----------------------------------------------------------------------------- WRN-28-2


def test_wide_resnet_28_2_has_the_papers_1_5m_parameters():
  encoder = registry.build_encoder(ml_collections.ConfigDict({"name": "wrn_28_2"}))
  variables = jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 32, 32, 3))))
  flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  total = sum(leaf.size for _, leaf in flat)
  conv_biases = sum(leaf.size for path, leaf in flat
                    if path[-1].key == "bias" and "bn" not in str(path[-2].key))
  head = encoder.feature_dim * 10 + 10
  # The bias-free PyTorch ports' 1,467,610 (kekmodel/FixMatch-pytorch), plus TF's conv biases.
  assert total - conv_biases + head == 1_467_610
  assert round((total + head) / 1e6, 1) == 1.5
  with pytest.raises(ValueError, match="6n \\+ 4"):
    registry.build_encoder(ml_collections.ConfigDict({"name": "wrn_27_2"}))


# ----------------------------------------------------------------------------- through the loop


# FixMatch's run is in the default suite; the other two (~15 s CPU each) are marked slow.
@pytest.mark.parametrize("name", [pytest.param("pseudo_label", marks=pytest.mark.slow),
                                  pytest.param("mean_teacher", marks=pytest.mark.slow),
                                  "fixmatch"])
def test_smoke_run_lowers_its_loss_and_beats_chance(name, tmp_path):
  config = smoke_config(name, total_steps=30, export_at_end=False, visualize=False,
                        checkpoint_every=0)
  result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  records = runs.read_metrics(tmp_path)
  cross_entropy = [r["train/cross_entropy"] for r in records if "train/cross_entropy" in r]
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert cross_entropy[-1] < 0.7 * cross_entropy[0], cross_entropy
  assert losses[-1] < losses[0], losses
  assert result["eval/top1"] > 0.3 and result["eval/knn_top1"] > 0.3, result  # chance: 0.1


def test_pseudo_label_gives_the_same_losses_on_one_and_eight_devices(tmp_path):
  # Every unlabelled row counts from step 0 (threshold 0, no ramp), so both terms are compared.
  overrides = {"total_steps": 3, "log_every": 1, "export_at_end": False, "visualize": False,
               "checkpoint_every": 0, "eval_every": 0, "method.threshold": 0.0,
               "method.rampup_end_epochs": 0.0}
  for devices, workdir in ((jax.devices()[:1], tmp_path / "one"),
                           (jax.devices(), tmp_path / "eight")):
    config = smoke_config("pseudo_label", **overrides)
    config.eval.protocols = ""
    train.train_and_evaluate(config, str(workdir), devices=devices)
  one, eight = ([r["train/loss"] for r in runs.read_metrics(w) if "train/loss" in r]
                for w in (tmp_path / "one", tmp_path / "eight"))
  assert len(one) == len(eight) == 3
  np.testing.assert_allclose(eight, one, rtol=2e-4)
