"""PAWS: the loss against numpy written from the paper, the soft-NN evaluator, sharding
invariance and the smoke run. (The support stream's properties are tested in test_streams.py.)"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config_lib, parallel, runs, train
from ssl_jax.evaluators import softnn
from ssl_jax.losses import paws as paws_lib
from ssl_jax.methods import build_method

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- loss, by hand


def test_support_labels_are_smoothed_one_hot_over_the_steps_classes():
  # Sample-major support set of classes 3 and 7 (dataset ids), two samples each.
  labels = paws_lib.support_label_matrix(jnp.array([3, 7, 3, 7]), classes=2, smoothing=0.1)
  # suncet make_labels_matrix: 1 - s + s / C on the class, s / C elsewhere (C = 2 per step).
  np.testing.assert_allclose(labels, [[0.95, 0.05], [0.05, 0.95], [0.95, 0.05], [0.05, 0.95]],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="not whole sets of 2 classes"):
    paws_lib.support_label_matrix(jnp.array([3, 7, 3]), classes=2, smoothing=0.1)


def test_sharpen_and_soft_nn_by_hand():
  # (0.5, 0.25, 0.25) ** 2 = (0.25, 0.0625, 0.0625), over their sum 0.375.
  np.testing.assert_allclose(paws_lib.sharpen(jnp.array([[0.5, 0.25, 0.25]]), 0.5),
                             [[2 / 3, 1 / 6, 1 / 6]], rtol=1e-6)
  # A query along support 0 (cos 1) and orthogonal to support 1 (cos 0); the query's norm and
  # the supports' norms do not matter (cosine).
  query = jnp.array([[3.0, 0.0]])
  supports = jnp.array([[2.0, 0.0], [0.0, 5.0]])
  labels = jnp.array([[0.9, 0.1], [0.1, 0.9]])
  weight = np.exp(1 / 0.1) / (np.exp(1 / 0.1) + np.exp(0.0))
  expected = weight * np.array([0.9, 0.1]) + (1 - weight) * np.array([0.1, 0.9])
  np.testing.assert_allclose(paws_lib.soft_nn(query, supports, labels, 0.1), [expected],
                             rtol=1e-6)


def _normalise(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_snn(queries, supports, labels, tau):
  logits = _normalise(queries) @ _normalise(supports).T / tau
  weights = np.exp(logits - logits.max(1, keepdims=True))
  return (weights / weights.sum(1, keepdims=True)) @ labels


def _np_sharpen(p, T):
  return p ** (1 / T) / np.sum(p ** (1 / T), axis=1, keepdims=True)


def _np_paws(anchors, anchor_supports, targets_from, target_supports, support_ids, classes,
             num_local, tau=0.1, T=0.25, smoothing=0.1, me_max=True):
  """The paper's loss, image by image: anchor (view v of image i) is taught by the other global
  view when v < 2, by the mean of both global views' targets when v is local."""
  columns = list(support_ids[:classes])
  labels = np.array([[1 - smoothing + smoothing / classes if columns[c] == y
                      else smoothing / classes for c in range(classes)] for y in support_ids])
  batch = targets_from.shape[0] // 2
  target_probs = _np_sharpen(_np_snn(targets_from, target_supports, labels, tau), T)
  probs = _np_snn(anchors, anchor_supports, labels, tau)
  total = 0.0
  for v in range(2 + num_local):
    for i in range(batch):
      if v < 2:
        target = target_probs[(1 - v) * batch + i]
      else:
        target = 0.5 * (target_probs[i] + target_probs[batch + i])
      target = np.where(target < 1e-4, 0.0, target)
      total += -np.sum(target * np.log(probs[v * batch + i]))
  ce = total / ((2 + num_local) * batch)
  mean = _np_sharpen(probs, T).mean(0)
  entropy = -np.sum(mean * np.log(mean))
  return (ce - entropy if me_max else ce), ce, entropy


