"""Online linear probe: no gradient into the backbone, its own optimizer, and it learns."""

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssl_jax import config_lib, optim
from ssl_jax.data import sources
from ssl_jax.methods import base, build_method, online_probe

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class LinearAutoencoder(base.Method):
  """A real Method that compiles in a blink: linear encoder/decoder of flattened canvases."""
  width: int = 32

  def init(self, rng, batch):
    size = int(np.prod(batch["image"].shape[1:]))
    encoder_rng, decoder_rng = jax.random.split(rng)
    return ({"encoder": jax.random.normal(encoder_rng, (size, self.width)) / np.sqrt(size),
             "decoder": jax.random.normal(decoder_rng, (self.width, size)) / np.sqrt(self.width)},
            {"calls": jnp.zeros((), jnp.int32)})

  def features(self, params, state, images):
    del state
    flat = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
    return flat @ params["encoder"]

  def loss(self, params, state, batch, rng, step):
    del rng, step
    flat = batch["image"].reshape(batch["image"].shape[0], -1).astype(jnp.float32) / 255.0
    codes = self.features(params, state, batch["image"])
    loss = jnp.mean(jnp.square(codes @ params["decoder"] - flat))
    metrics = {"reconstruction": loss}
    return loss, (metrics, {"calls": state["calls"] + 1})


def toy(**kwargs):
  return LinearAutoencoder(config=config_lib.base_config(), **kwargs)


@functools.lru_cache(maxsize=None)
def _digits(size):
  source = sources.get_source("digits", "train", image_size=size)
  images = np.stack([source[i]["image"] for i in range(len(source))])
  labels = np.asarray([source[i]["label"] for i in range(len(source))], np.int32)
  return images, labels


def digits(size=8):
  """The digits train split as arrays (copies: tests may edit them)."""
  images, labels = _digits(size)
  return images.copy(), labels.copy()


def test_the_probe_term_sends_exactly_zero_gradient_into_mae():
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  method = online_probe.with_online_probe(build_method(config), num_classes=10)
  images, labels = digits(size=32)
  batch = {"image": images[:16], "label": labels[:16]}
  params, state = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  assert params["online_probe"]["kernel"].shape == (64, 10)
  grads = jax.jit(jax.grad(lambda p: method.probe_loss(p, state, batch)[0]))(params)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    if path[0].key != "online_probe":
      assert float(jnp.abs(grad).max()) == 0.0, path
  assert float(jnp.abs(grads["online_probe"]["kernel"]).max()) > 0.0
  assert method.patch_size == 4  # MAE's own attributes stay reachable through the wrapper.


def test_wrapped_loss_adds_the_probe_and_keeps_the_methods_gradient():
  inner = toy()
  method = online_probe.with_online_probe(inner, num_classes=10)
  images, labels = digits()
  batch = {"image": images[:32], "label": labels[:32]}
  params, state = method.init(jax.random.PRNGKey(0), batch)
  (total, (metrics, new_state)), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, state, batch, jax.random.PRNGKey(1), 0)
  inner_params = {k: v for k, v in params.items() if k != "online_probe"}
  (inner_loss, _), inner_grads = jax.jit(jax.value_and_grad(inner.loss, has_aux=True))(
      inner_params, state, batch, jax.random.PRNGKey(1), 0)
  probe_loss, probe_acc = method.probe_loss(params, state, batch)
  assert float(total) == pytest.approx(float(inner_loss + probe_loss), rel=1e-6)
  assert set(metrics) == {"reconstruction", "online_probe_loss", "online_probe_acc"}
  assert float(metrics["online_probe_acc"]) == pytest.approx(float(probe_acc))
  assert int(new_state["calls"]) == 1
  for name in ("encoder", "decoder"):  # The probe term changes no gradient of the method.
    np.testing.assert_array_equal(grads[name], inner_grads[name])


