"""Tests for ssl_jax.models.discriminators (Perceptual MAE discriminators and input helpers).

Shape tests trace with jax.eval_shape (no compilation) so the paper-size 224x224 networks are
checked for free; numeric tests use tiny networks.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import image_ops
from ssl_jax.losses import reconstruction
from ssl_jax.models import discriminators as D
from ssl_jax.models import vit


def _random_params(module, *args, seed=0):
  """Params of module's shapes drawn with numpy (fan-in scaled): compiling a jitted Flax init
  costs seconds of CPU per network, which the tests do not need to spend."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  rs = np.random.RandomState(seed)

  def draw(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rs.uniform(-1, 1, leaf.shape) / np.sqrt(fan_in), leaf.dtype)

  return jax.tree.map(draw, shapes)


def _shapes(module, images):
  """(logits shape, [feature shapes], params) of module applied to images, traced abstractly."""
  (logits, features), params = jax.eval_shape(
      lambda: module.init_with_output(jax.random.key(0), images))
  return logits.shape, [f.shape for f in features], params


# ---------------------------------------------------------------------------------------------
# MSG discriminator.
# ---------------------------------------------------------------------------------------------


def test_msg_block_widths_follow_the_authors_channel_plan():
  # depth 6, ndf 512: layers[5], [4], [3], [2], [1] of their MSGDiscriminator output 64, 128,
  # 256, 256, 256 channels; their extractor comments list the last four maps' channels.
  assert D.msg_block_widths(6, 512) == [64, 128, 256, 256, 256]
  assert D.msg_block_widths(4, 512) == [256, 256, 256]
  assert D.msg_block_widths(5, 512) == [128, 256, 256, 256]


@pytest.mark.parametrize("size,num_scales,feature_size,expected", [
    (32, 4, 16, [(16, 16, 8), (8, 8, 8), (4, 4, 8)]),
    (64, 5, 32, [(32, 32, 8), (16, 16, 16), (8, 8, 16), (4, 4, 16)]),
])
def test_msg_output_shapes_and_feature_count(size, num_scales, feature_size, expected):
  images = jnp.zeros((3, size, size, 3))
  module = D.MSGDiscriminator(num_scales=num_scales, feature_size=feature_size)
  logits_shape, feature_shapes, _ = _shapes(module, images)
  assert logits_shape == (3,)
  assert len(feature_shapes) == num_scales - 1
  assert feature_shapes == [(3,) + s for s in expected]


def test_msg_paper_config_matches_the_authors_feature_maps():
  images = jnp.zeros((2, 224, 224, 3))
  logits_shape, feature_shapes, params = _shapes(D.MSGDiscriminator(), images)
  assert logits_shape == (2,)
  # Authors' MSGDiscFeatureExtractor: [64@112], then 128@56, 256@28, 256@14, 256@7.
  assert feature_shapes == [(2, 112, 112, 64), (2, 56, 56, 128), (2, 28, 28, 256),
                            (2, 14, 14, 256), (2, 7, 7, 256)]
  final = params["params"]["final_block"]
  assert final["conv_1"]["kernel"].shape == (3, 3, 513, 512)  # 512 + the minibatch-std channel
  assert final["conv_2"]["kernel"].shape == (4, 4, 512, 512)
  assert final["final_linear"]["kernel"].shape == (16, 1)  # their nn.Linear(4 * 4, 1)
  no_std = _shapes(D.MSGDiscriminator(minibatch_std=False), images)[2]
  assert no_std["params"]["final_block"]["conv_1"]["kernel"].shape == (3, 3, 512, 512)


def test_msg_equalized_lr_and_dtype_attributes():
  images = jnp.zeros((2, 32, 32, 3))
  module = D.MSGDiscriminator(num_scales=4, feature_size=16, equalized_lr=True,
                              dtype=jnp.bfloat16)
  (logits, features), params = jax.eval_shape(
      lambda: module.init_with_output(jax.random.key(0), images))
  assert logits.dtype == jnp.float32
  assert all(f.dtype == jnp.bfloat16 for f in features)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert set(params["params"]["block_0"]["conv_1"]) == {"kernel", "bias"}


def test_msg_single_array_equals_its_area_pyramid():
  images = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3))
  module = D.MSGDiscriminator(num_scales=3, feature_size=8)
  params = _random_params(module, images)
  apply = jax.jit(module.apply)
  logits_a, features_a = apply(params, images)
  logits_b, features_b = apply(params, image_ops.image_pyramid(images, 3))
  np.testing.assert_allclose(logits_a, logits_b, rtol=1e-6)
  for a, b in zip(features_a, features_b):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  assert np.all(np.isfinite(logits_a))


