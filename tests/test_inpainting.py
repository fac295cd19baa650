"""Inpainting (Context Encoders, Pathak et al. 2016): the hole, the hole-only loss, the
adversarial option's gradients, and a smoke run through the loop."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config_lib, runs, train
from ssl_jax.losses import reconstruction
from ssl_jax.methods import build_method, inpainting

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_center_and_random_holes():
  center = inpainting.hole_mask(jax.random.PRNGKey(0), 2, 32, region="center", fraction=0.5)
  expected = np.zeros((32, 32))
  expected[8:24, 8:24] = 1
  np.testing.assert_array_equal(center[..., 0], np.stack([expected, expected]))
  random = inpainting.hole_mask(jax.random.PRNGKey(0), 64, 32, region="random", fraction=0.25)
  np.testing.assert_array_equal(jnp.sum(random, axis=(1, 2, 3)), 64.0)  # 8x8 inside the image.
  rows = np.argmax(np.asarray(random[..., 0]).any(axis=2), axis=1)
  assert len(set(rows.tolist())) > 5  # Positions vary across the batch.
  with pytest.raises(ValueError, match="region_fraction"):
    inpainting.hole_mask(jax.random.PRNGKey(0), 1, 32, region="center", fraction=1.0)
  with pytest.raises(ValueError, match="method.region"):
    inpainting.hole_mask(jax.random.PRNGKey(0), 1, 32, region="corner", fraction=0.5)


def test_loss_counts_only_the_hole():
  rng = np.random.RandomState(0)
  target = jnp.asarray(rng.randn(2, 32, 32, 3), jnp.float32)
  pred = jnp.asarray(rng.randn(2, 32, 32, 3), jnp.float32)
  mask = inpainting.hole_mask(jax.random.PRNGKey(1), 2, 32, region="random", fraction=0.5)
  loss = reconstruction.masked_pixel_mse(pred, target, mask)
  hole = np.asarray(mask[..., 0]).astype(bool)
  np.testing.assert_allclose(loss, np.mean(np.square(pred - target)[hole]), rtol=1e-5)
  changed_outside = jnp.where(mask > 0, pred, pred + 100.0)
  np.testing.assert_allclose(reconstruction.masked_pixel_mse(changed_outside, target, mask), loss,
                             rtol=1e-6)
  changed_inside = jnp.where(mask > 0, pred + 1.0, pred)
  assert float(reconstruction.masked_pixel_mse(changed_inside, target, mask)) > float(loss) + 0.5


def _tiny_adversarial_method():
  config = config_lib.load_config(f"{REPO}/configs/inpainting.py:smoke")
  config.model.depth = 1
  config.method.adversarial_weight = 0.25
  return build_method(config), config


def test_adversarial_option_gives_each_player_its_own_gradient():
  method, config = _tiny_adversarial_method()
  batch = {"image": np.random.RandomState(0).randint(0, 256, (4, 32, 32, 3)).astype(np.uint8),
           "label": np.zeros(4, np.int32)}
  params, state = method.init(jax.random.PRNGKey(0), batch)
  rng, step = jax.random.PRNGKey(1), jnp.zeros((), jnp.int32)

  w = config.method.adversarial_weight

  def metric(fn):
    return lambda p: fn(method.loss(p, state, batch, rng, step)[1][0])

  @jax.jit  # One compilation instead of three eager (slow) gradient passes.
  def gradients(params):
    total = jax.value_and_grad(method.loss, has_aux=True)(params, state, batch, rng, step)
    disc = jax.grad(metric(lambda m: m["disc_loss"]))(params)
    generator = jax.grad(metric(
        lambda m: (1 - w) * m["reconstruction"] + w * m["gen_adversarial"]))(params)
    return total, disc, generator

  ((loss, (metrics, _)), grads), disc_grads, generator_grads = gradients(params)
  np.testing.assert_allclose(loss, (1 - w) * metrics["reconstruction"] +
                             w * metrics["gen_adversarial"], rtol=1e-5)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  jax.tree.map(close, grads["discriminator"], disc_grads["discriminator"])
  for part in ("encoder", "decoder"):
    jax.tree.map(close, grads[part], generator_grads[part])


def test_smoke_run_lowers_the_loss_and_paints_pictures(tmp_path):
  config = config_lib.load_config(f"{REPO}/configs/inpainting.py:smoke")
  config.lock()
  config_lib.apply_overrides(config, ["total_steps=30", "log_every=10", "export_at_end=False",
                                      "checkpoint_every=0"])
  result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  losses = [r["train/loss"] for r in runs.read_metrics(tmp_path) if "train/loss" in r]
  assert losses[-1] < losses[0], losses
  assert result["eval/knn_top1"] > 0.3, result  # 10 digit classes: chance is 0.1.
  assert list((tmp_path / "images").glob("inpainting_*.png"))
