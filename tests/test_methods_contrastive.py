"""SimCLR, MoCo v2/v3, BYOL and SimSiam as Methods: pairing, queue, EMA, gradients, sharding.

Unit checks use a one-block 32-wide ViT on 16x16 random images and DETERMINISTIC views (crop
scale and ratio 1, no flip, no colour: the view is the whole image, equal to `eval_inputs`), so
the expected values are computed from the networks and the pure losses alone, whatever the
method does with its random keys. One smoke run per method through the real loop checks
learning and the collapse guard.
"""

import functools
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, optim, runs, train, trainer
from ssl_jax.data import augment, sources
from ssl_jax.losses import contrastive, distillation
from ssl_jax.methods import build_method, ema, method_class, views

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("simclr", "moco_v2", "moco_v3", "byol", "simsiam")
TEACHER_METHODS = ("moco_v2", "moco_v3", "byol")
SIZE = 16
RNG = jax.random.PRNGKey(0)


def _whole_image_view(**overrides):
  return augment.view_config(size=SIZE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                             flip_prob=0.0, **overrides)


def tiny_config(name, *, batch_size=8, deterministic_views=True):
  config = config_lib.load_config(f"{REPO}/configs/{name}.py:smoke")
  config.batch_size = batch_size
  config.model.hidden_size, config.model.depth, config.model.num_heads = 32, 1, 2
  method = config.method
  method.proj_hidden_dim, method.proj_dim = 32, 16
  if "pred_hidden_dim" in method:
    method.pred_hidden_dim = 32
  if "queue_size" in method:
    method.queue_size = 24  # Not a multiple of the batch: the ring buffer wraps.
  make_view = _whole_image_view if deterministic_views else (
      lambda **kw: augment.view_config(size=SIZE, **kw))
  if "view" in method:
    method.view = make_view()
  else:
    method.view1, method.view2 = make_view(), make_view(solarize_prob=0.0)
  return config


def random_batch(batch_size=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch_size, SIZE, SIZE, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, (batch_size,), dtype=np.int32)}


def _variables(params, batch_stats):
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


@functools.lru_cache(maxsize=None)
def _initial_variables(name):
  """(params, state) of `tiny_config(name)`, initialised once per module (jit compiles)."""
  method = build_method(tiny_config(name))
  return jax.jit(method.init)(RNG, random_batch())


def initial_variables(name):
  params, state = _initial_variables(name)
  # Fresh containers: tests modify the state dict (e.g. the queue pointer).
  return params, {**state}


# ----------------------------------------------------------------------------- view recipes


def test_view_recipes_carry_the_papers_numbers():
  simclr = views.simclr_view(224)
  assert (simclr.brightness, simclr.contrast, simclr.saturation) == (0.8, 0.8, 0.8)
  assert math.isclose(simclr.hue, 0.2) and simclr.jitter_prob == 0.8
  assert simclr.grayscale_prob == 0.2 and simclr.blur_prob == 0.5
  assert tuple(simclr.crop_scale) == (0.08, 1.0) and simclr.solarize_prob == 0.0
  cifar = views.simclr_view(32, strength=0.5, blur_prob=0.0)
  assert (cifar.brightness, cifar.hue, cifar.blur_prob) == (0.4, 0.1, 0.0)

  moco = views.moco_v2_view(224)
  assert (moco.brightness, moco.contrast, moco.saturation, moco.hue) == (0.4, 0.4, 0.4, 0.1)
  assert tuple(moco.crop_scale) == (0.2, 1.0) and moco.blur_prob == 0.5

  view1, view2 = views.byol_views(224)
  for view in (view1, view2):
    assert (view.brightness, view.contrast, view.saturation, view.hue) == (0.4, 0.4, 0.2, 0.1)
    assert view.jitter_prob == 0.8 and view.grayscale_prob == 0.2 and view.size == 224
  assert (view1.blur_prob, view2.blur_prob) == (1.0, 0.1)
  assert (view1.solarize_prob, view2.solarize_prob) == (0.0, 0.2)
  assert [v.to_dict() for v in views.moco_v3_views(224)] == [view1.to_dict(), view2.to_dict()]

  with pytest.raises(ValueError, match="strength"):
    views.simclr_view(32, strength=3.0)
  with pytest.raises(ValueError, match="one value per view"):
    views.byol_views(32, blur_probs=(1.0,))


