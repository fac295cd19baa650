"""Optimizers from declarative parameter groups (ssl_jax/optim.py) and the step resolver.

* Every preset's optimizer updates every parameter exactly as the per-method optimizers it
  replaced did (tests/fixtures/make_optimizer_fixture.py recorded them, leaf by leaf, at steps
  around every warm-up end, freeze window and epoch boundary).
* The warm-up conventions against numpy transcriptions of the official schedules (DINO, SwAV,
  MAE, BYOL); DINO's and SwAV's presets now follow theirs (the one intended change).
* Bad groups are config errors.
"""
import gzip
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssl_jax import config_lib, optim, steps
from tests.fixtures import make_optimizer_fixture as fixture

REPO = pathlib.Path(__file__).resolve().parents[1]

# Method keys that became optimizer-group keys, as the fixture's overrides spell them now.
RENAMED_OVERRIDES = {
    "method.fix_predictor_lr=False": "optim.groups.predictor.schedule=cosine",
    "method.freeze_patch_embed=False": "optim.groups.patch_embed.frozen=False",
    "method.freeze_prototypes_epochs=0.5": "optim.groups.prototypes.freeze_epochs=0.5",
}
# The fixture holds the warm-up the DINO and SwAV presets had before: from 0, the peak at step W.
OLD_WARMUP = ["optim.warmup_linspace=False", "optim.warmup_start_lr=0.0"]


def _entries():
  with gzip.open(fixture.FIXTURE, "rt") as f:
    return json.load(f)["entries"]


ENTRIES = _entries()


def _recorded(entry):
  return json.dumps([entry[k] for k in ("shapes", "steps", "total_steps", "steps_per_epoch",
                                        "probe", "fingerprints")])


def _twins(entries):
  """{name: an earlier entry with the same recorded tree, steps and fingerprints}."""
  first, twins = {}, {}
  for entry in entries:
    twins[entry["name"]] = first.setdefault(_recorded(entry), entry)
  return {name: twin for name, twin in twins.items() if twin["name"] != name}


TWINS = _twins(ENTRIES)
# Coverage beyond the presets that costs seconds: every-k-steps is checked at k=3 on `smoke` too.
SLOW = {"perceptual_mae:cifar10 method.discriminator_update_every=2"}


def _config(entry):
  overrides = [RENAMED_OVERRIDES.get(o, o) for o in entry["overrides"]]
  if entry["config"] in ("dino", "swav"):
    overrides += OLD_WARMUP
  return fixture.load(entry["config"], entry["preset"], overrides, entry["probe"])


@pytest.mark.parametrize("entry", [
    pytest.param(e, id=e["name"], marks=[pytest.mark.slow] if e["name"] in SLOW else [])
    for e in ENTRIES])
def test_every_preset_updates_every_parameter_as_before(entry):
  config = _config(entry)
  twin = TWINS.get(entry["name"])
  if twin is not None and config.optim.to_dict() == _config(twin).optim.to_dict():
    # Same tree, steps, recorded updates and optimizer settings as an earlier preset
    # (mae:imagenet is ViT-B/16 already): the same optimizer, checked there.
    return
  params, grads, weights = fixture.synthetic_tree(entry["shapes"])
  tx, _ = optim.build_optimizer(config, params, total_steps=entry["total_steps"],
                                steps_per_epoch=entry["steps_per_epoch"])
  got = np.asarray(fixture.fingerprints(tx, params, grads, weights, entry["steps"]))
  want = np.asarray(entry["fingerprints"])
  paths = sorted(weights)
  for i, step in enumerate(entry["steps"]):
    scale = max(np.abs(want[i]).max(), 1e-30)
    bad = ~np.isclose(got[i], want[i], rtol=1e-5, atol=1e-6 * scale).all(axis=-1)
    assert not bad.any(), (f"step {step}: " + "; ".join(
        f"{paths[j]} got {got[i, j]} want {want[i, j]}" for j in np.flatnonzero(bad)[:5]))


# ------------------------------------------------------------------ schedules vs official codes


def dino_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                          start_warmup_value=0):
  """facebookresearch/dino utils.cosine_scheduler, verbatim."""
  warmup_schedule = np.array([])
  warmup_iters = warmup_epochs * niter_per_ep
  if warmup_epochs > 0:
    warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
  iters = np.arange(epochs * niter_per_ep - warmup_iters)
  schedule = final_value + 0.5 * (base_value - final_value) * (
      1 + np.cos(np.pi * iters / len(iters)))
  schedule = np.concatenate((warmup_schedule, schedule))
  assert len(schedule) == epochs * niter_per_ep
  return schedule


def swav_lr_schedule(base_lr, final_lr, epochs, warmup_epochs, start_warmup, iters_per_epoch):
  """facebookresearch/swav main_swav.py's lr_schedule."""
  warmup_lr_schedule = np.linspace(start_warmup, base_lr, iters_per_epoch * warmup_epochs)
  iters = np.arange(iters_per_epoch * (epochs - warmup_epochs))
  cosine_lr_schedule = np.array([final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(
      math.pi * t / (iters_per_epoch * (epochs - warmup_epochs)))) for t in iters])
  return np.concatenate((warmup_lr_schedule, cosine_lr_schedule))


