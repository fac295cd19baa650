"""Colorization (Zhang et al. 2016): Lab conversion, in-gamut ab bins, soft targets, class
rebalancing, annealed-mean decoding, and a smoke run through the loop."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import colorspace, config_lib, runs, train
from ssl_jax.losses import colorization as color_losses

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_lab_round_trip_and_reference_values():
  rgb = np.random.RandomState(0).rand(2000, 3).astype(np.float32)
  np.testing.assert_allclose(colorspace.lab_to_rgb(colorspace.rgb_to_lab(rgb)), rgb, atol=1e-3)
  # skimage.color.rgb2lab (float64): white, pure red, black.
  expected = np.array([[100.0, -0.002455, 0.004653], [53.240588, 80.092308, 67.202751],
                       [0.0, 0.0, 0.0]])
  lab = colorspace.rgb_to_lab(jnp.asarray([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
  np.testing.assert_allclose(lab, expected, atol=2e-3)
  # Mid grey L* = 50 is sRGB 0.4663 (Y = ((50 + 16) / 116)^3 = 0.18419, companded).
  np.testing.assert_allclose(colorspace.lab_to_rgb(jnp.asarray([50.0, 0.0, 0.0])),
                             [0.46633] * 3, atol=2e-4)
  with pytest.raises(ValueError, match="3 channels"):
    colorspace.rgb_to_lab(jnp.zeros((4, 4, 1)))


def test_ab_bins_cover_the_gamut_and_count_is_as_documented():
  bins = color_losses.ab_gamut_bins()
  assert bins.shape == (261, 2)
  np.testing.assert_array_equal(bins % 10.0, 0.0)
  assert len({tuple(b) for b in bins}) == 261
  # Every 8-bit colour's ab lies within one bin (half a grid step in a and in b) of a centre.
  rgb = np.random.RandomState(1).randint(0, 256, (20000, 3)).astype(np.float32) / 255.0
  ab = np.asarray(colorspace.rgb_to_lab(rgb))[:, 1:]
  nearest = np.min(np.max(np.abs(ab[:, None] - bins[None]), axis=-1), axis=1)
  assert nearest.max() <= 5.0 + 1e-3, nearest.max()


def test_soft_encoding_is_a_distribution_on_the_five_nearest_bins():
  bins = jnp.asarray(color_losses.ab_gamut_bins())
  ab = jnp.asarray(np.random.RandomState(2).uniform(-60, 60, (7, 3, 2)), jnp.float32)
  soft = color_losses.soft_encode(ab, bins)
  np.testing.assert_allclose(jnp.sum(soft, -1), 1.0, atol=1e-6)
  assert int(jnp.max(jnp.sum(soft > 0, -1))) == 5
  np.testing.assert_array_equal(jnp.argmax(soft, -1), color_losses.nearest_bin(ab, bins))
  # A value on a bin centre: weight exp(0) against exp(-100 / 50) for the four neighbours.
  on_centre = color_losses.soft_encode(jnp.asarray([0.0, 0.0]), bins)
  top = np.sort(np.asarray(on_centre))[::-1][:5]
  np.testing.assert_allclose(top, np.array([1.0] + [np.exp(-2.0)] * 4) / (1 + 4 * np.exp(-2.0)),
                             rtol=1e-5)


def test_rebalancing_weights_have_unit_mean_under_the_smoothed_prior():
  bins = color_losses.ab_gamut_bins()
  prior = np.random.RandomState(3).dirichlet(np.full(len(bins), 0.1)).astype(np.float32)
  weights = color_losses.rebalancing_weights(jnp.asarray(prior), jnp.asarray(bins))
  d2 = np.sum(np.square(bins[:, None] - bins[None]), -1)
  smoothed = np.exp(-d2 / 50.0) @ prior
  smoothed /= smoothed.sum()
  np.testing.assert_allclose(np.sum(smoothed * weights), 1.0, rtol=1e-5)
  expected = 1.0 / (0.5 * smoothed + 0.5 / len(bins))
  np.testing.assert_allclose(weights, expected / np.sum(smoothed * expected), rtol=1e-4)
  # lambda = 1 (uniform prior only): every class weighs 1.
  np.testing.assert_allclose(color_losses.rebalancing_weights(jnp.asarray(prior),
                                                              jnp.asarray(bins), mix=1.0), 1.0,
                             rtol=1e-5)


def test_rebalanced_cross_entropy_weights_each_pixel_by_its_target_mode():
  logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
  targets = jnp.asarray([[0.6, 0.4, 0.0], [0.0, 0.3, 0.7]])
  loss = color_losses.rebalanced_cross_entropy(logits, targets, jnp.asarray([2.0, 5.0, 0.5]))
  first = -(0.6 * np.log(0.5) + 0.4 * np.log(0.25))
  second = -(0.3 * np.log(0.1) + 0.7 * np.log(0.8))
  np.testing.assert_allclose(loss, (2.0 * first + 0.5 * second) / 2, rtol=1e-6)


def test_annealed_mean_at_t1_is_the_mean_and_at_small_t_the_mode():
  bins = jnp.asarray(color_losses.ab_gamut_bins())
  logits = jax.random.normal(jax.random.PRNGKey(0), (4, bins.shape[0])) * 3
  np.testing.assert_allclose(color_losses.annealed_mean(logits, bins, 1.0),
                             jax.nn.softmax(logits) @ bins, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(color_losses.annealed_mean(logits, bins, 1e-3),
                             bins[jnp.argmax(logits, -1)], atol=1e-3)


def test_smoke_run_lowers_the_loss_and_paints_pictures(tmp_path):
  config = config_lib.load_config(f"{REPO}/configs/colorization.py:smoke")
  config.lock()
  config_lib.apply_overrides(config, ["total_steps=30", "log_every=10", "export_at_end=False",
                                      "checkpoint_every=0"])
  result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  losses = [r["train/loss"] for r in runs.read_metrics(tmp_path) if "train/loss" in r]
  assert losses[-1] < losses[0], losses
  assert result["eval/knn_top1"] > 0.3, result  # 10 digit classes: chance is 0.1.
  assert list((tmp_path / "images").glob("colorization_*.png"))
