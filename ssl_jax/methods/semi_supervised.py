"""Shared machinery of the labelled + unlabelled classifiers: Pseudo-label, Mean Teacher, FixMatch,
Noisy Student.

Each of these methods trains one backbone + linear classifier on two data streams
(`ssl_jax.data.streams`): cross-entropy on `batch['labeled']` (the class-balanced subset
`data.train_subset`) plus a weighted unlabelled term on `batch['unlabeled']` (labels hidden)::

    L = CE(f(weak(x_l)), y_l) + w(k) * L_u

This module holds what they share:

* the model: `config.model` backbone (e.g. FixMatch's WRN-28-2) -> Dense(num_classes) with
  Glorot-normal init (fixmatch `libml/models.py`); both streams go through the student in ONE
  forward pass, so BatchNorm normalises over the labelled and unlabelled rows together (fixmatch
  interleaves its batches to the same end);
* the weak view: horizontal flip + translation by up to `max_shift_fraction` of the side with
  reflect padding (FixMatch's weak augmentation, and the flip + translate of Mean Teacher and
  Oliver et al. 2018); the strong view: RandAugment (+ Cutout) on top of it (FixMatch's strong
  view, Noisy Student's input noise);
* the losses: masked cross-entropy against hard targets, cross-entropy against soft targets;
* an exponential moving average of the student (`ema_decay`, 0 = none) that is evaluated:
  `features` (k-NN) and `logits` (`eval/top1`, the `classifier` protocol on the test split) read
  it when present; FixMatch averages the BatchNorm statistics too (fixmatch's EMA covers every
  model variable);
* the ramp-up schedules of the unlabelled weight (`lee_rampup`, `sigmoid_rampup`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssl_jax.config_lib import ConfigError
from ssl_jax.data import augment, randaugment
from ssl_jax.losses import schedules
from ssl_jax.methods import base
from ssl_jax.models import registry

LABELED, UNLABELED = "labeled", "unlabeled"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def default_method_config(name: str) -> ml_collections.ConfigDict:
  """The keys every semi-supervised method reads; method configs add their own."""
  m = ml_collections.ConfigDict()
  m.name = name
  m.num_classes = 10
  m.ema_decay = 0.999           # EMA of the student for evaluation; 0 = evaluate the student.
  m.flip_prob = 0.5             # Weak view: horizontal flip ...
  m.max_shift_fraction = 0.125  # ... and translation by up to this fraction of the side.
  m.mean = CIFAR10_MEAN
  m.std = CIFAR10_STD
  return m


# ----------------------------------------------------------------------------- ramp-ups


def lee_rampup(step: jax.Array, start: float, end: float, final: float) -> jax.Array:
  """Lee 2013, Eq. 16: alpha(t) = 0 for t < T1, alpha_f (t - T1) / (T2 - T1) for T1 <= t < T2,
  alpha_f for t >= T2 (`start` = T1, `end` = T2, in steps)."""
  t = jnp.asarray(step, jnp.float32)
  if end <= start:
    return jnp.where(t < start, 0.0, final).astype(jnp.float32)
  return final * jnp.clip((t - start) / (end - start), 0.0, 1.0)


def sigmoid_rampup(step: jax.Array, length: float) -> jax.Array:
  """Laine & Aila 2017 / Tarvainen & Valpola 2017: exp(-5 (1 - t)^2), t = min(step / length, 1)
  (mean-teacher `ramps.sigmoid_rampup`); 1 throughout when `length` is 0."""
  if length <= 0:
    return jnp.ones((), jnp.float32)
  t = jnp.clip(jnp.asarray(step, jnp.float32) / length, 0.0, 1.0)
  return jnp.exp(-5.0 * (1.0 - t) ** 2)


# ----------------------------------------------------------------------------- views


def flip_and_translate(rng: jax.Array, unit: jax.Array, *, flip_prob: float,
                       max_shift: int) -> jax.Array:
  """Float [B, H, W, 3] -> each image flipped with `flip_prob` and shifted by up to
  `max_shift` pixels with reflect padding (fixmatch `augment_mirror` + `augment_shift`)."""

  def one(key, image):
    flip_key, shift_key = jax.random.split(key)
    return augment.random_translate(shift_key, augment.random_flip(flip_key, image, flip_prob),
                                    max_shift)

  return jax.vmap(one)(jax.random.split(rng, unit.shape[0]), unit)


def weak_view(rng: jax.Array, images: jax.Array, *, flip_prob: float, max_shift: int,
              mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 [B, H, W, 3] -> the normalised weak view (`flip_and_translate`)."""
  unit = flip_and_translate(rng, images.astype(jnp.float32) / 255.0, flip_prob=flip_prob,
                            max_shift=max_shift)
  return augment.normalize(unit, tuple(mean), tuple(std))


