"""MAE masking, targets and loss against hand-computed values (official models_mae.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config_lib
from ssl_jax.data import masking
from ssl_jax.losses import reconstruction
from ssl_jax.methods import mae
from ssl_jax.models import vit


@pytest.mark.parametrize("ratio,num_patches", [(0.75, 64), (0.5, 16), (0.9, 49)])
def test_masking_keeps_exactly_the_ratio_and_restores(ratio, num_patches):
  keep_ids, mask, ids_restore = masking.random_masking(jax.random.PRNGKey(0), 5, num_patches, ratio)
  len_keep = int(num_patches * (1 - ratio))
  assert keep_ids.shape == (5, len_keep)
  np.testing.assert_array_equal(np.asarray(mask).sum(1), num_patches - len_keep)
  for b in range(5):
    kept = np.asarray(keep_ids[b])
    assert len(set(kept.tolist())) == len_keep
    # The kept patches are exactly those with mask 0.
    np.testing.assert_array_equal(np.sort(kept), np.flatnonzero(np.asarray(mask[b]) == 0))
  # ids_restore inverts the shuffle: shuffled[ids_restore] == original order.
  noise_order = jnp.argsort(ids_restore, axis=1)  # == ids_shuffle
  restored = jnp.take_along_axis(noise_order, ids_restore, axis=1)
  np.testing.assert_array_equal(np.asarray(restored), np.tile(np.arange(num_patches), (5, 1)))
  np.testing.assert_array_equal(np.asarray(noise_order[:, :len_keep]), np.asarray(keep_ids))


def test_masks_differ_per_sample_and_are_deterministic():
  a = masking.random_masking(jax.random.PRNGKey(1), 4, 16, 0.75)[1]
  b = masking.random_masking(jax.random.PRNGKey(1), 4, 16, 0.75)[1]
  np.testing.assert_array_equal(a, b)
  assert len({tuple(np.asarray(row).tolist()) for row in a}) > 1


def test_masking_rejects_ratio_that_keeps_nothing():
  with pytest.raises(ValueError, match="at least one"):
    masking.random_masking(jax.random.PRNGKey(0), 1, 4, 1.0)


def test_norm_pix_targets_use_unbiased_variance():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  target = np.asarray(reconstruction.patch_targets(jnp.asarray(images), 4, norm_pix_loss=True))
  patches = np.asarray(vit.patchify(jnp.asarray(images), 4))
  mean = patches.mean(-1, keepdims=True)
  var = patches.var(-1, ddof=1, keepdims=True)
  np.testing.assert_allclose(target, (patches - mean) / np.sqrt(var + 1e-6), rtol=1e-5, atol=1e-5)
  raw = np.asarray(reconstruction.patch_targets(jnp.asarray(images), 4, norm_pix_loss=False))
  np.testing.assert_allclose(raw, patches)


def test_loss_counts_only_masked_patches_and_matches_hand_value():
  pred = np.array([[[1.0, 1.0], [0.0, 2.0], [5.0, 5.0]]], np.float32)   # [1, 3 patches, 2]
  target = np.array([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]], np.float32)
  mask = np.array([[1.0, 1.0, 0.0]], np.float32)  # the third patch was visible
  # Per-patch MSE: (1+1)/2 = 1, (0+4)/2 = 2, (25+25)/2 = 25; mean over masked = (1+2)/2.
  loss = reconstruction.masked_mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
  np.testing.assert_allclose(float(loss), 1.5, rtol=1e-6)
  pred_changed = pred.copy()
  pred_changed[0, 2] = -100.0   # Changing a visible patch's prediction changes nothing.
  again = reconstruction.masked_mse(jnp.asarray(pred_changed), jnp.asarray(target), jnp.asarray(mask))
  assert float(again) == float(loss)


def _smoke_method():
  config = config_lib.load_config("configs/mae.py:smoke")
  return mae.MAE.from_config(config), config


def test_mae_forward_shapes_and_gradient_only_from_masked_patches():
  method, config = _smoke_method()
  images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
  batch = {"image": jnp.asarray(images), "label": jnp.zeros((4,), jnp.int32)}
  # Each call jitted: op by op, a ViT's many small ops dispatch far slower than one compile.
  params, state = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  assert set(params) == {"encoder", "decoder"}
  assert "mask_token" in params["decoder"]
  forward = jax.jit(lambda p, x, r: method.forward(p, x, r, train=True))
  pred, target, mask = forward(params, method.eval_inputs(batch["image"]), jax.random.PRNGKey(1))
  assert pred.shape == target.shape == (4, 64, 4 * 4 * 3)
  assert mask.shape == (4, 64)
  loss, (metrics, _) = jax.jit(lambda p, s, b, r: method.loss(p, s, b, r, 0))(
      params, state, batch, jax.random.PRNGKey(2))
  assert np.isfinite(float(loss)) and "mae_loss" in metrics
  feats = jax.jit(method.features)(params, state, batch["image"])
  assert feats.shape == (4, config.model.hidden_size)
  grids = method.visualize(params, state, batch["image"][:2], jax.random.PRNGKey(3))
  assert grids["reconstruction"].shape == (2 * 32, 4 * 32, 3)
  assert float(grids["reconstruction"].min()) >= 0 and float(grids["reconstruction"].max()) <= 1