def mae_adjust_learning_rate(lr, min_lr, epochs, warmup_epochs, iters_per_epoch):
  """facebookresearch/mae util/lr_sched.py, called per iteration with a fractional epoch."""
  out = []
  for it in range(epochs * iters_per_epoch):
    epoch = it / iters_per_epoch
    if epoch < warmup_epochs:
      out.append(lr * epoch / warmup_epochs)
    else:
      out.append(min_lr + (lr - min_lr) * 0.5 * (1. + math.cos(
          math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs))))
  return np.array(out)


def byol_learning_schedule(batch_size, base_learning_rate, total_steps, warmup_steps):
  """deepmind-research/byol utils/schedules.py learning_schedule, over every step."""
  global_step = np.arange(total_steps, dtype=np.float64)
  scaled_lr = base_learning_rate * batch_size / 256.
  learning_rate = global_step / int(warmup_steps) * scaled_lr
  decay_steps = np.minimum(global_step - warmup_steps, total_steps - warmup_steps)
  cosine = scaled_lr * 0.5 * (1 + np.cos(np.pi * decay_steps / (total_steps - warmup_steps)))
  return np.where(global_step < warmup_steps, learning_rate, cosine)


PER_EPOCH = 7  # Iterations per epoch for these checks: every preset's epochs become steps.


def preset_schedule(spec):
  config = config_lib.load_config(f"{REPO}/configs/{spec}")
  per_epoch = PER_EPOCH
  total = steps.total_steps(config, per_epoch)
  base = optim.group_settings(config.optim)["base"]
  lr = optim.learning_rate_schedule(base, batch_size=config.batch_size, total_steps=total,
                                    steps_per_epoch=per_epoch)
  return config, np.asarray(lr(jnp.arange(total))), base, total


def test_dino_preset_follows_dino_cosine_scheduler():
  config, lr, base, total = preset_schedule("dino.py:imagenet")
  want = dino_cosine_scheduler(5e-4 * 1024 / 256, 1e-6, 300, PER_EPOCH, warmup_epochs=10)
  np.testing.assert_allclose(lr, want, rtol=1e-5, atol=1e-10)
  assert lr[10 * PER_EPOCH - 1] == pytest.approx(2e-3)  # The peak at warm-up iteration W - 1.
  wd = optim.weight_decay_schedule(base, total_steps=total)(jnp.arange(total))
  np.testing.assert_allclose(wd, dino_cosine_scheduler(0.04, 0.4, 300, PER_EPOCH), rtol=1e-5)


def test_swav_preset_follows_main_swav_with_start_warmup():
  _, lr, _, _ = preset_schedule("swav.py:imagenet")
  want = swav_lr_schedule(4.8, 0.0048, 800, 10, 0.3, PER_EPOCH)
  np.testing.assert_allclose(lr, want, rtol=1e-5, atol=1e-6)  # float32 near the end: 4.8 * 2e-7.
  assert lr[0] == pytest.approx(0.3)


def test_mae_preset_follows_mae_lr_sched():
  _, lr, _, _ = preset_schedule("mae.py:imagenet")
  np.testing.assert_allclose(lr, mae_adjust_learning_rate(1.5e-4 * 4096 / 256, 0.0, 800, 40,
                                                          PER_EPOCH), rtol=1e-5, atol=1e-10)


def test_byol_preset_follows_byol_learning_schedule():
  _, lr, _, total = preset_schedule("byol.py:imagenet")
  want = byol_learning_schedule(4096, 0.2, total, 10 * PER_EPOCH)
  np.testing.assert_allclose(lr, want, rtol=1e-5, atol=1e-6)  # float32: 3.2 * 2e-7.


def test_linspace_warmup_of_one_step_is_the_start_value():
  lr = optim.warmup_cosine(peak=1.0, total_steps=10, warmup_steps=1, start_value=0.3,
                           linspace=True)
  np.testing.assert_allclose(lr(jnp.arange(3)), [0.3, 1.0, 0.5 * (1 + math.cos(math.pi / 9))],
                             rtol=1e-6)


# ------------------------------------------------------------------------------ step resolver


def test_steps_reads_steps_or_epochs():
  per_epoch = 10
  assert steps.steps({"warmup_steps": 5, "warmup_epochs": 0.0}, "warmup",
                     steps_per_epoch=per_epoch) == 5
  assert steps.steps({"warmup_steps": 0, "warmup_epochs": 1.26}, "warmup",
                     steps_per_epoch=per_epoch) == 13
  assert steps.steps({}, "freeze", steps_per_epoch=per_epoch) == 0
  with pytest.raises(config_lib.ConfigError, match="Both warmup_steps=5 and warmup_epochs=2"):
    steps.steps({"warmup_steps": 5, "warmup_epochs": 2.0}, "warmup", steps_per_epoch=per_epoch)
  with pytest.raises(config_lib.ConfigError, match="Set total_steps > 0 or epochs > 0"):
    steps.steps({"total_steps": 0, "epochs": 0.0}, "total", steps_per_epoch=per_epoch,
                default=None)


