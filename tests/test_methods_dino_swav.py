"""DINO and SwAV as methods: state updates, freezes, queue, sharding, and a smoke run each.

The losses themselves are checked against numpy in test_losses_distillation.py; here the
method-level pieces around them: crop layout and pairing, centre and teacher updates, optimizer
freezes (torch's "grad is None" semantics), prototype normalisation, the SwAV queue, 1 device
vs 8, and learning through the one loop.
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from ssl_jax import checkpoint, config_lib, optim, runs, train, trainer, viz
from ssl_jax.data import sources
from ssl_jax.losses import distillation
from ssl_jax.methods import build_method, swav
from ssl_jax.models import heads

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH = 8


def tiny_config(name, **overrides):
  """The smoke preset shrunk further: 16 px global / 8 px local crops, a 1-block ViT.

  The crops keep their sizes, scales and flips but drop the photometric ops, which only cost
  compile time here; the full recipes run in the smoke runs below (and test_augment.py).
  """
  config = config_lib.load_config(f"{REPO}/configs/{name}.py:smoke")
  config.batch_size = BATCH
  config.data.image_size = 16
  config.model.hidden_size, config.model.depth, config.model.num_heads = 32, 1, 2
  m = config.method
  if name == "dino":
    views = (m.global_view_1, m.global_view_2, m.local_view)
    m.global_view_1.size = m.global_view_2.size = 16
    m.local_view.size = 8
    m.local_crops_number = 2
    m.out_dim, m.hidden_dim, m.bottleneck_dim = 64, 32, 16
    config.optim.groups.last_layer.freeze_epochs = 1.0
  else:
    views = (m.global_view, m.local_view)
    m.global_view.size, m.local_view.size = 16, 8
    m.local_crops_number = 2
    m.hidden_mlp, m.feat_dim, m.nmb_prototypes = 32, 16, 24
  for view in views:
    view.jitter_prob = view.grayscale_prob = view.blur_prob = view.solarize_prob = 0.0
  config.lock()
  config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
  return config


def random_batch(seed=0, size=16):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, (BATCH,), dtype=np.int32)}


def _softmax(x, axis=-1):
  x = x - x.max(axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis, keepdims=True)


# ------------------------------------------------------------------------------------- DINO


@pytest.fixture(scope="module")
def dino_setup():
  method = build_method(tiny_config("dino"), total_steps=20, steps_per_epoch=5)
  batch = jax.tree.map(jnp.asarray, random_batch())
  params, state = method.init(jax.random.PRNGKey(0), batch)
  # A non-zero centre and a teacher that differs from the student, as mid-run.
  state["center"] = jax.random.normal(jax.random.PRNGKey(3), state["center"].shape) * 0.1
  state["teacher"] = jax.tree.map(
      lambda p: p + 0.01 * jax.random.normal(jax.random.PRNGKey(4), p.shape), state["teacher"])
  rng, step = jax.random.PRNGKey(5), jnp.asarray(12)

  def loss_and_grads(params, state):
    return jax.value_and_grad(method.loss, argnums=(0, 1), has_aux=True)(
        params, state, batch, rng, step)

  (loss, (metrics, new_state)), (param_grads, state_grads) = jax.jit(loss_and_grads)(
      params, state)
  return dict(method=method, batch=batch, params=params, state=state, rng=rng, step=step,
              loss=loss, metrics=metrics, new_state=new_state, param_grads=param_grads,
              state_grads=state_grads)


def test_dino_loss_pairs_every_teacher_crop_with_every_other_student_crop(dino_setup):
  """The method's loss equals dino's double loop over crops computed one crop at a time."""
  s = dino_setup
  method = s["method"]
  view_rng, _ = jax.random.split(s["rng"])
  crops = jax.jit(method.make_crops)(view_rng, s["batch"]["image"])
  assert [c.shape for c in crops] == [(BATCH, 16, 16, 3), (BATCH, 16, 16, 3),
                                      (2 * BATCH, 8, 8, 3)]
  per_crop = [crops[0], crops[1], crops[2][:BATCH], crops[2][BATCH:]]

  @jax.jit
  def forward(params, images):
    return method.student.apply({"params": params}, [images], train=False)

  student = np.stack([np.asarray(forward(s["params"], c), np.float64) for c in per_crop])
  teacher = np.stack([np.asarray(forward(s["state"]["teacher"], c), np.float64)
                      for c in per_crop[:2]])
  epoch = 12 // 5
  temperature = 0.04  # The smoke preset: no temperature warm-up.
  assert float(s["metrics"]["teacher_temperature"]) == pytest.approx(temperature)
  teacher_probs = _softmax((teacher - np.asarray(s["state"]["center"])) / temperature)
  total, terms = 0.0, 0
  for t in range(2):
    for v in range(4):
      if v == t:
        continue
      log_student = np.log(_softmax(student[v] / 0.1))
      total += np.mean(-np.sum(teacher_probs[t] * log_student, axis=-1))
      terms += 1
  assert terms == 6 and epoch == 2
  np.testing.assert_allclose(float(s["loss"]), total / terms, rtol=2e-4)

  # The centre: 0.9 * old + 0.1 * mean over both global crops and the batch of the teacher.
  expected_center = (0.9 * np.asarray(s["state"]["center"])
                     + 0.1 * teacher.reshape(-1, teacher.shape[-1]).mean(0))
  np.testing.assert_allclose(s["new_state"]["center"], expected_center, rtol=1e-4, atol=1e-6)
  # The teacher is only changed by update_state.
  jax.tree.map(np.testing.assert_array_equal, s["new_state"]["teacher"], s["state"]["teacher"])


def test_dino_gradients_reach_the_student_only(dino_setup):
  s = dino_setup
  for leaf in jax.tree.leaves(s["state_grads"]):
    np.testing.assert_array_equal(leaf, 0.0)
  norms = jax.tree.map(lambda g: float(jnp.linalg.norm(g)), s["param_grads"])
  assert norms["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"] > 0
  assert norms["head"]["last_layer"]["direction"] > 0


def test_dino_teacher_is_the_scheduled_ema_of_the_student(dino_setup):
  s = dino_setup
  method = s["method"]  # total_steps=20
  base = method.config.method.momentum_teacher
  student = jax.tree.map(lambda p: p + 1.0, s["params"])
  for step in (0, 7, 20):
    new_state = method.update_state(student, s["state"], jnp.asarray(step))
    momentum = 1 - (1 - base) * (np.cos(np.pi * step / 20) + 1) / 2
    expected = jax.tree.map(lambda t, p: momentum * np.asarray(t) + (1 - momentum) * np.asarray(p),
                            s["state"]["teacher"], student)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 new_state["teacher"], expected)
    np.testing.assert_array_equal(new_state["center"], s["state"]["center"])
  assert float(method.teacher_momentum(jnp.asarray(20))) == pytest.approx(1.0)


def test_dino_teacher_temperature_warms_up_per_epoch():
  config = tiny_config("dino", **{"method.teacher_temp": 0.07,
                                  "method.warmup_teacher_temp_epochs": 4})
  method = build_method(config, total_steps=100, steps_per_epoch=10)
  # np.linspace(0.04, 0.07, 4) indexed by the integer epoch, then 0.07.
  expected = {0: 0.04, 9: 0.04, 10: 0.05, 25: 0.06, 30: 0.07, 39: 0.07, 40: 0.07, 99: 0.07}
  for step, value in expected.items():
    assert float(method.teacher_temperature(jnp.asarray(step))) == pytest.approx(value), step


def test_dino_optimizer_freezes_last_layer_then_starts_adamw_from_its_first_step():
  params = {"encoder": {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.full((2,), 0.5)},
            "head": {"last_layer": {"direction": jnp.full((2, 3), 0.5)}}}
  # configs/dino.py's optimizer with schedules easy to write down: lr 0.1 (s + 1) (a warm-up
  # from 0.1 to 1.1 over 10 steps), weight decay 0.01 -> 0.03 along a cosine over 20 steps.
  config = config_lib.load_config(f"{REPO}/configs/dino.py:smoke")
  config.optim.update(dict(lr=1.1, lr_scaling="none", warmup_steps=10, warmup_start_lr=0.1,
                           warmup_linspace=False, weight_decay=0.01, weight_decay_end=0.03,
                           clip_per_tensor=100.0))
  config.optim.groups.last_layer.update(dict(freeze_epochs=0.0, freeze_steps=2))
  lr = lambda count: 0.1 * (count + 1.0)
  wd = lambda count: 0.03 - 0.01 * (1 + math.cos(math.pi * count / 20))
  tx, _ = optim.build_optimizer(config, params, total_steps=20, steps_per_epoch=1)
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.3), params)
  update = jax.jit(tx.update)
  history = []
  for _ in range(3):
    updates, opt_state = update(grads, opt_state, params)
    history.append(jax.tree.map(np.asarray, updates))
    params = optax.apply_updates(params, updates)

  for step in (0, 1):  # Frozen: nothing moves, not even by weight decay.
    np.testing.assert_array_equal(history[step]["head"]["last_layer"]["direction"], 0.0)
    assert np.all(history[step]["encoder"]["kernel"] != 0)
  # Step 2: the last layer's first AdamW step (m_hat = g, v_hat = g^2 after bias correction),
  # with the run's lr and weight decay at global step 2, on its unchanged weights.
  expected = -lr(2) * (0.3 / (0.3 + 1e-8) + wd(2) * 0.5)
  np.testing.assert_allclose(history[2]["head"]["last_layer"]["direction"], expected, rtol=2e-5)
  # Biases (rank 1) get no weight decay; at step 0 every other tensor does.
  np.testing.assert_allclose(history[0]["encoder"]["bias"], -lr(0) * 1.0, rtol=2e-5)
  np.testing.assert_allclose(history[0]["encoder"]["kernel"], -lr(0) * (1.0 + wd(0) * 0.5),
                             rtol=2e-5)


def test_dino_clips_each_tensor_on_its_own():
  tx = optim.clip_each_by_norm(3.0)
  grads = {"big": jnp.full((4,), 5.0), "small": jnp.full((4,), 0.5)}
  clipped, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(np.linalg.norm(clipped["big"]), 3.0 * 10 / (10 + 1e-6), rtol=1e-6)
  np.testing.assert_array_equal(clipped["small"], grads["small"])


def test_dino_method_optimizer_freezes_exactly_the_last_layer(dino_setup):
  s = dino_setup
  method = s["method"]  # freeze_last_layer = 1 epoch = 5 steps
  config = config_lib.from_json(config_lib.to_json(method.config))
  config.optim.schedule, config.optim.warmup_steps = "constant", 0  # A non-zero lr at step 0.
  tx, _ = optim.build_optimizer(config, s["params"], total_steps=20, steps_per_epoch=5)
  updates, _ = jax.jit(tx.update)(s["param_grads"], tx.init(s["params"]), s["params"])
  norms = jax.tree_util.tree_flatten_with_path(
      jax.tree.map(lambda u: float(jnp.abs(u).max()), updates))[0]
  frozen = {jax.tree_util.keystr(path) for path, value in norms if value == 0.0}
  assert frozen == {"['head']['last_layer']['direction']"}


def test_dino_visualize_returns_the_attention_grid(dino_setup):
  s = dino_setup
  images = jnp.asarray(random_batch(1)["image"][:2])
  grids = jax.jit(s["method"].visualize)(s["params"], s["state"], images, jax.random.PRNGKey(0))
  # 2 images of 16 px; columns: image, 2 heads, overlay.
  assert grids["attention"].shape == (2 * 16, 4 * 16, 3)
  assert 0.0 <= float(grids["attention"].min()) <= float(grids["attention"].max()) <= 1.0


# ------------------------------------------------------------------------------------- SwAV


def test_swav_larc_step_matches_the_formula():
  params = {"w": jnp.asarray([3.0, 4.0]), "zero": jnp.zeros((2,))}
  grads = {"w": jnp.asarray([0.6, 0.8]), "zero": jnp.asarray([1.0, 1.0])}
  tx = optim.scale_by_larc(trust_coefficient=0.001, weight_decay=0.1,
                          adapt=lambda path, param: True)
  scaled, _ = tx.update(grads, tx.init(params), params)
  # ||p|| = 5, ||g|| = 1: ratio = 0.001 * 5 / (1 + 0.5 + 1e-8).
  ratio = 0.005 / 1.5
  np.testing.assert_allclose(scaled["w"], (np.array([0.6, 0.8]) + 0.1 * np.array([3, 4])) * ratio,
                             rtol=1e-6)
  np.testing.assert_array_equal(scaled["zero"], grads["zero"])  # ||p|| = 0: left as is


def test_swav_prototypes_frozen_for_the_first_epoch_and_kept_on_the_sphere():
  config = tiny_config("swav", **{"optim.name": "larc_sgd", "optim.lr": 0.5,
                                  "optim.lr_scaling": "none", "optim.schedule": "constant",
                                  "optim.warmup_steps": 0})
  params = {"encoder": {"kernel": jnp.ones((4, 3))},
            "prototypes": heads.normalize_prototypes(
                {"kernel": jax.random.normal(jax.random.PRNGKey(0), (3, 5))})}
  tx, _ = optim.build_optimizer(config, params, total_steps=10, steps_per_epoch=3)
  opt_state = tx.init(params)
  update = jax.jit(tx.update)
  start = params
  for step in range(5):
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(step), p.shape), params)
    updates, opt_state = update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if step < 3:  # freeze_epochs = 1 epoch = 3 steps; renormalising is a no-op.
      np.testing.assert_allclose(params["prototypes"]["kernel"], start["prototypes"]["kernel"],
                                 rtol=1e-6, atol=1e-7)
    assert not np.allclose(params["encoder"]["kernel"], start["encoder"]["kernel"])
    np.testing.assert_allclose(np.linalg.norm(params["prototypes"]["kernel"], axis=0), 1.0,
                               rtol=1e-5)
  assert not np.allclose(params["prototypes"]["kernel"], start["prototypes"]["kernel"])


def test_swav_straight_through_normalisation_keeps_the_plain_gradient():
  kernel = jax.random.normal(jax.random.PRNGKey(0), (3, 4)) * 3.0
  target = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
  f = lambda k: jnp.sum(k * target) ** 2
  value = swav.straight_through_normalized({"kernel": kernel})["kernel"]
  normalized = kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True)
  np.testing.assert_allclose(value, normalized, rtol=1e-6)
  grad = jax.grad(lambda k: f(swav.straight_through_normalized({"kernel": k})["kernel"]))(kernel)
  np.testing.assert_allclose(grad, jax.grad(f)(normalized), rtol=1e-5)


def test_swav_queue_fills_fifo_from_its_start_epoch_and_is_used_once_full():
  # Queue of 2 batches, started at epoch 1 (= step 1 with one step per epoch).
  config = tiny_config("swav", **{"method.queue_length": 2 * BATCH + 3,
                                  "method.epoch_queue_starts": 1})
  method = build_method(config, total_steps=10, steps_per_epoch=1)
  assert method.queue_length == 2 * BATCH  # cut to a multiple of the batch, as swav
  batch = jax.tree.map(jnp.asarray, random_batch())
  params, state = method.init(jax.random.PRNGKey(0), batch)
  loss_fn = jax.jit(method.loss)
  forward = jax.jit(method.forward)

  def assigned_embeddings(state, rng):
    view_rng, model_rng = jax.random.split(rng)
    crops = method.make_crops(view_rng, batch["image"])
    embeddings, scores, _ = forward(params, state, crops, model_rng)
    return np.asarray(embeddings), scores

  history = []
  for step in range(4):
    rng = jax.random.PRNGKey(10 + step)
    loss, (metrics, new_state) = loss_fn(params, state, batch, rng, jnp.asarray(step))
    history.append((state, rng, float(loss), float(metrics["queue_in_use"]), new_state))
    state = new_state

  queues = [q for q in history[0][0]["queue"]]
  assert len(queues) == 2  # one per crop in crops_for_assign
  # Step 0 is before the queue's start epoch: nothing enqueued, nothing used.
  assert history[0][3] == 0.0
  for q in history[0][4]["queue"]:
    assert int(q.num_filled) == 0 and not np.any(np.asarray(q.entries))
  # Steps 1 and 2 enqueue, oldest first; the queue is full only after step 2.
  emb1, _ = assigned_embeddings(history[1][0], history[1][1])
  emb2, _ = assigned_embeddings(history[2][0], history[2][1])
  for i, crop in enumerate((0, 1)):
    entries = np.asarray(history[2][4]["queue"][i].entries)
    np.testing.assert_allclose(entries[:BATCH], emb1[crop], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entries[BATCH:], emb2[crop], rtol=1e-5, atol=1e-6)
  assert history[1][3] == 0.0 and history[2][3] == 0.0 and history[3][3] == 1.0
  # Step 3 uses the full queue: its loss is swav_loss with the queue scored by the prototypes.
  state3, rng3 = history[3][0], history[3][1]
  _, scores3 = assigned_embeddings(state3, rng3)
  prototypes = np.asarray(params["prototypes"]["kernel"])
  queue_scores = jnp.stack([q.entries @ prototypes for q in state3["queue"]])
  with_queue = distillation.swav_loss(scores3, queue_scores=queue_scores)
  without_queue = distillation.swav_loss(scores3)
  np.testing.assert_allclose(history[3][2], float(with_queue), rtol=1e-5)
  assert abs(float(with_queue) - float(without_queue)) > 1e-6
  # And step 3 overwrote the oldest batch (step 1's) with its own embeddings.
  emb3, _ = assigned_embeddings(state3, rng3)
  entries = np.asarray(history[3][4]["queue"][0].entries)
  np.testing.assert_allclose(entries[:BATCH], emb3[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(entries[BATCH:], emb2[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- 1 device vs 8 devices


def _run_steps(config, devices, batches):
  setup = trainer.build(config_lib.from_json(config_lib.to_json(config)), devices=devices,
                        total_steps=10, steps_per_epoch=1)
  state = setup.init_state()
  for batch in batches:
    state, _ = setup.step(state, setup.global_batch(batch))
  return jax.device_get(state["method_state"])


@pytest.mark.parametrize("name", ["dino", "swav"])
def test_centre_and_queue_identical_on_one_and_eight_devices(name):
  # SwAV: a one-batch queue, filled by step 1 and used (then refilled) by step 2.
  overrides = ({"method.queue_length": BATCH, "method.epoch_queue_starts": 0}
               if name == "swav" else {})
  config = tiny_config(name, **overrides)
  batches = [random_batch(seed) for seed in range(2)]
  single = _run_steps(config, jax.devices()[:1], batches)
  sharded = _run_steps(config, jax.devices(), batches)
  if name == "dino":
    assert np.abs(single["center"]).max() > 0
    np.testing.assert_allclose(sharded["center"], single["center"], rtol=1e-4, atol=1e-6)
    # AdamW turns near-zero gradients into O(lr) steps whose sign follows rounding: compare
    # the teacher at the scale of its weights, not of those steps.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 sharded["teacher"], single["teacher"])
  else:
    for a, b in zip(sharded["queue"], single["queue"]):
      assert int(a.num_filled) == int(b.num_filled) == BATCH
      assert int(a.pointer) == int(b.pointer)
      np.testing.assert_allclose(a.entries, b.entries, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- smoke, one each


def _restored_state(workdir):
  """The last checkpoint's whole train state (params and method state), as saved."""
  checkpointer = checkpoint.Checkpointer(str(workdir))
  path = checkpointer.directory / str(checkpointer.latest_step()) / "state"
  return ocp.StandardCheckpointer().restore(path)


