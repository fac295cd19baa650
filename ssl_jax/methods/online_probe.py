"""Online linear probe: a linear classifier trained alongside any method (as solo-learn does).

`with_online_probe(method, num_classes)` returns a method whose params gain
`params['online_probe']` (one Dense layer) and whose loss adds the probe's cross-entropy on the
training batch's labels, computed on `stop_gradient` features: the probe follows the
representation as it forms, reported every log step as `online_probe_acc` / `online_probe_loss`,
without shaping it (the backbone's gradient from the probe term is exactly zero; tested).

Which features: by default the wrapped method's own `features` of the un-augmented canvas
images, i.e. exactly what the k-NN and linear evaluators measure, for every method alike. That
is one inference pass of the backbone (no backward), a fraction of a training step that runs
forward and backward over two or more augmented views. Unlabelled records (label -1) do not
count.

The probe has its own optimizer group (`ssl_jax.optim.build_optimizer` adds it for
`params[PROBE_KEY]`), Adam at the constant `eval.online_probe_lr`: the features' scale is not known in advance and
keeps changing during pretraining, and Adam's steps do not depend on it; a constant rate lets the
probe keep up until the last step. The wrapped method's groups and masks are untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ssl_jax.config_lib import ConfigError
from ssl_jax.methods import base

PROBE_KEY = "online_probe"


def _split(params: Mapping) -> tuple[dict, Any]:
  inner = {key: value for key, value in params.items() if key != PROBE_KEY}
  return inner, params[PROBE_KEY]


def probe_loss_and_accuracy(probe_params, features: jax.Array,
                            labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy and top-1 of the linear probe over the labelled records.

  The features are detached here, so no caller can leak the probe's gradient into the backbone.
  """
  features = jax.lax.stop_gradient(features.astype(jnp.float32))
  logits = nn.Dense(probe_params["bias"].shape[0]).apply({"params": probe_params}, features)
  labelled = labels >= 0
  safe_labels = jnp.where(labelled, labels, 0)
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
  count = jnp.maximum(jnp.sum(labelled), 1)
  loss = jnp.sum(jnp.where(labelled, cross_entropy, 0.0)) / count
  accuracy = jnp.sum(labelled & (jnp.argmax(logits, axis=-1) == labels)) / count
  return loss, accuracy


@dataclasses.dataclass(frozen=True)
class OnlineProbe(base.Method):
  """`inner` plus a linear probe; see the module docstring."""
  inner: base.Method | None = None
  num_classes: int = 0

  def __post_init__(self):
    if self.inner is None:
      raise ValueError("OnlineProbe needs the method it wraps; use with_online_probe(method, "
                       "num_classes).")
    if self.num_classes is None or self.num_classes < 2:
      raise ConfigError(f"The online probe needs a labelled training set with >= 2 classes; the "
                        f"train source reports num_classes={self.num_classes}. Set "
                        "eval.online_probe=False for unlabelled data.")

  def __getattr__(self, name):
    # Method-specific helpers (MAE's patch_size ...) stay reachable through the wrapper.
    if name == "inner":
      raise AttributeError(name)
    return getattr(self.inner, name)

  def init(self, rng, batch):
    params, state = self.inner.init(rng, batch)
    if not isinstance(params, Mapping) or PROBE_KEY in params:
      raise ValueError(f"with_online_probe needs a method whose params are a dict without a "
                       f"{PROBE_KEY!r} entry; {type(self.inner).__name__} returned "
                       f"{type(params).__name__}.")
    feature_shape = jax.eval_shape(self.inner.features, params, state, batch["image"][:1])
    probe = nn.Dense(self.num_classes).init(jax.random.fold_in(rng, 1),
                                            jnp.zeros(feature_shape.shape, jnp.float32))
    return {**params, PROBE_KEY: probe["params"]}, state

  def probe_loss(self, params, state, batch) -> tuple[jax.Array, jax.Array]:
    """The probe term alone on the method's canvas features: (loss, accuracy)."""
    inner_params, probe_params = _split(params)
    features = self.inner.features(inner_params, state, batch["image"])
    return probe_loss_and_accuracy(probe_params, features, batch["label"])

  def loss(self, params, state, batch, rng, step):
    inner_params, probe_params = _split(params)
    method_loss, (metrics, new_state) = self.inner.loss(inner_params, state, batch, rng, step)
    metrics = dict(metrics)
    features = self.inner.features(inner_params, state, batch["image"])
    probe_loss, probe_accuracy = probe_loss_and_accuracy(probe_params, features,
                                                         batch["label"])
    metrics["online_probe_loss"] = probe_loss
    metrics["online_probe_acc"] = probe_accuracy
    return method_loss + probe_loss, (metrics, new_state)

  def update_state(self, params, state, step):
    return self.inner.update_state(_split(params)[0], state, step)

  def features(self, params, state, images):
    return self.inner.features(_split(params)[0], state, images)

  def visualize(self, params, state, images, rng):
    return self.inner.visualize(_split(params)[0], state, images, rng)

  @property
  def eval_image_size(self) -> int:
    return self.inner.eval_image_size

  def eval_inputs(self, images):
    return self.inner.eval_inputs(images)


def with_online_probe(method: base.Method, num_classes: int | None) -> OnlineProbe:
  """Wraps `method` with an online linear probe over `num_classes` classes."""
  return OnlineProbe(config=method.config, total_steps=method.total_steps,
                     steps_per_epoch=method.steps_per_epoch, inner=method,
                     num_classes=num_classes)
