"""Model FLOP counting (ssl_jax/flops.py): hand-counted matmul/conv models, XLA's CPU count,
networks vs the rest of a step, scan / cond / remat, the bf16 peak table."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config_lib, flops, runs, train, trainer


class _ConvMlp(nn.Module):
  """conv 3x3 (3 -> 8, stride 2, SAME) on 8x8 -> flatten -> Dense(16) -> Dense(10)."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME", name="conv")(x)
    x = nn.Dense(16, name="fc1")(x.reshape(x.shape[0], -1))
    return nn.Dense(10, name="fc2")(nn.relu(x))


B = 4
# Forward, by hand: conv 4x4 outputs x 8 features, each a 3*3*3 dot; then B x 128 x 16, B x 16 x 10.
CONV_FWD = 2 * B * 4 * 4 * 8 * (3 * 3 * 3)
FC1_FWD = 2 * B * 128 * 16
FC2_FWD = 2 * B * 16 * 10


@pytest.fixture(scope="module")
def conv_mlp():
  model = _ConvMlp()
  images = jnp.zeros((B, 8, 8, 3))
  params = model.init(jax.random.PRNGKey(0), images)["params"]
  return model, params, images


def test_forward_flops_are_the_hand_count(conv_mlp):
  model, params, images = conv_mlp
  counted = flops.count_flops(lambda p: model.apply({"params": p}, images), params)
  assert counted.networks == counted.all == CONV_FWD + FC1_FWD + FC2_FWD


def test_forward_and_backward_is_three_forwards_less_the_input_gradient(conv_mlp):
  # Backward of each layer: the weight gradient (= its forward FLOPs) and the input gradient
  # (= its forward FLOPs), except the first layer, whose input (the images) needs no gradient.
  model, params, images = conv_mlp
  loss = lambda p: jnp.sum(model.apply({"params": p}, images) ** 2)
  counted = flops.count_flops(jax.grad(loss), params)
  assert counted.networks == 2 * CONV_FWD + 3 * FC1_FWD + 3 * FC2_FWD


@pytest.mark.parametrize("stride,kernel", [(2, 4), (2, 2), (4, 4)])
def test_input_gradient_of_a_strided_conv_costs_its_forward(stride, kernel):
  # jax writes it as a convolution over the output gradient dilated by the stride; the zeros it
  # inserts are no work (a DCGAN discriminator's backward counted 4x its forward before).
  x = jnp.ones((2, 16, 16, 8))
  w = jnp.ones((kernel, kernel, 8, 16))
  conv = lambda x: jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  forward = 2 * 2 * (16 // stride) ** 2 * 16 * kernel * kernel * 8
  assert flops.count_flops(conv, x).all == forward
  # grad = the forward (traced with it) + the input gradient.
  assert flops.count_flops(jax.grad(lambda x: jnp.sum(conv(x))), x).all == 2 * forward


def test_equals_xla_cost_analysis_on_cpu_for_pure_matmuls():
  # Without biases or activations XLA's CPU count holds only the dots, the same number.
  a, b, c = (jnp.ones(s) for s in [(32, 64), (64, 48), (48, 16)])
  chain = lambda a, b, c: (a @ b) @ c
  xla = jax.jit(chain).lower(a, b, c).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  counted = flops.count_flops(chain, a, b, c)
  assert counted.all == 2 * 32 * 64 * 48 + 2 * 32 * 48 * 16 == pytest.approx(xla["flops"])
  assert counted.networks == 0  # No Flax module: nothing counts as a network.


def test_networks_leave_out_work_outside_flax_modules(conv_mlp):
  model, params, images = conv_mlp
  resize = jnp.ones((8, 8))

  def step(p):  # An "augmentation" matmul on the images, then the network.
    views = jnp.einsum("oh,bhwc->bowc", resize, images)
    return jnp.sum(model.apply({"params": p}, views))

  counted = flops.count_flops(step, params)
  assert counted.networks == CONV_FWD + FC1_FWD + FC2_FWD
  assert counted.all - counted.networks == 2 * B * 8 * 8 * 8 * 3


def test_scan_counts_its_length_and_cond_its_costliest_branch():
  w = jnp.ones((16, 16))
  scanned = lambda x: jax.lax.scan(lambda h, _: (h @ w, None), x, None, length=5)[0]
  assert flops.count_flops(scanned, jnp.ones((4, 16))).all == 5 * 2 * 4 * 16 * 16
  branchy = lambda p, x: jax.lax.cond(p, lambda x: x @ w @ w, lambda x: x, x)
  assert flops.count_flops(branchy, True, jnp.ones((4, 16))).all == 2 * 2 * 4 * 16 * 16


def test_remat_recomputation_counts_in_all_not_in_the_plain_model(conv_mlp):
  model, params, images = conv_mlp
  remat_model = nn.remat(_ConvMlp)()
  plain = flops.count_flops(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, images))),
                            params)
  rematted = flops.count_flops(
      jax.grad(lambda p: jnp.sum(remat_model.apply({"params": p}, images))), params)
  # The backward recomputes the forward up to fc1's output (fc2's input); fc2's own output is
  # needed by no gradient, so its recomputation is dead code.
  assert rematted.all == plain.all + CONV_FWD + FC1_FWD