def test_two_views_draw_each_view_with_its_own_key():
  same = augment.view_config(size=SIZE)
  other = augment.view_config(size=SIZE, solarize_prob=1.0)
  images = random_batch(4)["image"]

  @jax.jit
  def views_and_references(rng):
    keys = jax.random.split(rng)
    return (views.two_views(rng, images, same, same), views.two_views(rng, images, same, other),
            augment.make_views(keys[1], images, same), augment.make_views(keys[1], images, other))

  (a1, a2), (b1, b2), same2, other2 = views_and_references(RNG)
  np.testing.assert_allclose(a2, same2, atol=1e-6)   # One recipe: vmapped, same keys.
  np.testing.assert_allclose(b2, other2, atol=1e-6)
  np.testing.assert_allclose(a1, b1, atol=1e-6)
  assert not np.allclose(a1, a2)


def test_multi_crop_views_static_shapes_one_compile_and_per_recipe_keys():
  global_1 = augment.view_config(size=16, crop_scale=(0.4, 1.0))
  global_2 = augment.view_config(size=16, crop_scale=(0.4, 1.0), flip_prob=0.0)
  local_view = augment.view_config(size=8, crop_scale=(0.05, 0.4))
  recipes = [(global_1, 1), (global_2, 1), (local_view, 3)]
  traces = []

  @jax.jit
  def crops_and_references(rng, images):
    traces.append(1)
    crops = views.multi_crop_views(rng, images, recipes)
    # Recipe i uses split(rng, 3)[i]; its `count` crops are one draw over the tiled batch.
    keys = jax.random.split(rng, 3)
    references = (augment.make_views(keys[1], images, global_2),
                  augment.make_views(keys[2], jnp.tile(images, (3, 1, 1, 1)), local_view))
    return crops, references

  images = random_batch(4)["image"]
  crops, (second_global, locals_) = crops_and_references(RNG, images)
  assert [c.shape for c in crops] == [(4, 16, 16, 3)] * 2 + [(12, 8, 8, 3)]
  np.testing.assert_allclose(crops[1], second_global, atol=1e-5)
  np.testing.assert_allclose(crops[2], locals_, atol=1e-5)
  # Crop-major: rows 4-7 are the second local crop of images 0-3, a distinct draw.
  assert not np.allclose(crops[2][:4], crops[2][4:8])
  # Another batch and key: the same program, no retrace (every size is static).
  crops_and_references(jax.random.PRNGKey(5), random_batch(4, seed=1)["image"])
  assert len(traces) == 1
  # One backbone call per resolution: the two globals concatenate, the locals stay apart.
  groups = views.group_by_resolution(crops)
  assert [g.shape for g in groups] == [(8, 16, 16, 3), (12, 8, 8, 3)]
  np.testing.assert_array_equal(groups[0][4:], crops[1])

  with pytest.raises(ValueError, match="at least one"):
    views.multi_crop_views(RNG, images, [])
  with pytest.raises(ValueError, match="count >= 1"):
    views.multi_crop_views(RNG, images, [(global_1, 0)])


def test_encode_crop_groups_one_encoder_call_per_group_concatenated_in_order():
  class MeanPoolEncoder(nn.Module):  # Any resolution -> {'pooled': [B, 4]}, one param set.
    @nn.compact
    def __call__(self, images, *, train):
      del train
      return {"pooled": nn.Dense(4)(images.mean(axis=(1, 2)))}

  class Owner(nn.Module):
    encoder: nn.Module

    def __call__(self, crop_groups, *, train):
      return views.encode_crop_groups(self.encoder, crop_groups, train=train)

  rs = np.random.default_rng(0)
  groups = [jnp.asarray(rs.normal(size=(6, 16, 16, 3)), jnp.float32),
            jnp.asarray(rs.normal(size=(9, 8, 8, 3)), jnp.float32)]
  owner = Owner(encoder=MeanPoolEncoder())
  variables = owner.init(RNG, groups, train=False)
  assert list(variables["params"]) == ["encoder"]  # The owner's name: checkpoints still load.
  encoder_vars = {"params": variables["params"]["encoder"]}
  expected = np.concatenate([MeanPoolEncoder().apply(encoder_vars, g, train=False)["pooled"]
                             for g in groups])
  out = owner.apply(variables, groups, train=False)
  assert out.shape == (15, 4)
  np.testing.assert_array_equal(out, expected)  # Group 0's rows first, then group 1's.
  np.testing.assert_array_equal(owner.apply(variables, groups[1:], train=False), expected[6:])