def test_total_steps_is_total_steps_or_epochs():
  config = config_lib.base_config()
  config.total_steps, config.epochs = 0, 2.5
  assert steps.total_steps(config, 3) == 8            # round(7.5), to even.
  config.total_steps, config.epochs = 7, 0.0
  assert steps.total_steps(config, 100) == 7
  config.total_steps, config.epochs = 0, 0.1
  assert steps.total_steps(config, 3) == 1            # At least one step.
  config.total_steps, config.epochs = 7, 1.0
  with pytest.raises(config_lib.ConfigError, match="Both total_steps=7 and epochs=1.0"):
    steps.total_steps(config, 3)


def test_freeze_epochs_become_the_steps_of_the_group_window():
  """DINO's last layer: frozen during exactly the first epoch's steps, then trained."""
  config = config_lib.load_config(f"{REPO}/configs/dino.py:cifar10")
  params = {"encoder": {"kernel": jnp.ones((2, 2))},
            "head": {"last_layer": {"kernel": jnp.ones((2, 2))}}}
  tx, _ = optim.build_optimizer(config, params, total_steps=100, steps_per_epoch=4)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  moved = []
  for _ in range(50):
    updates, state = tx.update(grads, state, params)
    moved.append(bool(jnp.any(updates["head"]["last_layer"]["kernel"] != 0)))
  assert moved == [False] * 4 + [True] * 46, moved


# ----------------------------------------------------------------------------- config errors


def groups_config(**groups):
  config = config_lib.base_config()
  config.total_steps = 10
  for name, group in groups.items():
    config.optim.groups[name] = ml_collections.ConfigDict(group)
  return config


PARAMS = {"encoder": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
          "head": {"kernel": jnp.ones((2, 2))}}


def test_unknown_group_key_names_the_closest_keys():
  config = groups_config(head=dict(pattern="head/.*", lr_mul=2.0))
  with pytest.raises(config_lib.ConfigError,
                     match=r"Unknown key 'optim.groups.head.lr_mul'. Did you mean: "
                           r"optim.groups.head.lr_mult"):
    config_lib.validate(config)
  with pytest.raises(config_lib.ConfigError, match="lr_mul"):
    optim.build_optimizer(config, PARAMS, total_steps=10, steps_per_epoch=1)


def test_bad_patterns_are_config_errors():
  config = groups_config(head=dict(pattern="heads/.*", lr_mult=2.0))
  with pytest.raises(config_lib.ConfigError,
                     match=r"optim.groups \['head'\] match no parameter \(pattern 'heads/\.\*'\)"):
    optim.build_optimizer(config, PARAMS, total_steps=10, steps_per_epoch=1)
  config.optim.groups.head.pattern = ""  # Disabled: a plain optimizer over every parameter.
  tx, _ = optim.build_optimizer(config, PARAMS, total_steps=10, steps_per_epoch=1)
  assert not isinstance(tx.init(PARAMS), optax.MultiTransformState)
  config = groups_config(a=dict(pattern=".*kernel", lr_mult=2.0), b=dict(pattern="head/.*"))
  with pytest.raises(config_lib.ConfigError, match=r"head/kernel matches optim.groups \['a', 'b'\]"):
    optim.build_optimizer(config, PARAMS, total_steps=10, steps_per_epoch=1)
  with pytest.raises(config_lib.ConfigError, match=r"pattern='\(' is not a regular expression"):
    optim.build_optimizer(groups_config(a=dict(pattern="(")), PARAMS, total_steps=10,
                          steps_per_epoch=1)
  with pytest.raises(config_lib.ConfigError, match="has no 'pattern'"):
    optim.build_optimizer(groups_config(a=dict(lr_mult=2.0)), PARAMS, total_steps=10,
                          steps_per_epoch=1)


def test_lr_mult_and_frozen_groups_scale_and_stop_the_updates():
  config = groups_config(head=dict(pattern="head/.*", lr_mult=3.0),
                         bias=dict(pattern="encoder/bias", frozen=True))
  config.optim.update(dict(name="sgd", momentum=0.0, weight_decay=0.0, lr=0.5, lr_scaling="none",
                           schedule="constant"))
  tx, _ = optim.build_optimizer(config, PARAMS, total_steps=10, steps_per_epoch=1)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, PARAMS), tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates["encoder"]["kernel"], -0.5)
  np.testing.assert_allclose(updates["head"]["kernel"], -1.5)
  np.testing.assert_array_equal(updates["encoder"]["bias"], 0.0)


def test_config_validation_accepts_exactly_the_optimizers_optim_builds():
  from ssl_jax import config_lib
  assert config_lib._CHOICES["optim.name"] == optim.OPTIMIZERS