def test_bf16_peaks_and_mfu():
  assert flops.bf16_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert flops.bf16_peak_flops("NVIDIA H100 PCIe") == 756e12
  assert flops.bf16_peak_flops("TPU v5 lite") == 197e12
  assert flops.bf16_peak_flops("TPU v5") == 459e12
  assert flops.bf16_peak_flops("cpu") is None
  np.testing.assert_allclose(flops.mfu(989e12 * 0.5, 1.0, 989e12), 0.5)
  assert flops.mfu(1e9, 1.0, None) is None


def _mae_smoke(**overrides):
  config = config_lib.load_config("configs/mae.py:smoke")
  config.lock()
  config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
  return config


def test_model_flops_of_a_step_do_not_depend_on_the_levers():
  count = lambda config: trainer.model_flops_per_step(config, total_steps=10, steps_per_epoch=5)
  plain = count(_mae_smoke(batch_size=8))
  levers = {"model.remat": "full", "model.scan_blocks": "True", "model.attention_impl": "xla",
            "model.token_gather": "onehot"}
  assert count(_mae_smoke(batch_size=8, **levers)) == plain > 0
  # The run's own setup is counted as it is, or rebuilt without the levers.
  for config in (_mae_smoke(batch_size=8), _mae_smoke(batch_size=8, **levers)):
    setup = trainer.build(config, total_steps=10, steps_per_epoch=5)
    assert trainer.model_flops_per_step(config, total_steps=10, steps_per_epoch=5,
                                        setup=setup) == plain


@pytest.mark.slow  # A whole (tiny) run: ~15 s of CPU.
def test_train_loop_logs_mfu_model_where_the_peak_is_known(tmp_path, monkeypatch):
  # CPU has no published peak; give it one so the accelerator-only meter runs here.
  monkeypatch.setattr(flops, "bf16_peak_flops", lambda device_kind: 1e12)
  config = _mae_smoke(batch_size=8, total_steps=4, log_every=2, checkpoint_every=4,
                      eval_every=0, export_at_end=False, visualize=False)
  config_lib.apply_overrides(config, ["eval.protocols="])
  train.train_and_evaluate(config, str(tmp_path))
  logged = [r for r in runs.read_metrics(tmp_path) if "train/mfu_model" in r]
  model_flops = trainer.model_flops_per_step(config, total_steps=4, steps_per_epoch=1)
  assert [r["step"] for r in logged] == [2, 4]
  for record in logged:
    np.testing.assert_allclose(
        record["train/mfu_model"],
        record["train/steps_per_sec"] * model_flops / (1e12 * jax.device_count()), rtol=1e-6)


def test_matmul_flops_by_dtype_splits_by_operand_and_result_dtype():
  def step(a, b, c):
    x = jnp.dot(a, b)                                             # bf16 x bf16 -> bf16
    y = jnp.dot(a, b, preferred_element_type=jnp.float32)         # bf16 x bf16 -> f32
    z = jax.lax.scan(lambda carry, _: (carry @ c, None), y, None, length=3)[0]  # f32, 3 times
    return x, z
  a = jnp.ones((4, 8), jnp.bfloat16)
  b = jnp.ones((8, 16), jnp.bfloat16)
  c = jnp.ones((16, 16), jnp.float32)
  counts = flops.matmul_flops_by_dtype(step, a, b, c)
  assert counts == {"float32 x float32 -> float32": 3 * 2 * 4 * 16 * 16,
                    "bfloat16 x bfloat16 -> bfloat16": 2 * 4 * 8 * 16,
                    "bfloat16 x bfloat16 -> float32": 2 * 4 * 8 * 16}
  assert list(counts)[0] == "float32 x float32 -> float32"  # Largest first.