# ----------------------------------------------------------------------------- EMA teacher


def test_ema_teacher_schedules_and_update_formula():
  cosine = ema.EMATeacher(base_momentum=0.99, total_steps=100)
  for step in (0, 37, 100, 150):
    k = min(step, 100)
    expected = 1 - (1 - 0.99) * (math.cos(math.pi * k / 100) + 1) / 2
    np.testing.assert_allclose(cosine.momentum(step), expected, rtol=1e-6)
  next_step = ema.EMATeacher(base_momentum=0.99, total_steps=100, momentum_of_next_step=True)
  np.testing.assert_allclose(next_step.momentum(36), cosine.momentum(37), rtol=1e-6)
  constant = ema.EMATeacher(base_momentum=0.999, total_steps=100, schedule="constant")
  np.testing.assert_allclose(constant.momentum(55), 0.999, rtol=1e-7)

  student = {"encoder": {"w": jnp.arange(4.0)}, "projector": {"w": jnp.ones(2)},
             "predictor": {"w": jnp.full(3, 7.0)}}
  teacher = ema.EMATeacher.init(student, ("encoder", "projector"))
  assert set(teacher) == {"encoder", "projector"}
  assert teacher["encoder"]["w"] is not student["encoder"]["w"]  # Its own buffer.
  moved = {**student, "encoder": {"w": jnp.arange(4.0) + 10.0}}
  updated = cosine.update(teacher, moved, 37)
  m = float(cosine.momentum(37))
  np.testing.assert_allclose(updated["encoder"]["w"],
                             m * np.arange(4.0) + (1 - m) * (np.arange(4.0) + 10), rtol=1e-6)
  np.testing.assert_allclose(updated["projector"]["w"], np.ones(2))
  assert "predictor" not in updated

  with pytest.raises(ValueError, match="no \\['head'\\]"):
    ema.EMATeacher.init(student, ("head",))
  with pytest.raises(ValueError, match="schedule"):
    ema.EMATeacher(0.99, 10, schedule="linear")
  with pytest.raises(ValueError, match="momentum"):
    ema.EMATeacher(1.5, 10)


@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_update_state_blends_the_teacher_with_the_step_momentum(name):
  config = tiny_config(name)
  method = build_method(config, total_steps=50, steps_per_epoch=10)
  params, state = initial_variables(name)
  assert set(state["teacher"]["params"]) == {"encoder", "projector"}
  moved = jax.tree.map(lambda x: x + 1.0, params)
  step = 20
  new_state = jax.jit(method.update_state)(moved, state, jnp.asarray(step))
  if name == "moco_v2":
    m = config.method.momentum                                 # Constant.
  else:
    k = step + 1 if name == "moco_v3" else step                # MoCo v3: m of the next step.
    m = 1 - (1 - config.method.base_momentum) * (math.cos(math.pi * k / 50) + 1) / 2
  for part in ("encoder", "projector"):
    jax.tree.map(lambda new, old, student: np.testing.assert_allclose(
        new, m * old + (1 - m) * student, rtol=1e-5, atol=1e-7),
        new_state["teacher"]["params"][part], state["teacher"]["params"][part], moved[part])
  jax.tree.map(np.testing.assert_array_equal, new_state["batch_stats"], state["batch_stats"])


# ----------------------------------------------------------------------------- losses in place


def loss_and_grads(method, params, state, batch):
  """`method.loss`, with its gradients w.r.t. params, teacher params and queue entries."""

  def loss_of(params, teacher_params, queue_entries):
    state_in = {**state, "teacher": {**state["teacher"], "params": teacher_params}}
    if queue_entries is not None:
      state_in["queue"] = state["queue"].replace(entries=queue_entries)
    loss, (_, new_state) = method.loss(params, state_in, batch, RNG, jnp.asarray(0))
    return loss, new_state

  entries = state["queue"].entries if "queue" in state else None
  (loss, new_state), grads = jax.value_and_grad(loss_of, argnums=(0, 1, 2), has_aux=True)(
      params, state["teacher"]["params"], entries)
  return loss, new_state, grads