def test_msg_rejects_bad_inputs():
  module = D.MSGDiscriminator(num_scales=4, feature_size=16)
  images = jnp.zeros((2, 32, 32, 3))
  with pytest.raises(ValueError, match="got 3 images"):
    _shapes(module, image_ops.image_pyramid(images, 3))
  levels = image_ops.image_pyramid(images, 4)
  with pytest.raises(ValueError, match="pyramid level 1"):
    _shapes(module, [levels[0], levels[2], levels[2], levels[3]])
  with pytest.raises(ValueError, match="4x4"):
    _shapes(D.MSGDiscriminator(num_scales=4, feature_size=16), jnp.zeros((2, 16, 16, 3)))
  with pytest.raises(ValueError, match="power of two"):
    _shapes(D.MSGDiscriminator(num_scales=4, feature_size=24), images)
  with pytest.raises(ValueError, match="too small"):
    _shapes(D.MSGDiscriminator(num_scales=6, feature_size=4), jnp.zeros((2, 128, 128, 3)))


def test_minibatch_stddev_matches_numpy():
  x = np.random.RandomState(0).randn(4, 3, 2, 5).astype(np.float32)
  out = np.asarray(D.minibatch_stddev(jnp.asarray(x)))
  expected_stat = np.mean(np.sqrt(np.var(x, axis=0) + 1e-8))
  assert out.shape == (4, 3, 2, 6)
  np.testing.assert_array_equal(out[..., :5], x)
  np.testing.assert_allclose(out[..., 5], expected_stat, rtol=1e-5)


def test_equalized_conv_scales_unit_normal_weights_by_he_constant():
  x = np.random.RandomState(1).randn(2, 3, 3, 4).astype(np.float32)
  module = D.EqualizedConv(features=5, kernel_size=1, padding="VALID")
  params = module.init(jax.random.key(0), x)
  out = module.apply(params, x)
  kernel = np.asarray(params["params"]["kernel"])[0, 0]  # [4, 5]
  expected = x @ (kernel * np.sqrt(2.0 / 4))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# DCGAN discriminator.
# ---------------------------------------------------------------------------------------------

_TINY_DCGAN = dict(widths=(16, 32, 64), kernel_sizes=(4, 4, 4), paddings=(1, 1, 1))