def _feature_std(method, params, state, images):
  """Mean over dimensions of the batch std of L2-normalised features (0 when collapsed)."""
  features = np.array(jax.jit(method.features)(params, state, images))
  features /= np.linalg.norm(features, axis=1, keepdims=True)
  return float(features.std(axis=0).mean())


def _smoke(name, tmp_path):
  config = config_lib.load_config(f"{REPO}/configs/{name}.py:smoke")
  # One device, as the other methods' smoke runs: the sharded step's equality with it is
  # test_centre_and_queue_identical_on_one_and_eight_devices (8 virtual devices on 2 cores
  # made these runs 2-3x slower).
  train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  records = runs.read_metrics(tmp_path)
  losses = np.array([r["train/loss"] for r in records if "train/loss" in r])
  knn = [r["eval/knn_top1"] for r in records if "eval/knn_top1" in r]
  # Collapse guard on what the evaluators see: L2-normalised features of test images, after
  # training and at a random initialisation. A ViT's CLS features share a large common
  # direction, so their std is far below 1/sqrt(dim) even at init; collapse would drive it
  # towards 0.
  source = sources.get_source(config.data.source, "test", image_size=config.data.image_size)
  images = np.stack([source[i]["image"] for i in range(128)])
  method = build_method(config)
  state = _restored_state(tmp_path)
  trained_std = _feature_std(method, state["params"], state["method_state"], images)
  init_params, init_state = method.init(jax.random.PRNGKey(0), {"image": images})
  init_std = _feature_std(method, init_params, init_state, images)
  return losses, knn, trained_std, init_std, records