def assert_only_the_online_network_gets_gradients(params, grads):
  """Teacher params and queue live in State: the loss must not send them any gradient."""
  params_grad, teacher_grad, queue_grad = grads
  assert all(not np.any(g) for g in jax.tree.leaves(teacher_grad))
  assert all(not np.any(g) for g in jax.tree.leaves(queue_grad))
  assert optax.global_norm(params_grad["encoder"]) > 0
  if "predictor" in params:
    assert optax.global_norm(params_grad["predictor"]) > 0


def test_moco_v2_loss_uses_the_old_queue_then_enqueues_the_batch_keys():
  method = build_method(tiny_config("moco_v2"))
  batch = random_batch()
  params, state = initial_variables("moco_v2")
  # Start mid-queue (pointer 20 of 24) so the write wraps around.
  state["queue"] = state["queue"].replace(pointer=jnp.asarray(20, jnp.int32))
  temperature = method.config.method.temperature

  @jax.jit
  def run(params, state):
    loss, new_state, grads = loss_and_grads(method, params, state, batch)
    inputs = method.eval_inputs(batch["image"])
    queries = method.online_network.apply({"params": params}, inputs, train=True)["projections"]
    keys = method.teacher_network.apply({"params": state["teacher"]["params"]}, inputs,
                                        train=True)["projections"]
    return loss, new_state, grads, queries, keys

  loss, new_state, grads, queries, keys = run(params, state)
  old_entries = np.asarray(state["queue"].entries)
  np.testing.assert_allclose(
      loss, contrastive.moco_infonce_loss(queries, keys, old_entries, temperature), rtol=1e-5)
  # Had the keys been enqueued first, the loss would differ.
  assert not np.isclose(loss, contrastive.moco_infonce_loss(
      queries, keys, new_state["queue"].entries, temperature), rtol=1e-4)
  slots = (20 + np.arange(8)) % 24
  new_entries = np.asarray(new_state["queue"].entries)
  np.testing.assert_allclose(new_entries[slots], contrastive.l2_normalize(keys), atol=1e-6)
  untouched = np.setdiff1d(np.arange(24), slots)
  np.testing.assert_array_equal(new_entries[untouched], old_entries[untouched])
  assert int(new_state["queue"].pointer) == 4
  assert_only_the_online_network_gets_gradients(params, grads)


def test_simclr_loss_is_twice_nt_xent_over_one_2n_batch():
  method = build_method(tiny_config("simclr"))
  batch = random_batch()
  params, state = initial_variables("simclr")

  @jax.jit
  def run(params, state):
    loss, (metrics, new_state) = method.loss(params, state, batch, RNG, jnp.asarray(0))
    inputs = method.eval_inputs(batch["image"])
    out, _ = method.online_network.apply(
        _variables(params, state["batch_stats"]), jnp.concatenate([inputs, inputs]),
        train=True, mutable=["batch_stats"])
    z1, z2 = jnp.split(out["projections"], 2)
    return loss, metrics, new_state, contrastive.nt_xent_loss(z1, z2, 0.2)

  loss, metrics, new_state, expected = run(params, state)
  assert method.config.method.temperature == 0.2
  np.testing.assert_allclose(metrics["nt_xent"], expected, rtol=1e-5)
  np.testing.assert_allclose(loss, 2 * expected, rtol=1e-5)
  # BatchNorm running averages moved (the projector's BN saw a batch in training mode).
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), new_state["batch_stats"],
                         state["batch_stats"])
  assert any(jax.tree.leaves(changed))