@pytest.mark.parametrize("size", [32, 64])
def test_dcgan_output_shapes_and_feature_count(size):
  logits_shape, feature_shapes, _ = _shapes(D.DCGANDiscriminator(**_TINY_DCGAN),
                                            jnp.zeros((3, size, size, 3)))
  assert logits_shape == (3,)
  assert feature_shapes == [(3, size // 2, size // 2, 16), (3, size // 4, size // 4, 32)]


def test_dcgan_paper_config_matches_the_authors_layers():
  logits_shape, feature_shapes, params = _shapes(D.DCGANDiscriminator(),
                                                 jnp.zeros((2, 224, 224, 3)))
  assert logits_shape == (2,)
  # Authors' Discriminator.forward comments: conv1..conv4 give 64@110, 128@54, 256@25, 512@12.
  assert feature_shapes == [(2, 110, 110, 64), (2, 54, 54, 128), (2, 25, 25, 256),
                            (2, 12, 12, 512)]
  p = params["params"]
  assert "norm_0" not in p and "bias" not in p["conv_0"]  # no norm on the first layer, no biases
  assert p["conv_0"]["kernel"].shape == (7, 7, 3, 64)
  assert p["final_linear"]["kernel"].shape == (16, 1)  # their nn.Linear(4 * 4, 1)


def test_dcgan_rejects_too_small_images_and_bad_config():
  with pytest.raises(ValueError, match="too small"):
    _shapes(D.DCGANDiscriminator(), jnp.zeros((2, 32, 32, 3)))
  with pytest.raises(ValueError, match="one entry per block"):
    _shapes(D.DCGANDiscriminator(widths=(8, 8), kernel_sizes=(4,), paddings=(1, 1)),
            jnp.zeros((2, 32, 32, 3)))
  with pytest.raises(ValueError, match="norm"):
    _shapes(D.DCGANDiscriminator(norm="instance", **_TINY_DCGAN), jnp.zeros((2, 32, 32, 3)))
  with pytest.raises(ValueError, match="NHWC"):
    _shapes(D.DCGANDiscriminator(**_TINY_DCGAN), jnp.zeros((32, 32, 3)))


@pytest.mark.parametrize("norm,coupled", [("batch", True), ("layer", False)])
def test_dcgan_norm_batch_uses_batch_statistics_layer_does_not(norm, coupled):
  module = D.DCGANDiscriminator(widths=(4, 8), kernel_sizes=(4, 4), paddings=(1, 1), norm=norm)
  images = jax.random.uniform(jax.random.key(2), (3, 16, 16, 3))
  params = _random_params(module, images)
  apply = jax.jit(module.apply)
  logits, _ = apply(params, images)
  changed, _ = apply(params, images.at[1:].multiply(3.0))
  assert bool(jnp.abs(logits[0] - changed[0]) > 1e-6) == coupled


def test_batch_stat_norm_normalises_with_current_batch_statistics():
  x = np.random.RandomState(3).randn(4, 3, 3, 2).astype(np.float32) * 5 + 2
  module = D.BatchStatNorm()
  params = module.init(jax.random.key(0), x)
  out = module.apply(params, x)
  mean = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
  assert set(params) == {"params"}  # stateless: no batch_stats collection


# ---------------------------------------------------------------------------------------------
# Pyramids, patches and composition.
# ---------------------------------------------------------------------------------------------


def test_image_pyramid_area_shapes_and_block_means():
  x = np.random.RandomState(4).rand(2, 8, 12, 3).astype(np.float32)
  levels = image_ops.image_pyramid(jnp.asarray(x), 3)
  assert [l.shape for l in levels] == [(2, 8, 12, 3), (2, 4, 6, 3), (2, 2, 3, 3)]
  np.testing.assert_array_equal(levels[0], x)
  expected_1 = x.reshape(2, 4, 2, 6, 2, 3).mean(axis=(2, 4))
  expected_2 = x.reshape(2, 2, 4, 3, 4, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(levels[1], expected_1, rtol=1e-6)
  np.testing.assert_allclose(levels[2], expected_2, rtol=1e-6)
  with pytest.raises(ValueError, match="divisible"):
    image_ops.image_pyramid(jnp.asarray(x), 4)
  with pytest.raises(ValueError, match="method"):
    image_ops.image_pyramid(jnp.asarray(x), 2, method="nearest")


def test_image_pyramid_bilinear_align_corners_matches_torch_semantics():
  x = np.random.RandomState(5).rand(1, 8, 10, 2).astype(np.float32)
  levels = image_ops.image_pyramid(jnp.asarray(x), 3, method="bilinear_align_corners")
  # The authors' scale_pyramid sizes: H // 2**s, W // 2**s.
  assert [l.shape[1:3] for l in levels] == [(8, 10), (4, 5), (2, 2)]
  # align_corners=True keeps the corner pixels and samples rows at i * (8 - 1) / (4 - 1).
  level = np.asarray(levels[1])
  np.testing.assert_allclose(level[0, 0, 0], x[0, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(level[0, -1, -1], x[0, -1, -1], rtol=1e-6)
  row, col = 7.0 / 3.0, 9.0 / 4.0  # output (1, 1)
  r0, c0 = int(row), int(col)
  fr, fc = row - r0, col - c0
  expected = ((1 - fr) * (1 - fc) * x[0, r0, c0] + (1 - fr) * fc * x[0, r0, c0 + 1] +
              fr * (1 - fc) * x[0, r0 + 1, c0] + fr * fc * x[0, r0 + 1, c0 + 1])
  np.testing.assert_allclose(level[0, 1, 1], expected, rtol=1e-5)
  np.testing.assert_allclose(levels[2][0], x[0][[0, -1]][:, [0, -1]], rtol=1e-6)


def test_patchify_uses_mae_order_and_unpatchify_inverts_it():
  x = np.random.RandomState(6).rand(2, 8, 12, 3).astype(np.float32)
  patches = np.asarray(vit.patchify(jnp.asarray(x), 4))
  assert patches.shape == (2, 6, 48)
  for k in range(6):
    r, c = divmod(k, 3)  # row-major over the 2 x 3 patch grid
    block = x[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
    np.testing.assert_array_equal(patches[:, k], block.reshape(2, -1))
  np.testing.assert_array_equal(vit.unpatchify(jnp.asarray(patches), 4, 3, (2, 3)), x)


def test_compose_full_image_keeps_visible_and_inserts_masked_patches():
  rng = np.random.RandomState(7)
  images = rng.rand(2, 8, 12, 3).astype(np.float32)
  recon = rng.rand(2, 6, 48).astype(np.float32)
  mask = np.array([[1, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]], np.float32)
  out = np.asarray(image_ops.compose_full_image(jnp.asarray(images), jnp.asarray(recon),
                                        jnp.asarray(mask), 4))
  for b in range(2):
    for k in range(6):
      r, c = divmod(k, 3)
      block = out[b, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
      if mask[b, k]:
        np.testing.assert_array_equal(block, recon[b, k].reshape(4, 4, 3))
      else:
        np.testing.assert_array_equal(block, images[b, 4 * r:4 * r + 4, 4 * c:4 * c + 4])


def test_compose_full_image_rejects_mismatched_shapes():
  images = jnp.zeros((2, 8, 8, 3))
  with pytest.raises(ValueError, match="reconstructed_patches"):
    image_ops.compose_full_image(images, jnp.zeros((2, 4, 16)), jnp.zeros((2, 4)), 4)
  with pytest.raises(ValueError, match="mask"):
    image_ops.compose_full_image(images, jnp.zeros((2, 4, 48)), jnp.zeros((2, 5)), 4)
  with pytest.raises(ValueError, match="divide"):
    image_ops.compose_full_image(images, jnp.zeros((2, 4, 48)), jnp.zeros((2, 4)), 3)


def test_unnormalize_patch_predictions_inverts_norm_pix_targets():
  images = np.random.RandomState(8).rand(2, 8, 8, 3).astype(np.float32)
  patches = images.reshape(2, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 48)
  mean = patches.mean(-1, keepdims=True)
  var = patches.var(-1, keepdims=True, ddof=1)  # torch.var default, as in MAE
  normalised = (patches - mean) / np.sqrt(var + 1e-6)
  restored = reconstruction.unnormalize_patch_predictions(jnp.asarray(normalised), jnp.asarray(images), 4)
  np.testing.assert_allclose(restored, patches, rtol=1e-5, atol=1e-6)