def test_dino_smoke_run_learns_without_collapse(tmp_path):
  losses, knn, feature_std, init_std, records = _smoke("dino", tmp_path)
  # DINO's loss need not fall early (it rises while the centre catches up): finite, changing.
  assert np.all(np.isfinite(losses)) and np.ptp(losses) > 0.05, losses
  assert feature_std > 1e-3 and feature_std > 0.5 * init_std, (feature_std, init_std)
  entropy = [r["train/collapse_teacher_entropy"] for r in records
             if "train/collapse_teacher_entropy" in r]
  assert 0.0 < entropy[-1] < 1.0, entropy  # H / log K: not one-hot (0), not uniform (1)
  assert knn and knn[-1] > 0.3, knn  # 10 classes: chance is 0.1.
  assert list((tmp_path / "images").glob("attention_*.png"))  # written at eval time

  # `python -m ssl_jax.viz attention`, on a folder of images at a larger size than trained.
  folder = tmp_path / "pictures"
  folder.mkdir()
  for i in range(3):
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 50, 3), np.uint8)).save(
        folder / f"{i}.png")
  viz.main(["attention", "--workdir", str(tmp_path), "--images", str(folder),
            "--image_size", "48"])
  grid = np.asarray(Image.open(tmp_path / "attention" / "attention_60.png"))
  # 3 rows of 48 px; image + 4 heads + overlay = 6 columns (upscaled by an integer factor).
  assert grid.shape[1] * 3 == grid.shape[0] * 6
  assert len(list((tmp_path / "attention").glob("attention_60_*.png"))) == 3


def test_swav_smoke_run_learns_without_collapse(tmp_path):
  losses, knn, feature_std, init_std, records = _smoke("swav", tmp_path)
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  assert feature_std > 1e-3 and feature_std > 0.5 * init_std, (feature_std, init_std)
  # The projector's unit embeddings: std x sqrt(feat_dim) about 1 when spread, 0 collapsed.
  embedding_std = [r["train/collapse_std"] for r in records if "train/collapse_std" in r]
  assert embedding_std[-1] > 0.3, embedding_std
  assert knn and knn[-1] > 0.3, knn


def test_swav_refuses_fewer_prototypes_than_embedding_dims():
  config = tiny_config("swav")
  config.unlock()
  config.method.nmb_prototypes = config.method.feat_dim
  with pytest.raises(ValueError, match="null space"):
    build_method(config).init(jax.random.PRNGKey(0), random_batch())