@pytest.mark.parametrize("name", ("byol", "moco_v3"))
def test_asymmetric_losses_pair_each_prediction_with_the_other_views_target(name):
  # Two different deterministic views, the whole image and its solarization, so that swapping
  # the pairing would change the loss.
  config = tiny_config(name)
  config.method.view2 = _whole_image_view(solarize_prob=1.0)
  method = build_method(config)
  batch = random_batch()
  params, state = initial_variables(name)

  @jax.jit
  def run(params, state):
    loss, new_state, grads = loss_and_grads(method, params, state, batch)
    image1 = method.eval_inputs(batch["image"])
    unit = batch["image"].astype(jnp.float32) / 255.0
    image2 = augment.normalize(jnp.where(unit >= 0.5, 1 - unit, unit), config.method.view2.mean,
                               config.method.view2.std)
    online, targets = [], []
    online_bs, teacher_bs = state["batch_stats"], state["teacher"]["batch_stats"]
    for image in (image1, image2):  # Each view separately: per-view BN statistics.
      out, updates = method.online_network.apply(_variables(params, online_bs), image,
                                                 train=True, mutable=["batch_stats"])
      online_bs = updates["batch_stats"]
      online.append(out["predictions"])
      out, updates = method.teacher_network.apply(
          _variables(state["teacher"]["params"], teacher_bs), image, train=True,
          mutable=["batch_stats"])
      teacher_bs = updates["batch_stats"]
      targets.append(out["projections"])
    return loss, new_state, grads, online, targets, (online_bs, teacher_bs)

  loss, new_state, grads, (p1, p2), (t1, t2), (online_bs, teacher_bs) = run(params, state)
  if name == "byol":
    expected = distillation.byol_loss(p1, p2, t1, t2)
    swapped = distillation.byol_loss(p1, p2, t2, t1)
  else:
    expected = contrastive.moco_v3_loss(p1, p2, t1, t2, config.method.temperature)
    swapped = contrastive.moco_v3_loss(p1, p2, t2, t1, config.method.temperature)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert not np.isclose(loss, swapped, rtol=1e-3)
  # Both networks' BN averages went through the two views in order; the teacher keeps its own.
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  jax.tree.map(close, new_state["batch_stats"], online_bs)
  jax.tree.map(close, new_state["teacher"]["batch_stats"], teacher_bs)
  assert_only_the_online_network_gets_gradients(params, grads)


# ----------------------------------------------------------------------------- optimizers


def first_update(tx, params):
  """The optimizer's first update for all-ones gradients (jitted: one compile, not per op)."""
  return jax.jit(lambda p: tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)[0])(params)


def constant_lr_optimizer(config, params):
  """`config.optim` at a constant lr 1e-2 from step 0 (no warm-up), over 100 steps."""
  config = config_lib.from_json(config_lib.to_json(config))
  config.optim.lr, config.optim.lr_scaling, config.optim.schedule = 1e-2, "none", "constant"
  config.optim.warmup_steps = config.optim.warmup_epochs = 0
  return optim.build_optimizer(config, params, total_steps=100, steps_per_epoch=10)[0]


def test_moco_v3_freezes_the_random_patch_projection_in_the_optimizer():
  config = tiny_config("moco_v3")
  params, _ = initial_variables("moco_v3")
  updates = first_update(constant_lr_optimizer(config, params), params)
  assert all(not np.any(u) for u in jax.tree.leaves(updates["encoder"]["patch_embed"]))
  assert np.any(updates["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"])
  assert np.any(updates["predictor"]["linear_0"]["kernel"])

  config.optim.groups.patch_embed.frozen = False
  updates = first_update(constant_lr_optimizer(config, params), params)
  assert np.all(np.asarray(updates["encoder"]["patch_embed"]["kernel"]) != 0)

  config.optim.groups.patch_embed.frozen = True
  with pytest.raises(config_lib.ConfigError, match=r"\['patch_embed'\] match no parameter"):
    constant_lr_optimizer(config, {"encoder": {"stem": {"kernel": jnp.ones((3, 3))}},
                                   "projector": {}})


def test_simsiam_predictor_trains_at_the_constant_peak_learning_rate():
  config = tiny_config("simsiam")
  config.optim.name, config.optim.lr, config.optim.weight_decay = "sgd", 0.05, 1e-4
  config.optim.warmup_steps = 10
  params, _ = initial_variables("simsiam")
  tx, schedule = optim.build_optimizer(config, params, total_steps=100, steps_per_epoch=10)
  assert float(schedule(0)) == 0.0   # Warm-up starts at 0.
  updates = first_update(tx, params)
  peak = 0.05 * config.batch_size / 256
  kernel = params["predictor"]["linear_0"]["kernel"]
  # First SGD step: -lr * (g + wd * w) on decayed (matrix) params.
  np.testing.assert_allclose(updates["predictor"]["linear_0"]["kernel"],
                             -peak * (1.0 + 1e-4 * kernel), rtol=1e-5)
  assert all(not np.any(u) for u in jax.tree.leaves(updates["encoder"]))
  assert all(not np.any(u) for u in jax.tree.leaves(updates["projector"]))

  config.optim.groups.predictor.schedule = "cosine"    # The predictor warms up too.
  config.optim.groups.predictor.warmup_steps = 10
  tx, _ = optim.build_optimizer(config, params, total_steps=100, steps_per_epoch=10)
  updates = first_update(tx, params)
  assert all(not np.any(u) for u in jax.tree.leaves(updates["predictor"]))


