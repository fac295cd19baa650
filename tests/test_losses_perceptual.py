"""Tests for ssl_jax.losses.perceptual: each loss against numpy, and the min-max objective's
per-group gradients against the generator's and the discriminator's terms taken alone."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import image_ops
from ssl_jax.losses import perceptual as P
from ssl_jax.models import discriminators as D


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------------------------
# Pixel losses.
# ---------------------------------------------------------------------------------------------


def test_l1_loss_whole_image_and_masked():
  rng = np.random.RandomState(0)
  pred, target = rng.rand(2, 4, 6).astype(np.float32), rng.rand(2, 4, 6).astype(np.float32)
  np.testing.assert_allclose(P.l1_loss(pred, target), np.abs(pred - target).mean(), rtol=1e-6)
  # MAE-style patch mask [B, L] on [B, L, D]: mean over the removed patches only.
  mask = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], np.float32)
  per_patch = np.abs(pred - target).mean(-1)
  expected = (per_patch * mask).sum() / mask.sum()
  np.testing.assert_allclose(P.l1_loss(pred, target, mask), expected, rtol=1e-6)
  # Pixel mask [B, H, W, 1] on images broadcasts over channels.
  images_p, images_t = rng.rand(2, 3, 3, 2), rng.rand(2, 3, 3, 2)
  pixel_mask = (rng.rand(2, 3, 3, 1) > 0.5).astype(np.float32)
  expected = (np.abs(images_p - images_t) * pixel_mask).sum() / (pixel_mask.sum() * 2)
  np.testing.assert_allclose(P.l1_loss(images_p, images_t, pixel_mask), expected, rtol=1e-5)
  assert float(P.l1_loss(pred, target, np.zeros((2, 4)))) == 0.0  # nothing masked: 0, not NaN


def test_l1_loss_rejects_bad_shapes():
  with pytest.raises(ValueError, match="same shape"):
    P.l1_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="does not fit"):
    P.l1_loss(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), jnp.zeros((2, 5)))


def _np_ssim_map(x, y, window):
  """Direct SSIM: local moments by explicit window sums (Wang et al. 2004)."""
  if window == "box3":
    pad, mode, kernel = 1, "reflect", np.full((3, 3), 1 / 9)
  else:
    g = np.exp(-(np.arange(11) - 5.0)**2 / (2 * 1.5**2))
    pad, mode, kernel = 5, "constant", np.outer(g, g) / g.sum()**2
  size = kernel.shape[0]

  def local_mean(a):
    a = np.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
    out = np.zeros((a.shape[0], a.shape[1] - 2 * pad, a.shape[2] - 2 * pad, a.shape[3]))
    for i in range(out.shape[1]):
      for j in range(out.shape[2]):
        out[:, i, j] = np.einsum("hw,bhwc->bc", kernel, a[:, i:i + size, j:j + size])
    return out

  x, y = x.astype(np.float64), y.astype(np.float64)
  c1, c2 = 0.01**2, 0.03**2
  mx, my = local_mean(x), local_mean(y)
  vx, vy = local_mean(x * x) - mx**2, local_mean(y * y) - my**2
  cxy = local_mean(x * y) - mx * my
  return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


@pytest.mark.parametrize("window", ["box3", "gaussian11"])
def test_ssim_matches_direct_numpy_and_identical_images_give_zero_loss(window):
  rng = np.random.RandomState(1)
  x = rng.rand(2, 7, 6, 2).astype(np.float32)
  y = np.clip(x + 0.2 * rng.randn(2, 7, 6, 2), 0, 1).astype(np.float32)
  expected = _np_ssim_map(x, y, window)
  np.testing.assert_allclose(P.ssim_map(x, y, window=window), expected, rtol=1e-4, atol=1e-5)
  expected_loss = np.clip((1 - expected) / 2, 0, 1).mean()
  np.testing.assert_allclose(P.ssim_loss(x, y, window=window), expected_loss, rtol=1e-4)
  np.testing.assert_allclose(P.ssim_loss(x, x, window=window), 0.0, atol=1e-6)
  pixel_mask = np.zeros((2, 7, 6, 1), np.float32)
  pixel_mask[:, :3] = 1.0
  masked = np.clip((1 - expected[:, :3]) / 2, 0, 1).mean()
  np.testing.assert_allclose(P.ssim_loss(x, y, window=window, mask=pixel_mask), masked,
                             rtol=1e-4)


def test_ssim_max_value_scales_constants_and_rejects_bad_window():
  rng = np.random.RandomState(2)
  x, y = rng.rand(1, 5, 5, 1).astype(np.float32), rng.rand(1, 5, 5, 1).astype(np.float32)
  # SSIM is invariant to rescaling images and dynamic range together.
  np.testing.assert_allclose(P.ssim_map(2 * x, 2 * y, max_value=2.0), P.ssim_map(x, y),
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="window"):
    P.ssim_map(x, y, window="box5")
  with pytest.raises(ValueError, match="NHWC"):
    P.ssim_map(x[0], y[0])


def test_multiscale_ssim_l1_loss_is_the_authors_weighted_sum():
  rng = np.random.RandomState(3)
  x, y = rng.rand(2, 16, 16, 3).astype(np.float32), rng.rand(2, 16, 16, 3).astype(np.float32)
  single = 0.85 * np.clip((1 - _np_ssim_map(x, y, "box3")) / 2, 0, 1).mean() + \
      0.15 * np.abs(x - y).mean()
  np.testing.assert_allclose(P.multiscale_ssim_l1_loss(x, y, num_scales=1), single, rtol=1e-4)
  four = P.multiscale_ssim_l1_loss(x, y)
  levels_x = image_ops.image_pyramid(jnp.asarray(x), 4, method="bilinear_align_corners")
  levels_y = image_ops.image_pyramid(jnp.asarray(y), 4, method="bilinear_align_corners")
  expected = sum(0.85 * P.ssim_loss(a, b) + 0.15 * P.l1_loss(a, b)
                 for a, b in zip(levels_x, levels_y))
  np.testing.assert_allclose(four, expected, rtol=1e-5)
  np.testing.assert_allclose(P.multiscale_ssim_l1_loss(x, x), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="H, W >= 2"):  # 16 -> ... -> 1 pixel cannot be reflected
    P.multiscale_ssim_l1_loss(x, y, num_scales=5)


# ---------------------------------------------------------------------------------------------
# Adversarial losses.
# ---------------------------------------------------------------------------------------------


def test_lsgan_matches_the_authors_constants():
  # sigmoid scores: real 0.5, 0.75 (mean 0.625); fake 0.25, 0.5 (mean 0.375).
  real = jnp.array([0.0, np.log(3.0)])
  fake = jnp.array([-np.log(3.0), 0.0])
  # 0.5 * ((0.625 - 1)^2 + 0.375^2) and 0.5 * (0.375 - 1)^2.
  np.testing.assert_allclose(P.lsgan_discriminator_loss(real, fake), 0.140625, rtol=1e-6)
  np.testing.assert_allclose(P.lsgan_generator_loss(fake), 0.1953125, rtol=1e-6)
  # Mao et al.'s per-example form: 0.5 * (mean((s_r - 1)^2) + mean(s_f^2)).
  per_example = 0.5 * (np.mean((np.array([0.5, 0.75]) - 1)**2) +
                       np.mean(np.array([0.25, 0.5])**2))
  np.testing.assert_allclose(P.lsgan_discriminator_loss(real, fake, square_batch_mean=False),
                             per_example, rtol=1e-6)
  raw = np.array([0.3, -1.2])
  np.testing.assert_allclose(
      P.lsgan_generator_loss(raw, sigmoid_scores=False, square_batch_mean=False),
      0.5 * np.mean((raw - 1)**2), rtol=1e-6)
  # Perfect discriminator scores give zero discriminator loss.
  np.testing.assert_allclose(P.lsgan_discriminator_loss(jnp.array([50.0]), jnp.array([-50.0])),
                             0.0, atol=1e-12)


def test_nonsaturating_losses_are_the_logistic_forms():
  real, fake = np.array([1.5, -0.5, 0.2]), np.array([-2.0, 0.7, 0.0])
  expected_d = 0.5 * (np.mean(-np.log(_sigmoid(real))) + np.mean(-np.log(1 - _sigmoid(fake))))
  expected_g = np.mean(-np.log(_sigmoid(fake)))
  np.testing.assert_allclose(P.nonsaturating_discriminator_loss(real, fake), expected_d,
                             rtol=1e-5)
  np.testing.assert_allclose(P.nonsaturating_generator_loss(fake), expected_g, rtol=1e-5)


def test_discriminator_accuracy_fractions():
  real_acc, fake_acc = P.discriminator_accuracy(jnp.array([1.0, -1.0, 2.0, 0.5]),
                                                jnp.array([-3.0, 0.1, 0.2, -0.1]))
  assert float(real_acc) == 0.75 and float(fake_acc) == 0.5


# ---------------------------------------------------------------------------------------------
# Feature matching and style.
# ---------------------------------------------------------------------------------------------


def _np_gram(f):
  b, h, w, c = f.shape
  flat = f.reshape(b, h * w, c)
  return np.einsum("bnc,bnd->bcd", flat, flat) / (c * h * w)


def test_gram_matrix_matches_numpy():
  f = np.random.RandomState(4).randn(2, 3, 4, 5).astype(np.float32)
  gram = np.asarray(P.gram_matrix(f))
  assert gram.shape == (2, 5, 5)
  np.testing.assert_allclose(gram, _np_gram(f), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gram, np.swapaxes(gram, 1, 2), rtol=1e-6)  # symmetric


def test_gram_matrix_of_bfloat16_features_is_their_float32_gram():
  """bf16 features multiply on the matrix units into float32: the same Gram (up to summation
  order) as upcasting them first at full float32 precision, and a float32 result."""
  f = jnp.asarray(np.random.RandomState(6).randn(2, 7, 5, 16), jnp.bfloat16)
  gram = P.gram_matrix(f)
  assert gram.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(gram), _np_gram(np.asarray(f, np.float64)),
                             rtol=1e-6, atol=1e-7)
  grad = jax.grad(lambda x: jnp.sum(P.gram_matrix(x) ** 2))(f)
  expected = jax.grad(lambda x: jnp.sum(P.gram_matrix(x.astype(jnp.float32)) ** 2))(f)
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(expected, np.float32),
                             rtol=1e-2, atol=1e-3)


def test_feature_matching_and_style_losses_match_numpy():
  rng = np.random.RandomState(5)
  fake = [rng.randn(2, 4, 4, 3).astype(np.float32), rng.randn(2, 2, 2, 6).astype(np.float32)]
  real = [rng.randn(2, 4, 4, 3).astype(np.float32), rng.randn(2, 2, 2, 6).astype(np.float32)]
  expected_fm = sum(np.abs(f - r).mean() for f, r in zip(fake, real))  # L1 per layer, summed
  expected_style = sum(np.abs(_np_gram(f) - _np_gram(r)).mean() for f, r in zip(fake, real))
  np.testing.assert_allclose(P.feature_matching_loss(fake, real), expected_fm, rtol=1e-5)
  np.testing.assert_allclose(P.style_loss(fake, real), expected_style, rtol=1e-5)
  np.testing.assert_allclose(P.feature_matching_loss(real, real), 0.0, atol=1e-7)


def test_real_features_are_stop_gradient_targets():
  rng = np.random.RandomState(6)
  fake = [jnp.asarray(rng.randn(2, 3, 3, 2), jnp.float32)]
  real = [jnp.asarray(rng.randn(2, 3, 3, 2), jnp.float32)]
  for loss in (P.feature_matching_loss, P.style_loss):
    grad_fake, grad_real = jax.grad(loss, argnums=(0, 1))(fake, real)
    assert float(jnp.abs(grad_fake[0]).sum()) > 0
    np.testing.assert_array_equal(grad_real[0], 0.0)


def test_feature_losses_reject_mismatched_lists():
  f = [jnp.zeros((2, 4, 4, 3))]
  with pytest.raises(ValueError, match="same length"):
    P.feature_matching_loss(f, f + f)
  with pytest.raises(ValueError, match="feature map 0"):
    P.style_loss(f, [jnp.zeros((2, 4, 4, 2))])


# ---------------------------------------------------------------------------------------------
# Weights and schedules.
# ---------------------------------------------------------------------------------------------


def test_loss_weights_defaults_and_validation():
  w = P.PerceptualMAELossWeights()
  assert dataclasses.astuple(w) == (1.0, 0.85, 0.05, 40.0, 0.7)
  code_path = P.PerceptualMAELossWeights.authors_gan_perceptual_code_path()
  assert (code_path.l1, code_path.ssim) == (2.0, 0.0)
  with pytest.raises(ValueError, match="style"):
    P.PerceptualMAELossWeights(style=-1.0)


def test_adversarial_weight_schedule():
  assert float(P.adversarial_weight(0)) == 1.0  # authors: adversarial terms on from step 0
  schedule = P.AdversarialSchedule(start_step=10, warmup_steps=4)
  values = [float(P.adversarial_weight(s, schedule)) for s in (0, 9, 10, 11, 13, 14, 100)]
  assert values == [0.0, 0.0, 0.0, 0.25, 0.75, 1.0, 1.0]
  hard = ml_collections.ConfigDict({"start_step": 5, "warmup_steps": 0})
  jitted = jax.jit(lambda s: P.adversarial_weight(s, hard))
  assert [float(jitted(s)) for s in (4, 5)] == [0.0, 1.0]
  with pytest.raises(ValueError, match="start_step"):
    P.adversarial_weight(0, ml_collections.ConfigDict({"start": 5}))
  with pytest.raises(ValueError, match=">= 0"):
    P.adversarial_weight(0, P.AdversarialSchedule(start_step=-1))


def test_refresh_feature_discriminator_follows_the_five_epoch_rule():
  live = {"w": jnp.ones(3)}
  copy = {"w": jnp.zeros(3)}
  refresh = jax.jit(lambda step: P.refresh_feature_discriminator(
      step, copy, live, steps_per_epoch=10, every_epochs=5))
  for step, expected in [(0, 1.0), (9, 1.0), (10, 0.0), (49, 0.0), (50, 1.0), (60, 0.0)]:
    np.testing.assert_array_equal(refresh(step)["w"], expected)
  with pytest.raises(ValueError, match="steps_per_epoch"):
    P.refresh_feature_discriminator(0, copy, live, steps_per_epoch=0)


# ---------------------------------------------------------------------------------------------
# The combined objective.
# ---------------------------------------------------------------------------------------------


def _linear_discriminator(params, images):
  """A discriminator simple enough to check by hand: logit w * mean(x) + b, feature w * x."""
  logits = params["w"] * jnp.mean(images, axis=(1, 2, 3)) + params["b"]
  return logits, [images * params["w"]]


def test_objective_values_match_hand_computation():
  rng = np.random.RandomState(7)
  real = rng.rand(3, 6, 6, 2).astype(np.float32)
  fake = rng.rand(3, 6, 6, 2).astype(np.float32)
  params = {"w": jnp.float32(1.7), "b": jnp.float32(-0.4)}
  weights = P.PerceptualMAELossWeights(l1=1.0, ssim=0.85, perceptual=0.05, style=40.0, gan=0.7)
  for gan_loss in ("lsgan", "nonsaturating"):
    total, metrics = P.perceptual_mae_objective(
        jnp.asarray(fake), jnp.asarray(real), params, _linear_discriminator, weights=weights,
        adversarial_weight=0.5, gan_loss=gan_loss)
    r = 1.7 * real.mean(axis=(1, 2, 3)) - 0.4
    f = 1.7 * fake.mean(axis=(1, 2, 3)) - 0.4
    if gan_loss == "lsgan":
      d = 0.5 * ((_sigmoid(r).mean() - 1)**2 + _sigmoid(f).mean()**2)
      g_adv = 0.5 * (_sigmoid(f).mean() - 1)**2
    else:
      d = 0.5 * (np.mean(np.log1p(np.exp(-r))) + np.mean(np.log1p(np.exp(f))))
      g_adv = np.mean(np.log1p(np.exp(-f)))
    l1 = np.abs(fake - real).mean()
    ssim = np.clip((1 - _np_ssim_map(fake, real, "box3")) / 2, 0, 1).mean()
    perceptual = np.abs(1.7 * fake - 1.7 * real).mean()
    style = np.abs(_np_gram(1.7 * fake) - _np_gram(1.7 * real)).mean()
    generator = l1 + 0.85 * ssim + 0.5 * (0.7 * g_adv + 0.05 * perceptual + 40.0 * style)
    for name, value in [("discriminator", d), ("generator_adversarial", g_adv), ("l1", l1),
                        ("ssim", ssim), ("perceptual", perceptual), ("style", style),
                        ("generator", generator)]:
      np.testing.assert_allclose(metrics[name], value, rtol=1e-4, err_msg=f"{gan_loss} {name}")
    np.testing.assert_allclose(total, generator + d, rtol=1e-4)
  with pytest.raises(ValueError, match="gan_loss"):
    P.perceptual_mae_objective(jnp.asarray(fake), jnp.asarray(real), params,
                               _linear_discriminator, gan_loss="wgan")


def _random_params(module, *args, seed=0):
  """Numpy-drawn params of module's shapes (a jitted Flax init would cost seconds to compile)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  rs = np.random.RandomState(seed)

  def draw(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rs.uniform(-1, 1, leaf.shape) / np.sqrt(fan_in) * 2, leaf.dtype)

  return jax.tree.map(draw, shapes)


