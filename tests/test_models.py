"""Backbones: ViT numerics/layout against numpy references, ResNet shapes and BatchNorm, registry."""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from scipy import special

from ssl_jax.models import registry
from ssl_jax.models import resnet
from ssl_jax.models import vit

BATCH, IMAGE, CHANNELS, PATCH = 2, 16, 3, 4
NUM_PATCHES = (IMAGE // PATCH) ** 2
WIDTH, HEADS = 32, 4


def tiny_vit(**overrides):
  kwargs = dict(patch_size=PATCH, hidden_size=WIDTH, depth=2, num_heads=HEADS)
  kwargs.update(overrides)
  return vit.VisionTransformer(**kwargs)


def random_images(seed=0, batch=BATCH, size=IMAGE):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, CHANNELS))


def init_key():
  """An 'rbg' key: real initialisation compiles faster with it than with threefry on CPU."""
  return jax.random.key(1, impl="rbg")


def random_variables(model, *args, scale=0.3, seed=0, **kwargs):
  """Normal(0, scale) values in the structure `model.init` would return.

  Tests that do not check initialisation use these: a real init compiles the RNG (seconds on CPU).
  """
  shapes = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.key(0), *args)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shapes)


@pytest.fixture(scope="module")
def vit_and_params():
  model = tiny_vit()
  images = random_images()
  return model, jax.jit(model.init)(init_key(), images)["params"], images


# --------------------------------------------------------------------------- numpy references

def np_layer_norm(x, params, epsilon):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + epsilon) * params["scale"] + params["bias"]


def np_dense(x, params):
  return x @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"], np.float64)


def np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


def np_block(x, params, num_heads, epsilon=1e-6):
  """timm `Block.forward` written out, with timm's qkv reshape(B, N, 3, H, hd).permute(2,0,3,1,4)."""
  batch, tokens, width = x.shape
  head_dim = width // num_heads
  h = np_layer_norm(x, params["norm1"], epsilon)
  qkv = np_dense(h, params["attn"]["qkv"]).reshape(batch, tokens, 3, num_heads, head_dim)
  query, key, value = qkv.transpose(2, 0, 3, 1, 4)
  weights = np_softmax(query @ key.swapaxes(-1, -2) * head_dim ** -0.5)
  attended = (weights @ value).transpose(0, 2, 1, 3).reshape(batch, tokens, width)
  x = x + np_dense(attended, params["attn"]["proj"])
  h = np_dense(np_layer_norm(x, params["norm2"], epsilon), params["mlp"]["fc1"])
  h = 0.5 * h * (1.0 + special.erf(h / math.sqrt(2.0)))
  return x + np_dense(h, params["mlp"]["fc2"])


# --------------------------------------------------------------------------- patchify / sincos

def test_patchify_matches_mae_einsum_and_unpatchify_inverts():
  images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  p = 4
  # MAE: imgs NCHW -> reshape (N, C, h, p, w, q) -> einsum 'nchpwq->nhwpqc' -> (N, h*w, p*p*C).
  nchw = images.transpose(0, 3, 1, 2).reshape(2, 3, 2, p, 3, p)
  expected = np.einsum("nchpwq->nhwpqc", nchw).reshape(2, 6, p * p * 3)
  patches = vit.patchify(jnp.asarray(images), p)
  np.testing.assert_array_equal(np.asarray(patches), expected)
  # Patch 4 = grid row 1, column 1; its first entry is pixel (4, 4), channel 0.
  assert patches[0, 4, 0] == images[0, 4, 4, 0]
  restored = vit.unpatchify(patches, p, 3, grid_hw=(2, 3))
  np.testing.assert_array_equal(np.asarray(restored), images)
  square = random_images()
  np.testing.assert_array_equal(
      np.asarray(vit.unpatchify(vit.patchify(square, PATCH), PATCH, CHANNELS)), np.asarray(square))