def test_moco_v3_vit_small_has_the_papers_12_heads():
  """moco-v3 vits.py `vit_small`: 384 wide, 12 blocks, 12 heads (DeiT's ViT-S: 6)."""
  from ssl_jax.models import registry
  config = config_lib.load_config("configs/moco_v3.py:imagenet")
  encoder = registry.build_encoder(config.model)
  assert (encoder.hidden_size, encoder.depth, encoder.num_heads) == (384, 12, 12)


def test_config_errors_are_clear():
  config = tiny_config("moco_v2")
  config.method.queue_size = 4
  with pytest.raises(ValueError, match="queue_size=4 is smaller than batch_size=8"):
    build_method(config).init(RNG, random_batch())
  config = tiny_config("simclr")
  config.method.temperature = 0.0
  # Building the method refuses it (config_lib.check_method_values) ...
  with pytest.raises(config_lib.ConfigError, match=r"method.temperature must be > 0"):
    build_method(config)
  # ... and the loss, a pure function, refuses it on its own where a method skipped the build.
  method = method_class("simclr").from_config(config, total_steps=1, steps_per_epoch=1)
  params, state = initial_variables("simclr")
  with pytest.raises(ValueError, match="temperature must be > 0"):
    method.loss(params, state, random_batch(), RNG, 0)
  config = tiny_config("byol")
  del config.method["view1"]
  with pytest.raises(ValueError, match="needs `view`"):
    build_method(config).init(RNG, random_batch())


# ----------------------------------------------------------------------------- sharding


def _run_steps(config, devices, batches):
  setup = trainer.build(config, devices=devices, total_steps=10, steps_per_epoch=10)
  state = setup.init_state()
  losses = []
  for batch in batches:
    state, metrics = setup.step(state, setup.global_batch(batch))
    losses.append(float(metrics["train/loss"]))
  return losses, jax.device_get(state["method_state"])


def test_queue_and_teacher_are_identical_on_one_and_eight_devices():
  assert len(jax.devices()) == 8
  config = tiny_config("moco_v2", batch_size=16, deterministic_views=False)
  batches = [random_batch(16, seed=s) for s in range(2)]
  ref_losses, ref_state = _run_steps(config, jax.devices()[:1], batches)
  losses, state = _run_steps(config, jax.devices(), batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               state, ref_state)
  # Two global batches of 16 keys went into the 24-slot queue: the pointer wrapped to 8.
  assert int(state["queue"].pointer) == 32 % 24


# ----------------------------------------------------------------------------- learning


# One short run per method through the real loop (under a minute each on a 2-core machine).
@pytest.mark.parametrize("name", METHODS)
def test_smoke_run_learns_without_collapse(name, tmp_path):
  config = config_lib.load_config(f"{REPO}/configs/{name}.py:smoke")
  config.lock()
  config_lib.apply_overrides(config, [
      "total_steps=30", "log_every=10", "export_at_end=False", "visualize=False",
      "checkpoint_every=0"])
  result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  records = runs.read_metrics(tmp_path)
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  # From the second logging window on: the first spans the lr warm-up and, for MoCo v2, the
  # queue still holding its random initial keys, whose loss is lower than real negatives'.
  assert losses[-1] < losses[1], losses
  # Collapse guard. Projections: the batch std of L2-normalised outputs is about 1/sqrt(dim)
  # when they are spread over the sphere and 0 when collapsed (SimSiam Sec. 4.1); logged
  # times sqrt(dim).
  projection_std = [r["train/collapse_std"] for r in records if "train/collapse_std" in r]
  assert projection_std[-1] > 0.3, projection_std
  # Backbone features: a ViT's CLS features share a large common direction, so their std is
  # well under 1/sqrt(dim) even when informative (about 0.005-0.05 here); collapse is ~1e-6.
  params = ckpt_lib.Checkpointer(str(tmp_path)).restore_params(30)
  test_source = sources.get_source("digits", "test", image_size=32)
  images = np.stack([test_source[i]["image"] for i in range(128)])
  features = jax.jit(build_method(config).features)(params, {"batch_stats": {}}, images)
  feature_std = float(jnp.mean(jnp.std(contrastive.l2_normalize(features), axis=0)))
  assert feature_std > 1e-3, feature_std
  assert result["eval/knn_top1"] > 0.3, result  # 10 classes: chance is 0.1.