def test_unlabelled_records_do_not_count_in_the_probe_loss():
  method = online_probe.with_online_probe(toy(), num_classes=4)
  images, labels = digits()
  labels = labels % 4
  labels[:3] = -1  # unlabelled records do not count
  batch = {"image": images[:16], "label": labels[:16]}
  params, state = method.init(jax.random.PRNGKey(0), batch)
  params["online_probe"]["kernel"] = jnp.zeros_like(params["online_probe"]["kernel"])
  params["online_probe"]["bias"] = jnp.array([1.0, 0.0, 0.0, 0.0])
  _, (metrics, _) = method.loss(params, state, batch, jax.random.PRNGKey(1), 0)
  # Zero kernel: every logit vector is the bias, so the loss is its cross-entropy.
  log_probs = np.asarray(jax.nn.log_softmax(jnp.array([1.0, 0.0, 0.0, 0.0])))
  kept = labels[:16][labels[:16] >= 0]
  assert float(metrics["online_probe_loss"]) == pytest.approx(-log_probs[kept].mean(), rel=1e-5)
  assert float(metrics["online_probe_acc"]) == pytest.approx(np.mean(kept == 0), rel=1e-6)


def constant_lr_config(lr: float, probe_lr: float):
  config = config_lib.base_config()
  config.optim.lr, config.optim.lr_scaling, config.optim.schedule = lr, "none", "constant"
  config.eval.online_probe_lr = probe_lr
  return config


def test_the_optimizer_splits_the_method_and_the_probe():
  config = constant_lr_config(0.1, probe_lr=0.01)
  inner = LinearAutoencoder(config=config)
  method = online_probe.with_online_probe(inner, num_classes=10)
  images, labels = digits()
  batch = {"image": images[:8], "label": labels[:8]}
  params, _ = method.init(jax.random.PRNGKey(0), batch)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  tx, _ = optim.build_optimizer(config, params, total_steps=10, steps_per_epoch=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  inner_params = {k: v for k, v in params.items() if k != "online_probe"}
  inner_tx, _ = optim.build_optimizer(config, inner_params, total_steps=10, steps_per_epoch=10)
  inner_grads = {k: v for k, v in grads.items() if k != "online_probe"}
  inner_updates, _ = inner_tx.update(inner_grads, inner_tx.init(inner_params), inner_params)
  for name in ("encoder", "decoder"):
    np.testing.assert_allclose(updates[name], inner_updates[name], rtol=1e-6)
  # Adam's first step is -lr * sign(gradient).
  np.testing.assert_allclose(updates["online_probe"]["kernel"], -0.01, rtol=1e-4)


def test_the_probe_learns_the_labels_of_fixed_features():
  config = constant_lr_config(0.0, probe_lr=0.01)  # The method itself frozen.
  method = online_probe.with_online_probe(LinearAutoencoder(config=config, width=64),
                                          num_classes=10)
  images, labels = digits()
  params, state = method.init(jax.random.PRNGKey(0), {"image": images[:8], "label": labels[:8]})
  tx, _ = optim.build_optimizer(config, params, total_steps=10, steps_per_epoch=10)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, state, batch):
    grads, (metrics, state) = jax.grad(method.loss, has_aux=True)(
        params, state, batch, jax.random.PRNGKey(0), 0)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, state, metrics

  order = np.random.default_rng(0).permutation(len(labels))
  accuracies = []
  for i in range(120):
    rows = order[(i * 128) % 1280:(i * 128) % 1280 + 128]
    params, opt_state, state, metrics = step(params, opt_state, state,
                                             {"image": images[rows], "label": labels[rows]})
    accuracies.append(float(metrics["online_probe_acc"]))
  assert np.mean(accuracies[:5]) < 0.4 and np.mean(accuracies[-10:]) > 0.7, accuracies[::10]


def test_bad_wrapping_is_a_clear_error():
  with pytest.raises(ValueError, match="num_classes=None"):
    online_probe.with_online_probe(toy(), num_classes=None)

  @dataclasses.dataclass(frozen=True)
  class TupleParams(LinearAutoencoder):
    def init(self, rng, batch):
      return (1.0, 2.0), {}

  method = online_probe.with_online_probe(TupleParams(config=config_lib.base_config()), 10)
  with pytest.raises(ValueError, match="params are a dict"):
    method.init(jax.random.PRNGKey(0), {"image": np.zeros((2, 8, 8, 3), np.uint8),
                                        "label": np.zeros((2,), np.int32)})