def test_patchify_rejects_bad_shapes():
  with pytest.raises(ValueError, match="not divisible by patch size"):
    vit.patchify(jnp.zeros((1, 10, 16, 3)), 4)
  with pytest.raises(ValueError, match="square grid"):
    vit.unpatchify(jnp.zeros((1, 6, 48)), 4, 3)
  with pytest.raises(ValueError, match="Patch dimension"):
    vit.unpatchify(jnp.zeros((1, 4, 40)), 4, 3)


def test_sincos_pos_embed_matches_formula():
  dim, grid = 16, 3
  embed = vit.sincos_pos_embed_2d(dim, grid, with_cls_token=True)
  assert embed.shape == (1, 1 + grid * grid, dim) and embed.dtype == np.float32
  np.testing.assert_array_equal(embed[0, 0], np.zeros(dim))
  quarter = dim // 4
  omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
  for row, col in [(0, 0), (0, 2), (1, 2), (2, 1)]:
    # First half codes the column (MAE's meshgrid puts w first), second half the row.
    expected = np.concatenate([np.sin(col * omega), np.cos(col * omega),
                               np.sin(row * omega), np.cos(row * omega)])
    np.testing.assert_allclose(embed[0, 1 + row * grid + col], expected, atol=1e-6)
  no_cls = vit.sincos_pos_embed_2d(dim, (2, 3), with_cls_token=False)
  assert no_cls.shape == (1, 6, dim)
  np.testing.assert_allclose(no_cls[0, 5, :quarter], np.sin(2 * omega), atol=1e-6)
  np.testing.assert_allclose(no_cls[0, 5, 2 * quarter:3 * quarter], np.sin(1 * omega), atol=1e-6)
  with pytest.raises(ValueError, match="embed_dim % 4"):
    vit.sincos_pos_embed_2d(18, 2, with_cls_token=False)


# --------------------------------------------------------------------------- ViT numerics

def test_block_matches_timm_reference_including_exact_gelu_and_eps():
  block = vit.Block(hidden_size=8, num_heads=2, mlp_ratio=4.0)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  params = random_variables(block, x, train=False)["params"]
  np_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  # The 1e-3 scale makes token variance ~1e-6, where LayerNorm eps 1e-6 vs 1e-5 is visible.
  for scale in (1.0, 1e-3):
    got = block.apply({"params": params}, x * scale, train=False)
    expected = np_block(np.asarray(x, np.float64) * scale, np_params, num_heads=2)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5 * scale)
  assert not np.allclose(
      np_block(np.asarray(x, np.float64) * 1e-3, np_params, 2, epsilon=1e-5), expected,
      rtol=1e-4, atol=1e-8)


def test_encoder_without_blocks_matches_mae_forward_encoder_order():
  """depth 0: tokens = LN(concat(cls + pos[0], gather(patchify(x) @ W + b + pos[1:]))."""
  model = tiny_vit(depth=0)
  images = random_images() * 1e-2
  # Token variance ~1e-4, where LayerNorm eps 1e-6 vs 1e-5 is visible.
  params = random_variables(model, images, scale=0.01)["params"]
  keep_ids = jnp.array([[5, 0, 9], [15, 2, 3]], jnp.int32)
  got = model.apply({"params": params}, images, keep_ids=keep_ids)["tokens"]

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  patches = np.asarray(vit.patchify(images, PATCH), np.float64)
  embedded = patches @ p["patch_embed"]["kernel"].reshape(-1, WIDTH) + p["patch_embed"]["bias"]
  embedded = embedded + p["pos_embed"][:, 1:]
  kept = np.take_along_axis(embedded, np.asarray(keep_ids)[:, :, None], axis=1)
  cls = np.broadcast_to(p["cls_token"] + p["pos_embed"][:, :1], (BATCH, 1, WIDTH))
  expected = np_layer_norm(np.concatenate([cls, kept], axis=1), p["norm"], 1e-6)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5)
  assert not np.allclose(
      np_layer_norm(np.concatenate([cls, kept], axis=1), p["norm"], 1e-5), expected,
      rtol=1e-4, atol=1e-5)