def strong_view(rngs: Sequence[jax.Array], images: jax.Array, *, flip_prob: float,
                max_shift: int, layers: int, magnitude: float, magnitude_std: float,
                prob: float, cutout_fraction: float, mean: Sequence[float],
                std: Sequence[float]) -> jax.Array:
  """uint8 [B, H, W, 3] -> the normalised strong view: its own flip + translation (fixmatch
  applies RA to the weakly augmented image), RandAugment (`randaugment.rand_augment_batch`,
  `layers` ops at `magnitude`), then Cutout when `cutout_fraction` > 0, in [0, 1] pixels.

  `rngs` are three keys: translation, RandAugment, Cutout.
  """
  shift_rng, ops_rng, cutout_rng = rngs
  unit = flip_and_translate(shift_rng, images.astype(jnp.float32) / 255.0,
                            flip_prob=flip_prob, max_shift=max_shift)
  unit = randaugment.rand_augment_batch(ops_rng, unit, num_layers=layers, magnitude=magnitude,
                                        magnitude_std=magnitude_std, prob=prob,
                                        fill=(0.5, 0.5, 0.5))
  if cutout_fraction > 0:
    unit = jax.vmap(lambda key, image: augment.cutout(key, image, cutout_fraction))(
        jax.random.split(cutout_rng, images.shape[0]), unit)
  return augment.normalize(unit, tuple(mean), tuple(std))


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """mean_i mask_i * CE(logits_i, targets_i), over ALL rows (FixMatch Eq. 2; masked rows count
  in the denominator)."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return jnp.mean(mask.astype(jnp.float32) * losses)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """mean_i H(q_i, softmax(logits_i)) = mean_i -sum_c q_ic log softmax(logits_i)_c against
  probability targets q (Noisy Student's soft pseudo-labels); no gradient into q."""
  return jnp.mean(optax.softmax_cross_entropy(
      logits.astype(jnp.float32), jax.lax.stop_gradient(targets).astype(jnp.float32)))


def confident_targets(logits: jax.Array, threshold: float) -> tuple[jax.Array, jax.Array]:
  """Hard pseudo-labels argmax p and the mask max p >= threshold, under stop-gradient."""
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
  return jnp.argmax(probs, axis=-1), jnp.max(probs, axis=-1) >= threshold


# ----------------------------------------------------------------------------- the classifier


class ClassifierHead(nn.Module):
  """The linear classifier on the pooled features (fixmatch: glorot_normal kernel), with
  optional dropout on its input in training (Noisy Student: 0.5; needs the 'dropout' rng)."""
  num_classes: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    features = features.astype(jnp.float32)
    if self.dropout_rate > 0:
      features = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.glorot_normal(),
                    name="head")(features)


