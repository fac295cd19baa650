"""ViT speed levers (model.attention_impl, model.remat, model.scan_blocks, model.token_gather):
same params, same outputs and gradients as the plain path on CPU; attention maps, timm export
and the MAE loss unchanged; cuDNN's padding of odd token counts exact; bad values rejected with
the valid ones."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import attention, config_lib
from ssl_jax.data import masking
from ssl_jax.interop import timm as timm_interop
from ssl_jax.methods import build_method
from ssl_jax.models import registry, vit

TINY = dict(patch_size=4, hidden_size=32, depth=2, num_heads=4)
# remat="full" and scan alone: the stochastic-depth test below (outputs) and the slow MAE test.
LEVERS = {
    "xla_attention": dict(attention_impl="xla"),
    "remat_dots_scan_xla": dict(scan_blocks=True, remat="dots_with_no_batch_dims_saveable",
                                attention_impl="xla"),
    "remat_dots_loop": dict(remat="dots_saveable"),
}
# XLA reassociates float32 sums differently in a fused attention or a scanned body.
TOLERANCE = dict(rtol=2e-5, atol=2e-5)


def _loss_and_grads(model, params, images):
  # A fixed random projection of every token: gradients of order 1 everywhere (a loss such as
  # sum(tokens**2) is nearly constant after the final LayerNorm, its gradients mostly rounding).
  weights = jax.random.normal(jax.random.PRNGKey(2), (17, TINY["hidden_size"]))
  loss = lambda p: jnp.sum(model.apply({"params": p}, images)["tokens"] * weights)
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def plain():
  model = vit.VisionTransformer(**TINY)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), images)["params"]
  return images, params, _loss_and_grads(model, params, images)


@pytest.mark.parametrize("lever", sorted(LEVERS))
def test_lever_keeps_params_outputs_and_gradients(plain, lever):
  images, params, (loss, grads) = plain
  model = vit.VisionTransformer(**TINY, **LEVERS[lever])
  own = jax.eval_shape(model.init, jax.random.PRNGKey(1), images)["params"]
  assert jax.tree.map(lambda x: x.shape, own) == jax.tree.map(lambda x: x.shape, params)
  lever_loss, lever_grads = _loss_and_grads(model, params, images)
  np.testing.assert_allclose(lever_loss, loss, **TOLERANCE)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOLERANCE), lever_grads, grads)


def test_remat_keeps_stochastic_depth_masks_and_scan_draws_them(plain):
  images, params, _ = plain

  def tokens_fn(train=True, **attributes):  # seed -> tokens, compiled once per model.
    model = vit.VisionTransformer(**TINY, drop_path_rate=0.5, **attributes)
    return jax.jit(lambda seed: model.apply({"params": params}, images, train=train, rngs={
        "dropout": jax.random.PRNGKey(seed)})["tokens"])

  np.testing.assert_array_equal(tokens_fn(remat="full")(3), tokens_fn()(3))
  scanned = tokens_fn(scan_blocks=True)
  evaluated = tokens_fn(train=False, scan_blocks=True)(0)
  # Masks do drop branches (differ from eval and between keys), and eval equals the loop's.
  assert not np.allclose(scanned(3), evaluated)
  assert not np.allclose(scanned(3), scanned(4))
  np.testing.assert_allclose(evaluated, tokens_fn(train=False)(0), **TOLERANCE)


def test_attention_maps_of_a_fused_attention_scanned_encoder(plain):
  images, params, _ = plain
  fused = vit.VisionTransformer(**TINY, attention_impl="xla", scan_blocks=True)
  np.testing.assert_allclose(
      attention.cls_attention(fused, params, images),
      attention.cls_attention(vit.VisionTransformer(**TINY), params, images), rtol=1e-6)


def test_timm_export_of_a_scanned_encoder_has_the_plain_keys():
  model = dict(name="vit_ti4", hidden_size=32, depth=2, num_heads=2)
  dicts = []
  for extra in ({}, dict(scan_blocks=True, remat="full", attention_impl="xla")):
    encoder = registry.build_encoder(ml_collections.ConfigDict({**model, **extra}))
    variables = jax.eval_shape(encoder.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    variables = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), variables)
    dicts.append(timm_interop.to_state_dict(encoder, variables, image_size=16))
  shapes = [{key: value.shape for key, value in d.items()} for d in dicts]
  assert shapes[0] == shapes[1] and shapes[1]["blocks.1.attn.qkv.weight"] == (96, 32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_onehot_token_gather_equals_take_in_values_and_gradients(dtype):
  tokens = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 6)).astype(dtype)
  ids = jax.vmap(lambda k: jax.random.permutation(k, 10)[:4])(
      jax.random.split(jax.random.PRNGKey(1), 3))
  cotangent = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 6)).astype(dtype)
  results = {}
  for impl in masking.TOKEN_GATHERS:
    out, vjp = jax.vjp(lambda t, impl=impl: masking.select_tokens(t, ids, impl), tokens)
    results[impl] = (out, vjp(cotangent)[0])
  np.testing.assert_array_equal(np.asarray(results["take"][0], np.float32),
                                np.asarray(tokens, np.float32)[np.arange(3)[:, None], ids])
  for a, b in zip(results["onehot"], results["take"]):
    assert a.dtype == b.dtype == dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  with pytest.raises(ValueError, match="take"):
    masking.select_tokens(tokens, ids, "scatter")


def test_mae_with_onehot_token_gather_has_the_plain_loss():
  # Encoder (visible patches) and decoder (unshuffle) both gather with the lever; the gradients'
  # equality is select_tokens' VJP test above and the slow all-levers MAE test below.
  config = config_lib.load_config("configs/mae.py:smoke")
  batch = {"image": np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8),
           "label": np.zeros((4,), np.int32)}
  losses = []
  for token_gather in masking.TOKEN_GATHERS:
    config.model.token_gather = token_gather
    method = build_method(config)
    params, state = method.init(jax.random.PRNGKey(0), batch)
    losses.append(jax.jit(lambda p, method=method, state=state: method.loss(
        p, state, batch, jax.random.PRNGKey(1), jnp.int32(0))[0])(params))
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)


@pytest.mark.slow
def test_mae_loss_with_every_lever_equals_the_plain_loss():
  config = config_lib.load_config("configs/mae.py:smoke")
  config.batch_size = 4
  batch = {"image": np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8),
           "label": np.zeros((4,), np.int32)}
  results = []
  for levers in ({}, dict(attention_impl="xla", remat="full", scan_blocks=True,
                          token_gather="onehot")):
    config.model.update(levers)
    method = build_method(config)
    params, state = method.init(jax.random.PRNGKey(0), batch)
    loss_fn = lambda p: method.loss(p, state, batch, jax.random.PRNGKey(1), jnp.int32(0))[0]
    results.append((params, jax.value_and_grad(loss_fn)(params)))
  (params, (loss, grads)), (lever_params, (lever_loss, lever_grads)) = results
  jax.tree.map(np.testing.assert_array_equal, lever_params, params)
  np.testing.assert_allclose(lever_loss, loss, **TOLERANCE)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               lever_grads, grads)


@pytest.mark.parametrize("key,value,match", [
    ("model.remat", "dots", "model.remat"), ("model.attention_impl", "flash", "attention_impl"),
    ("model.token_gather", "scatter", "token_gather")])
def test_bad_lever_values_name_the_valid_ones(key, value, match):
  config = config_lib.load_config("configs/mae.py:smoke")
  config.lock()
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.apply_overrides(config, [f"{key}={value}"])
    config_lib.validate(config)


def test_cudnn_attention_off_gpu_is_the_same_math_via_xla(caplog):
  if jax.default_backend() == "gpu":
    pytest.skip("on a GPU cudnn is used as asked")
  options = registry.vit_speed_options(
      ml_collections.ConfigDict({"attention_impl": "cudnn", "dtype": "bfloat16"}))
  assert options["attention_impl"] == "xla"
  assert "needs an NVIDIA GPU" in caplog.text


def test_cudnn_attention_in_float32_is_the_same_math_via_xla(caplog):
  """cuDNN's fused attention has no float32 kernel: XLA's fused attention instead, on any
  backend, with a warning (not a failure inside the trace)."""
  options = registry.vit_speed_options(ml_collections.ConfigDict({"attention_impl": "cudnn"}))
  assert options["attention_impl"] == "xla"
  assert "needs model.dtype=bfloat16; with float32" in caplog.text


@pytest.mark.parametrize("num_tokens,multiple", [(5, 2), (17, 8), (16, 2)])
def test_fused_attention_padding_keeps_outputs_and_gradients(num_tokens, multiple):
  """cuDNN's padded path (odd lengths, MAE's 197-token decoder), run here through XLA: padding to
  a multiple with the padded keys masked gives the unpadded attention's values and gradients."""
  shape = (2, num_tokens, 4, 8)
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), shape) for i in range(3))
  weights = jax.random.normal(jax.random.PRNGKey(3), shape)

  def loss(multiple, q, k, v):
    out = vit.fused_attention(q, k, v, scale=8 ** -0.5, implementation="xla",
                              length_multiple=multiple)
    assert out.shape == shape
    return jnp.sum(out * weights)

  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3)), static_argnums=0)(
      multiple, q, k, v)
  reference = lambda q, k, v: jnp.sum(jnp.einsum(
      "bhqk,bkhd->bqhd", jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * 8 ** -0.5), v)
      * weights)
  ref_value, ref_grads = jax.jit(jax.value_and_grad(reference, argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(value, ref_value, **TOLERANCE)
  for grad, ref_grad in zip(grads, ref_grads):
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, ref_grad, **TOLERANCE)
