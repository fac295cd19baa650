"""The sharded train step (data and fsdp meshes over 8 CPU devices) equals the 1-device step."""

import jax
import numpy as np
import pytest

from ssl_jax import config_lib, parallel, trainer


def _run_steps(config, devices, mesh_data, mesh_fsdp, batches):
  config = config_lib.from_json(config_lib.to_json(config))  # private copy
  config.mesh.data, config.mesh.fsdp = mesh_data, mesh_fsdp
  setup = trainer.build(config, devices=devices, total_steps=10, steps_per_epoch=10)
  state = setup.init_state()
  losses = []
  for batch in batches:
    state, metrics = setup.step(state, setup.global_batch(batch))
    losses.append(float(metrics["train/loss"]))
  return losses, jax.device_get(state["params"]), state


@pytest.fixture(scope="module")
def setup():
  config = config_lib.load_config("configs/mae.py:smoke")
  config.batch_size = 16
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
              "label": rng.integers(0, 10, (16,), dtype=np.int32)} for _ in range(2)]
  reference = _run_steps(config, jax.devices()[:1], 1, 1, batches)
  return config, batches, reference


@pytest.mark.parametrize("mesh_data,mesh_fsdp", [(8, 1), (2, 4)])
def test_sharded_step_equals_single_device(setup, mesh_data, mesh_fsdp):
  config, batches, (ref_losses, ref_params, _) = setup
  assert len(jax.devices()) == 8
  losses, params, _ = _run_steps(config, jax.devices(), mesh_data, mesh_fsdp, batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params, ref_params)


def test_grad_accumulation_averages_microbatch_gradients(setup):
  """Accumulated step == the optimizer applied to the mean of per-microbatch gradients."""
  import optax
  config, batches, _ = setup
  config = config_lib.from_json(config_lib.to_json(config))
  config.optim.grad_accum_steps = 2
  built = trainer.build(config, devices=jax.devices()[:1], total_steps=10, steps_per_epoch=10)
  method, tx, base_rng = built.method, built.tx, built.step_rng
  state = built.init_state()
  params, method_state = jax.device_get((state["params"], state["method_state"]))
  batch = jax.tree.map(jax.numpy.asarray, batches[0])
  new_state, metrics = built.step(state, built.global_batch(batches[0]))

  rng = jax.random.fold_in(base_rng, 0)
  # Jitted once for both microbatches (op-by-op, this reference took over a minute of CPU).
  loss_and_grad = jax.jit(jax.value_and_grad(
      lambda p, micro, r: method.loss(p, method_state, micro, r, 0)[0]))
  grads, losses = [], []
  for i in range(2):  # Microbatch i holds rows i, i + 2, i + 4, ...
    micro = jax.tree.map(lambda x: x[i::2], batch)
    loss, grad = loss_and_grad(params, micro, jax.random.fold_in(rng, i))
    grads.append(grad)
    losses.append(float(loss))
  mean_grad = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  updates, _ = tx.update(mean_grad, tx.init(params), params)
  expected = optax.apply_updates(params, updates)
  np.testing.assert_allclose(float(metrics["train/loss"]), np.mean(losses), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new_state["params"], expected)


def test_fsdp_shards_params_and_optimizer_state(setup):
  config, batches, _ = setup
  _, _, replicated_state = _run_steps(config, jax.devices(), 8, 1, batches[:1])
  _, _, fsdp_state = _run_steps(config, jax.devices(), 1, 8, batches[:1])
  keys = ("params", "opt_state")
  replicated = parallel.per_device_bytes({k: replicated_state[k] for k in keys})
  sharded = parallel.per_device_bytes({k: fsdp_state[k] for k in keys})
  assert sharded < 0.35 * replicated, (sharded, replicated)


def test_batch_size_not_divisible_by_devices_is_a_clear_error():
  mesh = parallel.make_mesh(config_lib.base_config().mesh, jax.devices())
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    parallel.check_batch_size(12, mesh)


def test_mesh_errors():
  mesh_config = config_lib.base_config().mesh
  mesh_config.fsdp = 3
  with pytest.raises(ValueError, match="does not divide"):
    parallel.make_mesh(mesh_config, jax.devices())