@pytest.mark.parametrize("me_max", [True, False])
def test_paws_loss_equals_numpy_with_pairing_smoothing_and_me_max(me_max):
  rng = np.random.default_rng(0)
  batch, num_local, classes, dim = 3, 2, 3, 5
  support_ids = np.array([4, 1, 8] * 2)  # sample-major: classes 4, 1, 8, two samples each
  anchors = rng.normal(size=((2 + num_local) * batch, dim)).astype(np.float32)
  anchor_supports = rng.normal(size=(6, dim)).astype(np.float32)
  # Target views close to the supports so the sharpened targets are peaked and differ by view
  # (a wrong pairing changes the value), one coordinate tiny (the 1e-4 floor acts).
  targets_from = rng.normal(size=(2 * batch, dim)).astype(np.float32)
  target_supports = rng.normal(size=(6, dim)).astype(np.float32)
  labels = paws_lib.support_label_matrix(jnp.asarray(support_ids), classes, 0.1)
  loss, metrics = paws_lib.paws_loss(anchors, anchor_supports, targets_from, target_supports,
                                     labels, num_local=num_local, me_max=me_max)
  expected, ce, entropy = _np_paws(anchors, anchor_supports, targets_from, target_supports,
                                   support_ids, classes, num_local, me_max=me_max)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["paws_ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics["me_max_entropy"], entropy, rtol=1e-5)
  # Swapping the global views' targets (no pairing) gives a different loss: the test sees it.
  swapped = np.concatenate([targets_from[batch:], targets_from[:batch]])
  unpaired, _, _ = _np_paws(anchors, anchor_supports, swapped, target_supports, support_ids,
                            classes, num_local, me_max=me_max)
  assert abs(unpaired - expected) > 1e-3


def test_targets_are_floored_and_carry_no_gradient():
  probs = jnp.array([[0.9999, 0.0001 * 0.5, 0.0001 * 0.5], [0.5, 0.3, 0.2]])
  targets = paws_lib.paws_targets(probs, num_local=1, sharpen_temperature=0.25)
  assert targets.shape == (3, 3)
  np.testing.assert_allclose(targets[0], _np_sharpen(np.asarray(probs[1:]), 0.25)[0], rtol=1e-6)
  assert float(targets[1, 1]) == 0.0 and float(targets[1, 2]) == 0.0  # below 1e-4: zeroed

  rng = np.random.default_rng(1)
  args = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((8, 4), (4, 4), (4, 4),
                                                                  (4, 4))]
  labels = paws_lib.support_label_matrix(jnp.array([0, 1, 0, 1]), 2, 0.1)
  grads = jax.grad(lambda a, s, t, ts: paws_lib.paws_loss(
      a, s, t, ts, labels, num_local=2)[0], argnums=(0, 1, 2, 3))(*args)
  assert float(jnp.abs(grads[0]).sum()) > 0 and float(jnp.abs(grads[1]).sum()) > 0
  assert float(jnp.abs(grads[2]).sum()) == 0 and float(jnp.abs(grads[3]).sum()) == 0


def test_soft_nn_eval_uses_the_bank_labels_and_ignores_padding():
  bank = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]])
  bank_labels = jnp.array([0, 1, 0, 2])
  test = jnp.array([[2.0, 0.1], [0.1, 3.0], [-1.0, 0.0]])
  out = softnn.soft_nn_eval(bank, bank_labels, test, jnp.array([0, 1, 2]), num_classes=3,
                            chunk_size=2)
  assert out["top1"] == 1.0
  # Padding row 3 (the only class-2 record) masked out: test image 2 can no longer be right;
  # padded test rows are not counted.
  out = softnn.soft_nn_eval(bank, bank_labels, test, jnp.array([0, 1, 2]), num_classes=3,
                            bank_mask=jnp.array([True, True, True, False]),
                            test_mask=jnp.array([True, False, True]))
  assert out["top1"] == 0.5


# ----------------------------------------------------------------------------- the method