@dataclasses.dataclass(frozen=True)
class SemiSupervisedClassifier(base.Method):
  """Backbone + linear classifier trained on the 'labeled' and 'unlabeled' streams.

  Params {'encoder', 'head'}; state {'batch_stats': the student's BatchNorm statistics ({} for
  backbones without BatchNorm), ['ema': {'params', 'batch_stats'}]}. Subclasses write `loss`
  from `student_logits`, `labeled_loss` and `result`.
  """

  # The EMA model's BatchNorm statistics: 'blend' averages them with the weights (Noisy
  # Student: EfficientNet's `get_ema_vars` adds the moving statistics to the trainable
  # variables); 'student' uses the student's own running averages (FixMatch: `ema.apply(
  # utils.model_vars())` averages the trainable variables only, and its EMA classifier reads the
  # raw moving statistics); 'own' keeps running averages of the EMA model's own forward passes
  # (Mean Teacher's teacher, run in training mode).
  ema_batch_stats = "blend"
  # The data streams `loss` reads (distillation reads whichever are declared and checks them).
  required_streams = (LABELED, UNLABELED)
  # Dropout on the classifier's input in training (Noisy Student's noise).
  head_dropout = 0.0

  def __post_init__(self):
    m = self.config.method
    if m.num_classes < 2:
      raise ConfigError(f"method.num_classes must be >= 2, got {m.num_classes}.")
    if not 0.0 <= m.ema_decay < 1.0:
      raise ConfigError(f"method.ema_decay must be in [0, 1) (0 = no EMA model), got "
                        f"{m.ema_decay}.")
    if not 0.0 <= m.max_shift_fraction < 0.5:
      raise ConfigError(f"method.max_shift_fraction must be in [0, 0.5), got "
                        f"{m.max_shift_fraction}.")
    declared = set(self.config.data.streams.keys())
    missing = [name for name in self.required_streams if name not in declared]
    if missing:
      # Each stream's kind is its name ('labeled', 'unlabeled', 'pseudo_labeled').
      raise ConfigError(f"method {m.name!r} reads the data streams "
                        f"{', '.join(map(repr, self.required_streams))}; config.data.streams "
                        f"declares {sorted(declared)}. Add them with "
                        + " / ".join(f"streams.stream_config({n!r}, ...)" for n in missing)
                        + ".")

  @property
  def encoder(self) -> nn.Module:
    return registry.build_encoder(self.config.model)

  @property
  def head(self) -> ClassifierHead:
    return ClassifierHead(self.config.method.num_classes, dropout_rate=self.head_dropout)

  @property
  def max_shift(self) -> int:
    return int(round(self.config.method.max_shift_fraction * self.config.data.image_size))

  def weak(self, rng: jax.Array, images: jax.Array) -> jax.Array:
    m = self.config.method
    return weak_view(rng, images, flip_prob=m.flip_prob, max_shift=self.max_shift,
                     mean=m.mean, std=m.std)

  def init(self, rng, batch):
    del batch
    encoder_rng, head_rng = jax.random.split(rng)
    size = int(self.config.data.image_size)
    variables = self.encoder.init(encoder_rng, jnp.zeros((1, size, size, 3)), train=False)
    width = self.encoder.feature_dim
    head = self.head.init(head_rng, jnp.zeros((1, width)))["params"]
    params = {"encoder": variables["params"], **head}
    state = {"batch_stats": variables.get("batch_stats", {})}
    if self.config.method.ema_decay > 0:
      copy = lambda tree: jax.tree.map(lambda x: jnp.array(x, copy=True), tree)
      state["ema"] = {"params": copy(params), "batch_stats": copy(state["batch_stats"])}
    return params, state

  def apply_model(self, params, batch_stats, images, *, train: bool, rng=None):
    """(logits [B, C], pooled features [B, D], updated BatchNorm statistics).

    `rng` feeds the model's noise in training (stochastic depth, the head's dropout); without
    it the model must have none.
    """
    rngs = {}
    if rng is not None:
      encoder_rng, head_rng = jax.random.split(rng)
      rngs = {"encoder": {"dropout": encoder_rng}, "head": {"dropout": head_rng}}
    variables = {"params": params["encoder"]}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    if train and batch_stats:
      out, updated = self.encoder.apply(variables, images, train=True, mutable=["batch_stats"],
                                        rngs=rngs.get("encoder"))
      batch_stats = updated["batch_stats"]
    else:
      out = self.encoder.apply(variables, images, train=train, rngs=rngs.get("encoder"))
    pooled = out["pooled"].astype(jnp.float32)
    logits = self.head.apply({"params": {"head": params["head"]}}, pooled, train=train,
                             rngs=rngs.get("head"))
    return logits, pooled, batch_stats

  def student_logits(self, params, state, views: Sequence[jax.Array], rng=None):
    """Logits of each view (in order) from ONE training-mode forward of their concatenation,
    and the student's updated BatchNorm statistics (`rng`: the model's noise, if any)."""
    sizes = [v.shape[0] for v in views]
    logits, _, batch_stats = self.apply_model(params, state["batch_stats"],
                                              jnp.concatenate(views, axis=0), train=True,
                                              rng=rng)
    splits = [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)]
    return jnp.split(logits, splits, axis=0), batch_stats

  @staticmethod
  def labeled_loss(logits, labels):
    """(mean cross-entropy, accuracy) on the labelled stream."""
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels).mean()
    return cross_entropy, jnp.mean(jnp.argmax(logits, axis=-1) == labels)

  def result(self, *, cross_entropy, accuracy, unlabeled_loss, weight, state, batch_stats,
             metrics):
    """L = CE + w * L_u, the metrics every method logs, and the new state."""
    loss = cross_entropy + weight * unlabeled_loss
    metrics = {"cross_entropy": cross_entropy, "labeled_acc": accuracy,
               "unlabeled_loss": unlabeled_loss, "unlabeled_weight": weight, **metrics}
    return loss, (metrics, {**state, "batch_stats": batch_stats})

  # EMA model.

  def ema_momentum(self, step: jax.Array) -> jax.Array:
    return jnp.full((), self.config.method.ema_decay, jnp.float32)

  def update_state(self, params, state, step):
    if "ema" not in state:
      return state
    momentum = self.ema_momentum(step)
    ema = state["ema"]
    if self.ema_batch_stats == "blend":
      ema_stats = schedules.ema_update(ema["batch_stats"], state["batch_stats"], momentum)
    elif self.ema_batch_stats == "student":
      ema_stats = state["batch_stats"]
    else:  # "own": updated by the EMA model's forward passes in `loss`.
      ema_stats = ema["batch_stats"]
    return {**state, "ema": {"params": schedules.ema_update(ema["params"], params, momentum),
                             "batch_stats": ema_stats}}

  def eval_model(self, params, state) -> tuple[Any, Any]:
    """(params, BatchNorm statistics) that are evaluated: the EMA model's when there is one."""
    if "ema" in state:
      return state["ema"]["params"], state["ema"]["batch_stats"]
    return params, state["batch_stats"]

  def eval_inputs(self, images):
    m = self.config.method
    return augment.eval_view(images, size=int(self.config.data.image_size), mean=tuple(m.mean),
                             std=tuple(m.std))

  def features(self, params, state, images):
    eval_params, stats = self.eval_model(params, state)
    return self.apply_model(eval_params, stats, self.eval_inputs(images), train=False)[1]

  def logits(self, params, state, images):
    eval_params, stats = self.eval_model(params, state)
    return self.apply_model(eval_params, stats, self.eval_inputs(images), train=False)[0]
