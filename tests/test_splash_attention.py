"""TPU splash attention (`model.attention_impl='splash'`), run on CPU in Pallas' interpreter:
the unpadded attention's values and gradients at lengths that need padding and at one that
does not; split over the batch by hand under a multi-device mesh; a ViT with it equals the plain
ViT; off a TPU a config asking for it gets XLA's attention with a warning."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import config_lib, parallel
from ssl_jax.models import registry, splash, vit

TOLERANCE = dict(rtol=2e-5, atol=2e-5)


def _inputs(shape):
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), shape) for i in range(3))
  return q, k, v, jax.random.normal(jax.random.PRNGKey(3), shape)


def _reference(q, k, v, scale):
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") * scale
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits), v, precision="highest")


def _value_and_grads(attend, q, k, v, weights):
  loss = lambda q, k, v: jnp.sum(attend(q, k, v) * weights)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("num_tokens", [17, 128])
def test_splash_attention_equals_attention_in_values_and_gradients(num_tokens):
  """17 is padded to 128 (the padding a segment of its own), 128 is not. Without the segment
  mask the padded keys (zeros, logit 0) would take weight from the real ones."""
  q, k, v, weights = _inputs((2, num_tokens, 2, 8))
  scale = 8 ** -0.5
  value, grads = _value_and_grads(
      lambda q, k, v: splash.splash_attention(q, k, v, scale=scale, interpret=True),
      q, k, v, weights)
  ref_value, ref_grads = _value_and_grads(lambda q, k, v: _reference(q, k, v, scale),
                                          q, k, v, weights)
  np.testing.assert_allclose(value, ref_value, **TOLERANCE)
  for grad, ref_grad in zip(grads, ref_grads):
    np.testing.assert_allclose(grad, ref_grad, **TOLERANCE)


def test_splash_attention_under_a_mesh_runs_each_devices_rows(monkeypatch):
  """XLA cannot split a Pallas call, so under a mesh the batch is shard_mapped: each of the 8
  devices' kernels sees its own 2 of the 16 rows, and the result is the unsplit one."""
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 2}))
  assert mesh.size == 8
  seen_rows = []
  local = splash._local_attention

  def recording(query, *args, **kwargs):
    seen_rows.append(query.shape[0])
    return local(query, *args, **kwargs)

  monkeypatch.setattr(splash, "_local_attention", recording)
  q, k, v, _ = _inputs((16, 17, 2, 8))
  attend = lambda q, k, v: splash.splash_attention(q, k, v, scale=0.5, interpret=True)
  rows = NamedSharding(mesh, P(parallel.BATCH_AXES))
  sharded = jax.jit(parallel.on_mesh(attend, mesh), in_shardings=(rows,) * 3,
                    out_shardings=rows)(q, k, v)
  assert seen_rows == [2]
  np.testing.assert_allclose(sharded, _reference(q, k, v, 0.5), **TOLERANCE)
  seen_rows.clear()
  jax.jit(attend)(q, k, v)  # No mesh in context: one call over the whole batch.
  assert seen_rows == [16]


def test_on_mesh_sets_the_mesh_only_while_the_function_runs():
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
  seen = []
  wrapped = parallel.on_mesh(lambda x: seen.append(parallel.current_mesh()) or x, mesh)
  assert parallel.current_mesh() is None
  wrapped(1)
  assert seen == [mesh] and parallel.current_mesh() is None


def test_vit_with_splash_attention_equals_the_plain_vit():
  tiny = dict(patch_size=4, hidden_size=32, depth=1, num_heads=4)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  plain = vit.VisionTransformer(**tiny)
  params = jax.jit(plain.init)(jax.random.PRNGKey(1), images)["params"]
  weights = jax.random.normal(jax.random.PRNGKey(2), (17, tiny["hidden_size"]))
  results = []
  for model in (plain, vit.VisionTransformer(**tiny, attention_impl="splash")):
    loss = lambda p: jnp.sum(model.apply({"params": p}, images)["tokens"] * weights)
    results.append(jax.jit(jax.value_and_grad(loss))(params))
  (loss, grads), (splash_loss, splash_grads) = results
  np.testing.assert_allclose(splash_loss, loss, **TOLERANCE)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOLERANCE), splash_grads, grads)


def test_splash_attention_off_tpu_is_the_same_math_via_xla(caplog):
  if jax.default_backend() == "tpu":
    pytest.skip("on a TPU splash is used as asked")
  config = config_lib.load_config("configs/mae.py:smoke")
  config_lib.apply_overrides(config, ["model.attention_impl=splash"])
  config_lib.validate(config)
  options = registry.vit_speed_options(config.model)
  assert options["attention_impl"] == "xla"
  assert "needs a TPU" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_a_sharded_mae_step_with_splash_attention_has_the_plain_loss(monkeypatch,
                                                                      grad_accum_steps):
  """The whole train step on the 8-device mesh (the loop's `parallel.on_mesh` wrapper, the
  shard_mapped kernel inside value_and_grad, microbatches): the plain step's loss."""
  from ssl_jax import trainer
  speed_options = registry.vit_speed_options
  images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), np.uint8)
  losses = {}
  for impl in ("plain", "splash"):
    # Past the off-TPU fallback to 'xla': the kernel runs in Pallas' interpreter.
    monkeypatch.setattr(registry, "vit_speed_options",
                        lambda m, impl=impl: {**speed_options(m), "attention_impl": impl})
    config = config_lib.load_config("configs/mae.py:smoke")
    config_lib.apply_overrides(config, ["batch_size=16",
                                        f"optim.grad_accum_steps={grad_accum_steps}"])
    setup = trainer.build(config, total_steps=10, steps_per_epoch=10)
    assert setup.mesh.size == 8
    batch = setup.global_batch({"image": images, "label": np.zeros((16,), np.int32)})
    _, metrics = setup.step(setup.init_state(), batch)
    losses[impl] = float(metrics["train/loss"])
  np.testing.assert_allclose(losses["splash"], losses["plain"], rtol=1e-5)