def test_patch_embed_is_the_stride_p_convolution_it_replaces():
  """PatchEmbed's matmul over patchify equals timm's / MAE's patch_embed.proj, a [p, p, C, D]
  convolution of stride p, on the same params."""
  images = random_images()
  module = vit.PatchEmbed(PATCH, WIDTH)
  params = random_variables(module, vit.patchify(images, PATCH))["params"]
  assert params["kernel"].shape == (PATCH, PATCH, images.shape[-1], WIDTH)
  got = module.apply({"params": params}, vit.patchify(images, PATCH))
  conv = jax.lax.conv_general_dilated(
      images, params["kernel"], (PATCH, PATCH), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  expected = (conv + params["bias"]).reshape(got.shape)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_vit_output_shapes_full_and_masked(vit_and_params):
  model, params, images = vit_and_params
  full = model.apply({"params": params}, images)
  assert full["tokens"].shape == (BATCH, 1 + NUM_PATCHES, WIDTH)
  assert full["cls"].shape == full["mean"].shape == full["pooled"].shape == (BATCH, WIDTH)
  np.testing.assert_array_equal(full["pooled"], full["cls"])
  np.testing.assert_allclose(full["mean"], full["tokens"][:, 1:].mean(axis=1), rtol=1e-5,
                             atol=1e-6)
  keep_ids = jnp.tile(jnp.arange(4, dtype=jnp.int32)[None], (BATCH, 1))
  masked = model.apply({"params": params}, images, keep_ids=keep_ids)
  assert masked["tokens"].shape == (BATCH, 1 + 4, WIDTH)
  mean_model = tiny_vit(pool="mean")
  pooled = mean_model.apply({"params": params}, images)["pooled"]
  np.testing.assert_allclose(pooled, full["mean"], rtol=1e-6)
  assert model.feature_dim == WIDTH


def test_keep_all_ids_in_order_equals_full_path(vit_and_params):
  model, params, images = vit_and_params
  keep_ids = jnp.tile(jnp.arange(NUM_PATCHES, dtype=jnp.int32)[None], (BATCH, 1))
  full = model.apply({"params": params}, images)["tokens"]
  masked = model.apply({"params": params}, images, keep_ids=keep_ids)["tokens"]
  np.testing.assert_allclose(masked, full, rtol=1e-5, atol=1e-5)


def test_permuting_keep_ids_permutes_patch_tokens(vit_and_params):
  model, params, images = vit_and_params
  keep_ids = jnp.array([[3, 7, 1, 12, 0], [9, 2, 15, 4, 6]], jnp.int32)
  permutation = jnp.array([4, 2, 0, 3, 1])
  out = model.apply({"params": params}, images, keep_ids=keep_ids)["tokens"]
  permuted = model.apply({"params": params}, images, keep_ids=keep_ids[:, permutation])["tokens"]
  np.testing.assert_allclose(permuted[:, 1:], out[:, 1:][:, permutation], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(permuted[:, 0], out[:, 0], rtol=1e-5, atol=1e-5)
  # Which patches are kept matters (positions are added before the gather).
  other = model.apply({"params": params}, images, keep_ids=keep_ids[::-1])["tokens"]
  assert not np.allclose(other, out, atol=1e-3)


def test_attention_weights_are_sown(vit_and_params):
  model, params, images = vit_and_params
  _, state = model.apply({"params": params}, images, mutable=["intermediates"])
  inter = state["intermediates"]
  assert sorted(inter) == ["blocks_0", "blocks_1"]
  (weights,) = inter["blocks_1"]["attn"]["attention"]
  tokens = 1 + NUM_PATCHES
  assert weights.shape == (BATCH, HEADS, tokens, tokens) and weights.dtype == jnp.float32
  np.testing.assert_allclose(weights.sum(-1), np.ones((BATCH, HEADS, tokens)), rtol=1e-5)
  assert (weights >= 0).all()


def test_param_layout_mirrors_timm(vit_and_params):
  _, params, _ = vit_and_params
  assert params["patch_embed"]["kernel"].shape == (PATCH, PATCH, CHANNELS, WIDTH)
  assert params["cls_token"].shape == (1, 1, WIDTH)
  assert params["pos_embed"].shape == (1, 1 + NUM_PATCHES, WIDTH)
  block = params["blocks_0"]
  assert set(block) == {"norm1", "attn", "norm2", "mlp"}
  assert block["attn"]["qkv"]["kernel"].shape == (WIDTH, 3 * WIDTH)
  assert block["attn"]["qkv"]["bias"].shape == (3 * WIDTH,)
  assert block["attn"]["proj"]["kernel"].shape == (WIDTH, WIDTH)
  assert block["mlp"]["fc1"]["kernel"].shape == (WIDTH, 4 * WIDTH)
  assert block["mlp"]["fc2"]["kernel"].shape == (4 * WIDTH, WIDTH)
  assert set(params) == {"patch_embed", "cls_token", "pos_embed", "blocks_0", "blocks_1", "norm"}
  # Initialisation as MAE: zero biases, unit LayerNorm scale, xavier-uniform bounds.
  np.testing.assert_array_equal(block["attn"]["qkv"]["bias"], 0.0)
  np.testing.assert_array_equal(block["norm1"]["scale"], 1.0)
  assert np.abs(block["attn"]["qkv"]["kernel"]).max() <= math.sqrt(6 / (WIDTH + 3 * WIDTH))
  fan_in, fan_out = PATCH * PATCH * CHANNELS, WIDTH
  assert np.abs(params["patch_embed"]["kernel"]).max() <= math.sqrt(6 / (fan_in + fan_out))


def test_sincos_pos_embed_is_fixed_not_a_param():
  model = tiny_vit(depth=0, pos_embed="sincos")
  images = random_images()
  params = random_variables(model, images)["params"]
  assert "pos_embed" not in params
  params = jax.tree.map(jnp.zeros_like, params)  # patch embedding and cls token contribute 0
  params["norm"]["scale"] = jnp.ones(WIDTH)
  tokens = model.apply({"params": params}, images)["tokens"]
  fixed = vit.sincos_pos_embed_2d(WIDTH, IMAGE // PATCH, with_cls_token=True)
  np.testing.assert_allclose(tokens[0, 1:], np_layer_norm(fixed[0, 1:], params["norm"], 1e-6),
                             rtol=1e-4, atol=1e-5)


def test_learned_pos_embed_is_resampled_for_other_grids(vit_and_params):
  model, params, _ = vit_and_params
  small = model.apply({"params": params}, random_images(size=8))
  assert small["tokens"].shape == (BATCH, 1 + 4, WIDTH)
  table = jax.random.normal(jax.random.key(0), (1, 16, 5))
  assert vit.resize_pos_embed(table, (4, 4), (4, 4)) is table
  constant = jnp.full((1, 16, 5), 0.3)
  np.testing.assert_allclose(vit.resize_pos_embed(constant, (4, 4), (2, 3)),
                             np.full((1, 6, 5), 0.3), rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
  model = tiny_vit(dtype=jnp.bfloat16)
  images = random_images()
  params = random_variables(model, images)["params"]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  out = jax.jit(model.apply)({"params": params}, images)  # one compile beats eager bf16 ops
  assert all(out[key].dtype == jnp.bfloat16 for key in ("tokens", "cls", "mean", "pooled"))
  reference = tiny_vit().apply({"params": params}, images)["tokens"]
  np.testing.assert_allclose(np.asarray(out["tokens"], np.float32), reference, atol=0.1)


def test_drop_path_only_in_training():
  model = tiny_vit(drop_path_rate=0.5)
  images = random_images()
  params = random_variables(model, images)["params"]
  evaluated = model.apply({"params": params}, images)["tokens"]
  np.testing.assert_allclose(tiny_vit().apply({"params": params}, images)["tokens"], evaluated)
  trained = [model.apply({"params": params}, images, train=True,
                         rngs={"dropout": jax.random.key(seed)})["tokens"] for seed in range(3)]
  assert not np.allclose(trained[0], evaluated, atol=1e-3)
  assert not (np.allclose(trained[0], trained[1], atol=1e-3)
              and np.allclose(trained[0], trained[2], atol=1e-3))

  x = jnp.ones((64, 3, 2))
  dropped = vit.DropPath(0.25).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
  per_sample = np.asarray(dropped[:, 0, 0])
  assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
  np.testing.assert_array_equal(dropped, np.broadcast_to(per_sample[:, None, None], x.shape))
  assert 0 < (per_sample == 0).sum() < 64


def test_vit_rejects_bad_inputs(vit_and_params):
  model, params, images = vit_and_params
  with pytest.raises(ValueError, match="not divisible by patch size"):
    model.apply({"params": params}, jnp.zeros((1, 18, 16, 3)))
  with pytest.raises(ValueError, match="integer"):
    model.apply({"params": params}, images, keep_ids=jnp.zeros((BATCH, 2)))
  with pytest.raises(ValueError, match="pool"):
    tiny_vit(pool="max").init(jax.random.key(0), images)


# --------------------------------------------------------------------------- ResNet

@pytest.mark.parametrize("depth,stem,size,spatial,width", [
    (18, "cifar", 32, 4, 512),
    (18, "imagenet", 64, 2, 512),
    (50, "cifar", 32, 4, 2048),
    (50, "imagenet", 64, 2, 2048),
])
def test_resnet_shapes_and_parameter_counts(depth, stem, size, spatial, width):
  model = resnet.ResNet(depth=depth, stem=stem)
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  out = jax.eval_shape(model.apply, variables, images)
  assert out["pooled"].shape == (2, width)
  assert out["feature_map"].shape == (2, spatial, spatial, width)
  assert model.feature_dim == width
  # torchvision resnet18 / resnet50 parameter counts minus the 1000-way fc layer; the cifar stem
  # swaps the 7x7x3x64 conv for a 3x3x3x64 one.
  torchvision = {18: 11_689_512 - 513_000, 50: 25_557_032 - 2_049_000}[depth]
  expected = torchvision - (49 - 9) * 3 * 64 * (stem == "cifar")
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == expected


def test_conv_bn_pads_like_torch_and_normalises_with_eps_1e5():
  """7x7/2 on an even input: torch pads 3 on each side where 'SAME' would pad (2, 3)."""
  layer = resnet.ConvBN(features=4, kernel_size=7, stride=2)
  images = random_images(size=10)
  variables = random_variables(layer, images, train=False)
  variables["batch_stats"]["bn"]["var"] = jnp.full((4,), 1e-4)  # makes eps visible
  got = layer.apply(variables, images, train=False)
  conv = jax.lax.conv_general_dilated(
      images, variables["params"]["conv"]["kernel"], (2, 2), ((3, 3), (3, 3)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  stats, bn = variables["batch_stats"]["bn"], variables["params"]["bn"]
  expected = (conv - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * bn["scale"] + bn["bias"]
  assert got.shape == (BATCH, 5, 5, 4)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_residual_branches_start_as_zero():
  """Goyal et al.: the last BN of each residual branch starts at gamma = 0, so block(x) = relu(x)."""
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  blocks = {"conv_bn2": resnet.BasicBlock(8), "conv_bn3": resnet.Bottleneck(2)}
  init_all = jax.jit(lambda key: {name: block.init(key, x, train=False)
                                  for name, block in blocks.items()})
  for last_bn, variables in init_all(init_key()).items():
    np.testing.assert_array_equal(variables["params"][last_bn]["bn"]["scale"], 0.0)
    np.testing.assert_array_equal(variables["params"]["conv_bn1"]["bn"]["scale"], 1.0)
    assert "downsample" not in variables["params"]
    np.testing.assert_allclose(blocks[last_bn].apply(variables, x, train=False), jax.nn.relu(x),
                               atol=1e-6)


def test_resnet_batch_norm_train_and_eval():
  model = resnet.ResNet(depth=18, stem="cifar", width=8)
  images = random_images(batch=8, size=8)
  variables = random_variables(model, images)
  variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))

  out, updates = apply(variables, images, train=True, mutable=("batch_stats",))
  assert out["pooled"].shape == (8, 64)
  old_stats = variables["batch_stats"]["stem"]["bn"]
  new_stats = updates["batch_stats"]["stem"]["bn"]
  conv = jax.lax.conv_general_dilated(
      images, variables["params"]["stem"]["conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # Flax momentum 0.9: running = 0.9 * running + 0.1 * batch statistic (biased variance).
  np.testing.assert_allclose(
      new_stats["mean"], 0.9 * old_stats["mean"] + 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4,
      atol=1e-6)
  np.testing.assert_allclose(
      new_stats["var"], 0.9 * old_stats["var"] + 0.1 * conv.var(axis=(0, 1, 2)), rtol=1e-4)

  # With the batch sharded over devices, jit still normalises with global batch statistics.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded = jax.device_put(images, jax.NamedSharding(mesh, jax.P("data")))
  sharded_out, sharded_updates = apply(variables, sharded, train=True, mutable=("batch_stats",))
  np.testing.assert_allclose(sharded_out["pooled"], out["pooled"], rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(sharded_updates["batch_stats"]["stem"]["bn"]["var"], new_stats["var"],
                             rtol=1e-5)

  # Eval mode uses running statistics: a sample's features do not depend on the rest of the
  # batch (in train mode they do).
  other_batch = images.at[1].set(5.0 * images[1])
  new_variables = {"params": variables["params"], **updates}
  np.testing.assert_allclose(apply(new_variables, other_batch)["pooled"][0],
                             apply(new_variables, images)["pooled"][0], rtol=1e-5, atol=1e-6)
  trained_other, _ = apply(variables, other_batch, train=True, mutable=("batch_stats",))
  assert not np.allclose(trained_other["pooled"][0], out["pooled"][0], atol=1e-4)


def test_resnet_rejects_bad_attributes():
  with pytest.raises(ValueError, match="depth"):
    resnet.ResNet(depth=34).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="stem"):
    resnet.ResNet(depth=18, stem="tiny").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


# --------------------------------------------------------------------------- registry

def test_registry_builds_named_backbones():
  config = ml_collections.ConfigDict(dict(name="vit_s16", dtype="bfloat16", pool="mean",
                                          pos_embed="sincos", drop_path_rate=0.1))
  model = registry.build_encoder(config)
  assert isinstance(model, vit.VisionTransformer)
  assert (model.hidden_size, model.depth, model.num_heads, model.patch_size) == (384, 12, 6, 16)
  assert (model.pool, model.pos_embed, model.drop_path_rate) == ("mean", "sincos", 0.1)
  assert model.dtype == jnp.bfloat16 and model.param_dtype == jnp.float32
  assert registry.parse_vit_name("vit_h14") == (
      dict(hidden_size=1280, depth=32, num_heads=16), 14)
  assert registry.feature_dim(ml_collections.ConfigDict(dict(name="vit_l16"))) == 1024
  assert registry.feature_dim(ml_collections.ConfigDict(dict(name="vit_ti4"))) == 192

  defaults = registry.build_encoder(ml_collections.ConfigDict(dict(name="vit_b8")))
  assert (defaults.pool, defaults.pos_embed, defaults.dtype) == ("cls", "learn", jnp.float32)
  cnn = registry.build_encoder(ml_collections.ConfigDict(dict(name="resnet50", stem="cifar",
                                                              pool="cls")))
  assert isinstance(cnn, resnet.ResNet) and (cnn.depth, cnn.stem) == (50, "cifar")
  assert registry.feature_dim(ml_collections.ConfigDict(dict(name="resnet18"))) == 512


@pytest.mark.parametrize("config,message", [
    (dict(name="vit_x16"), "valid names are: vit_ti4"),
    (dict(name="vit_s12"), "Unknown model name 'vit_s12'"),
    (dict(name="resnet34"), "resnet18, resnet50"),
    (dict(), "no 'name'"),
    (dict(name="vit_s16", dtype="float16"), "model.dtype"),
    (dict(name="vit_s16", pool="max"), "model.pool"),
    (dict(name="vit_s16", pos_embed="rope"), "model.pos_embed"),
    (dict(name="vit_s16", drop_path_rate=1.0), "drop_path_rate"),
    (dict(name="vit_s16", class_token=False, pool="cls"), "model.pool='mean'"),
    (dict(name="resnet18", stem="tiny"), "model.stem"),
])
def test_registry_rejects_bad_configs(config, message):
  with pytest.raises(ValueError, match=message):
    registry.build_encoder(ml_collections.ConfigDict(config))


# --------------------------------------------------------------------------- no class token

# timm's state_dict keys of VisionTransformer(depth=1, class_token=False, global_pool='avg'),
# head excluded: no cls_token, pos_embed without a CLS row, fc_norm instead of norm.
TIMM_NO_CLASS_TOKEN_KEYS = {
    "patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed",
    "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight",
    "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
    "blocks.0.norm2.weight", "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight",
    "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias",
    "fc_norm.weight", "fc_norm.bias"}


def _timm_name(path):
  """The timm key of a Flax ViT param path (the rule of ssl_jax/interop/timm.py)."""
  *modules, leaf = path
  modules = ["patch_embed.proj" if m == "patch_embed" else m.replace("blocks_", "blocks.")
             for m in modules]
  leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
  return ".".join([*modules, leaf])


def test_vit_without_class_token_pools_like_timm_avg():
  """class_token=False: pooled = fc_norm(mean of the last block's tokens), timm's order."""
  model = tiny_vit(depth=1, class_token=False, pool="mean")
  images = random_images()
  params = random_variables(model, images, scale=0.3)["params"]
  assert "cls_token" not in params and "norm" not in params
  assert params["pos_embed"].shape == (1, NUM_PATCHES, WIDTH)
  names = {_timm_name(path) for path in traverse_util.flatten_dict(params)}
  assert names == TIMM_NO_CLASS_TOKEN_KEYS

  out = model.apply({"params": params}, images)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  patches = np.asarray(vit.patchify(images, PATCH), np.float64)
  tokens = patches @ p["patch_embed"]["kernel"].reshape(-1, WIDTH) + p["patch_embed"]["bias"]
  tokens = np_block(tokens + p["pos_embed"], p["blocks_0"], HEADS)
  np.testing.assert_allclose(np.asarray(out["tokens"]), tokens, rtol=1e-4, atol=1e-4)
  expected = np_layer_norm(tokens.mean(axis=1), p["fc_norm"], 1e-6)
  np.testing.assert_allclose(np.asarray(out["pooled"]), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(out["mean"], out["pooled"])
  # Normalising before the average (the class-token ViT's pool='mean') is a different feature.
  assert not np.allclose(np_layer_norm(tokens, p["fc_norm"], 1e-6).mean(axis=1), expected,
                         rtol=1e-3, atol=1e-3)

  # The registry builds it from model.class_token; local crops resample the CLS-free table.
  built = registry.build_encoder(ml_collections.ConfigDict(dict(
      name="vit_ti4", hidden_size=WIDTH, depth=1, num_heads=HEADS, pool="mean",
      class_token=False)))
  assert not built.class_token
  small = model.apply({"params": params}, random_images(size=IMAGE // 2))
  assert small["tokens"].shape == (BATCH, NUM_PATCHES // 4, WIDTH)
  with pytest.raises(ValueError, match="pool='mean'"):
    tiny_vit(class_token=False, pool="cls").init(jax.random.key(0), images)