def tiny_config():
  config = config_lib.load_config(f"{REPO}/configs/paws.py:smoke")
  config.data.image_size = 16
  config.model.hidden_size, config.model.depth, config.model.num_heads = 32, 1, 2
  m = config.method
  m.global_view.size, m.local_view.size = 16, 8
  for view in (m.global_view, m.local_view):
    view.jitter_prob = view.grayscale_prob = 0.0
  m.hidden_dim, m.output_dim, m.pred_head, m.support_views = 32, 16, True, 2
  config.data.streams.support.classes, config.data.streams.support.per_class = 4, 2
  return config


def test_one_and_eight_devices_give_the_same_loss():
  config = tiny_config()
  method = build_method(config)
  rng = np.random.default_rng(0)
  batch = {"unlabeled": {"image": rng.integers(0, 256, (8, 16, 16, 3), np.uint8),
                         "label": np.full((8,), -1, np.int32)},
           "support": {"image": rng.integers(0, 256, (8, 16, 16, 3), np.uint8),
                       "label": np.array([5, 2, 7, 0] * 2, np.int32)}}
  params, state = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  loss_fn = jax.jit(method.loss)
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh = parallel.make_mesh(config.mesh, devices)
    sharded = parallel.host_to_global(batch, mesh)
    loss, (metrics, new_state) = loss_fn(params, state, sharded, jax.random.PRNGKey(1),
                                         jnp.asarray(0))
    results.append((float(loss), float(metrics["paws_ce"]), new_state))
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(results[0][:2], results[1][:2], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               results[0][2], results[1][2])
  assert np.isfinite(results[0][0])


def test_heads_normalise_each_resolution_group_with_its_own_statistics():
  """suncet resnet.py runs backbone, `fc` and `pred` once per resolution group: in training,
  the global group's h and z do not depend on the local views; `pred` opens with a BatchNorm
  (suncet `pred_head['bn1']`), so z is unchanged when each feature of h is scaled by its own
  factor (which a Linear -> BN stack alone would not undo)."""
  method = build_method(tiny_config())
  network = method.network
  rng = np.random.default_rng(3)
  global_views = jnp.asarray(rng.normal(size=(6, 16, 16, 3)), jnp.float32)
  local_a, local_b = (jnp.asarray(rng.normal(size=(6, 8, 8, 3)) * scale, jnp.float32)
                      for scale in (1.0, 5.0))
  variables = network.init(jax.random.PRNGKey(0), [global_views, local_a], train=False)
  assert "input_batch_norm" in variables["params"]["predictor"]

  def run(groups):
    (h, z), _ = network.apply(variables, groups, train=True, mutable=["batch_stats"])
    return np.asarray(h[:6]), np.asarray(z[:6])

  (h_a, z_a), (h_b, z_b) = run([global_views, local_a]), run([global_views, local_b])
  np.testing.assert_allclose(h_a, h_b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(z_a, z_b, rtol=1e-5, atol=1e-6)
  predictor_variables = {k: v["predictor"] for k, v in variables.items()}
  z = network.predictor.apply(predictor_variables, jnp.asarray(h_a), train=True,
                              mutable=["batch_stats"])[0]
  per_feature = np.linspace(0.5, 4.0, h_a.shape[1])
  z_scaled = network.predictor.apply(predictor_variables, jnp.asarray(h_a * per_feature),
                                     train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(z, z_scaled, atol=1e-3)  # BN's epsilon: not exactly invariant.


def test_missing_streams_are_a_clear_error():
  config = tiny_config()
  config.data.streams = {}
  with pytest.raises(ValueError, match="PAWS reads two streams"):
    build_method(config).init(jax.random.PRNGKey(0), {})


def test_smoke_run_lowers_its_loss_and_beats_chance(tmp_path):
  config = config_lib.load_config(f"{REPO}/configs/paws.py:smoke")
  # One device, as every method's smoke test: the sharded step's equality is tested above.
  train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  records = runs.read_metrics(tmp_path)
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  final = [r for r in records if "eval/softnn_top1" in r][-1]
  # 10 classes: chance is 0.1, for the soft-NN over the 100 labelled images and for k-NN.
  assert final["eval/softnn_top1"] > 0.2 and final["eval/knn_top1"] > 0.3, final