@pytest.mark.parametrize("kind", ["dcgan", "msg_with_lagged_feature_copy"])
def test_objective_gradients_split_by_parameter_group(kind):
  batch, size = 4, 16
  rng = np.random.RandomState(8)
  real = jnp.asarray(rng.rand(batch, size, size, 3), jnp.float32)
  latent = jnp.asarray(rng.randn(batch, 8), jnp.float32)
  pixel_mask = jnp.asarray(rng.rand(batch, size, size, 1) > 0.5, jnp.float32)
  gen_params = {"w": jnp.asarray(rng.randn(8, size * size * 3) * 0.3, jnp.float32),
                "b": jnp.zeros((size * size * 3,), jnp.float32)}
  if kind == "dcgan":
    module = D.DCGANDiscriminator(widths=(4, 8), kernel_sizes=(4, 4), paddings=(1, 1))
    feature_params = None
  else:
    module = D.MSGDiscriminator(num_scales=3, feature_size=8)
    feature_params = _random_params(module, real, seed=2)
  disc_params = _random_params(module, real, seed=1)
  weights = P.PerceptualMAELossWeights()
  adv = 0.5

  def generate(g):
    return jax.nn.sigmoid(latent @ g["w"] + g["b"]).reshape(batch, size, size, 3)

  def objective(g, d):
    return P.perceptual_mae_objective(
        generate(g), real, d, module.apply, loss_mask=pixel_mask, weights=weights,
        adversarial_weight=adv, feature_discriminator_params=feature_params)

  # The generator's terms alone, the discriminator held fixed (no stop_gradient needed here).
  def generator_terms(g, d, adversarial):
    fake = generate(g)
    features_from = d if feature_params is None else feature_params
    fake_features = module.apply(features_from, fake)[1]
    real_features = module.apply(features_from, real)[1]
    return (weights.l1 * P.l1_loss(fake, real, pixel_mask) +
            weights.ssim * P.ssim_loss(fake, real, mask=pixel_mask) + adversarial *
            (weights.gan * P.lsgan_generator_loss(module.apply(d, fake)[0]) +
             weights.perceptual * P.feature_matching_loss(fake_features, real_features) +
             weights.style * P.style_loss(fake_features, real_features)))

  # The discriminator's terms alone, the reconstruction held fixed.
  def discriminator_terms(d, g):
    return P.lsgan_discriminator_loss(module.apply(d, real)[0], module.apply(d, generate(g))[0])

  @jax.jit
  def everything(g, d):
    (total, metrics), (grad_g, grad_d) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True)(g, d)
    return dict(
        total=total, metrics=metrics, grad_g=grad_g, grad_d=grad_d,
        ref_grad_g=jax.grad(generator_terms)(g, d, adv),
        pixel_only_grad_g=jax.grad(generator_terms)(g, d, 0.0),
        ref_grad_d=jax.grad(discriminator_terms)(d, g),
        ref_total=generator_terms(g, d, adv) + discriminator_terms(d, g),
        d_loss_grad_g=jax.grad(lambda g_: objective(g_, d)[1]["discriminator"])(g),
        g_loss_grad_d=jax.grad(lambda d_: objective(g, d_)[1]["generator"])(d))

  out = everything(gen_params, disc_params)
  np.testing.assert_allclose(out["total"], out["ref_total"], rtol=1e-5)
  assert_trees_close = lambda a, b: jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-7), a, b)
  assert_trees_close(out["grad_g"], out["ref_grad_g"])
  assert_trees_close(out["grad_d"], out["ref_grad_d"])
  # The discriminator's loss reaches the generator only through stop_gradient ...
  for leaf in jax.tree.leaves(out["d_loss_grad_g"]):
    np.testing.assert_array_equal(leaf, 0.0)
  # ... and the generator's loss never moves the discriminator.
  for leaf in jax.tree.leaves(out["g_loss_grad_d"]):
    np.testing.assert_array_equal(leaf, 0.0)
  # Not vacuous: both groups get gradients, and the adversarial terms change the generator's.
  assert all(float(jnp.abs(l).sum()) > 0 for l in jax.tree.leaves(out["grad_d"])
             if l.size > 1)
  adversarial_part = jax.tree.map(lambda a, b: jnp.abs(a - b).sum(), out["grad_g"],
                                  out["pixel_only_grad_g"])
  assert float(sum(jax.tree.leaves(adversarial_part))) > 0
  assert set(out["metrics"]) == {
      "l1", "ssim", "perceptual", "style", "generator_adversarial", "generator",
      "discriminator", "real_accuracy", "fake_accuracy", "adversarial_weight"}

