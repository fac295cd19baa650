"""Fast linear probe: multinomial logistic regression on frozen, standardised features.

This is the quick, deterministic probe run during training and by `evaluate`, not the papers'
long SGD protocol on augmented images (that is the `supervised` method with frozen features). It
follows the logistic-regression probes of CLIP (Radford et al. 2021, App. A.3: L-BFGS, L2
strength swept on a validation split) and of SimCLR's transfer evaluation (Chen et al. 2020,
appendix: L-BFGS on frozen features, regularisation chosen on held-out train data):

  1. standardise every feature with the mean / std of the training records (zero-variance
     features are only centred, like sklearn's StandardScaler);
  2. minimise  sum_i w_i CE(W x_i + b, y_i) / sum_i w_i + (weight_decay / 2) ||W||^2  with
     full-batch L-BFGS (`optax.lbfgs`, zoom line search) until the gradient norm falls below
     `tolerance` or `max_steps` is reached; the bias is not decayed;
  3. sweep `weight_decays`, fitting on the train split minus a class-balanced hold-out
     (`holdout_fraction`, drawn by `seed`), and keep the one with the lowest hold-out
     cross-entropy: on small hold-outs one sample flips the accuracy ranking, while the
     likelihood changes smoothly with the regularisation and prefers the well-calibrated fit;
  4. refit on the whole train split with the chosen weight decay and report test top-1 / top-5.

Padding records (mask 0) get weight 0, and the hold-out is expressed as weights too, so the sweep
and the final fit share one compiled program; the rows are further padded (weight 0) to a
multiple of `_ROW_BUCKET` so that probes on similar-sized sets share it as well. Features may be
(sharded) jax.Arrays; the fit runs under jit where they live and only labels and masks come to
the host.
"""
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import progress
from ssl_jax.data import splits

# The L-BFGS program takes seconds to compile; rounding the record count up keeps one program for
# train sets of nearby sizes.
_ROW_BUCKET = 256


def _standardiser(x, weights):
  weights = weights[:, None] / jnp.sum(weights)
  mean = jnp.sum(weights * x, axis=0)
  std = jnp.sqrt(jnp.sum(weights * jnp.square(x - mean), axis=0))
  # A feature constant on the training records would blow up to +-inf on test records that
  # differ; leave it unscaled (it is centred to 0 on the training records anyway).
  std = jnp.where(std > 1e-6 * jnp.maximum(1.0, jnp.abs(mean)), std, 1.0)
  return mean, std


def _logits(params, x):
  standardised = (x - params["mean"]) / params["std"]
  return jnp.dot(standardised, params["kernel"],
                 precision=jax.lax.Precision.HIGHEST) + params["bias"]


@functools.partial(jax.jit, static_argnames=("num_classes", "max_steps"))
def _fit(x, labels, weights, weight_decay, tolerance, *, num_classes, max_steps):
  """Minimises the weighted, L2-regularised cross-entropy with L-BFGS.

  Returns {'mean', 'std'} ([D], the standardisation) and {'kernel' [D, C], 'bias' [C]}.
  """
  x = x.astype(jnp.float32)
  mean, std = _standardiser(x, weights)
  standardised = (x - mean) / std
  targets = jax.nn.one_hot(labels, num_classes)
  normaliser = jnp.sum(weights)

  def objective(classifier):
    logits = jnp.dot(standardised, classifier["kernel"],
                     precision=jax.lax.Precision.HIGHEST) + classifier["bias"]
    cross_entropy = optax.softmax_cross_entropy(logits, targets)
    return (jnp.sum(weights * cross_entropy) / normaliser
            + 0.5 * weight_decay * jnp.sum(jnp.square(classifier["kernel"])))

  optimizer = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    classifier, state = carry
    value, grad = value_and_grad(classifier, state=state)
    updates, state = optimizer.update(grad, state, classifier, value=value, grad=grad,
                                      value_fn=objective)
    return optax.apply_updates(classifier, updates), state

  def not_converged(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (count == 0) | ((count < max_steps) & (grad_norm >= tolerance))

  classifier = {"kernel": jnp.zeros([x.shape[1], num_classes], jnp.float32),
                "bias": jnp.zeros([num_classes], jnp.float32)}
  classifier, _ = jax.lax.while_loop(not_converged, step,
                                     (classifier, optimizer.init(classifier)))
  return {"mean": mean, "std": std, **classifier}


def fit_probe(x: Any, labels: Any, weights: Any, weight_decay: float, *, num_classes: int,
              max_steps: int = 200, tolerance: float = 1e-5) -> dict[str, jax.Array]:
  """One L-BFGS fit of the weighted, L2-regularised multinomial logistic regression.

  Args:
    x: [N, D] features; labels: [N] ints in [0, num_classes); weights: [N] per-record weights
      (0 drops a record, from the standardisation too).
    weight_decay: lambda in  sum_i w_i CE_i / sum_i w_i + lambda / 2 ||W||^2.

  Returns:
    {'mean', 'std'} [D] (the standardisation) and {'kernel' [D, C], 'bias' [C]}.
  """
  x, labels, weights = _pad_to_bucket(x, labels, weights)
  return _fit(x, labels, weights, jnp.float32(weight_decay), jnp.float32(tolerance),
              num_classes=num_classes, max_steps=max_steps)


def _pad_to_bucket(x, labels, weights):
  """Appends weight-0 rows up to a multiple of _ROW_BUCKET."""
  pad = -x.shape[0] % _ROW_BUCKET
  return (jnp.pad(jnp.asarray(x, jnp.float32), ((0, pad), (0, 0))),
          np.pad(np.asarray(labels, np.int32), (0, pad)),
          np.pad(np.asarray(weights, np.float32), (0, pad)))


@functools.partial(jax.jit, static_argnames=("num_top",))
def _weighted_scores(params, x, labels, weights, *, num_top):
  """Weighted sums of top-1 hits, top-`num_top` hits and cross-entropy."""
  logits = _logits(params, x.astype(jnp.float32))
  _, ranked = jax.lax.top_k(logits, num_top)
  hits = ranked == labels[:, None]
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.stack([jnp.sum(weights * hits[:, 0]), jnp.sum(weights * jnp.any(hits, axis=1)),
                    jnp.sum(weights * cross_entropy)])


def linear_probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, num_classes: int,
                 seed: int = 0, weight_decays: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
                 holdout_fraction: float = 0.1, max_steps: int = 200, tolerance: float = 1e-5,
                 train_mask: Any = None, test_mask: Any = None) -> dict[str, float]:
  """Fits the probe on (train_x, train_y) and scores it on (test_x, test_y).

  Args:
    train_x, test_x: [N, D] frozen features (numpy or jax.Array, possibly sharded).
    train_y, test_y: [N] integer labels in [0, num_classes).
    num_classes: number of classes.
    seed: draws the hold-out used to choose the weight decay.
    weight_decays: the L2 strengths swept; the lowest hold-out cross-entropy wins, ties going
      to the stronger one.
    holdout_fraction: class-balanced share of the train records held out for the sweep.
    max_steps: L-BFGS iteration cap per fit.
    tolerance: stop once the gradient's L2 norm is below this.
    train_mask, test_mask: [N] 0/1, 0 for padding records, which are ignored.

  Returns:
    {'top1', 'top5' (top-min(5, num_classes)) on test, 'weight_decay' chosen, 'val_top1' and
    'val_loss' of the chosen one on the hold-out, 'val_top1/wd_<wd>' and 'val_loss/wd_<wd>' for
    every swept value, 'seconds' wall time of the whole probe}.
  """
  start = time.perf_counter()
  if not weight_decays or min(weight_decays) < 0:
    raise ValueError(f"weight_decays must be a non-empty sequence of values >= 0, got "
                     f"{weight_decays}.")
  train_x, train_labels, train_mask = splits.checked_split(train_x, train_y, train_mask, "train",
                                                           num_classes)
  test_x, test_labels, test_mask = splits.checked_split(test_x, test_y, test_mask, "test",
                                                        num_classes)
  # 0/1 row weights: the probe's losses and scores are weighted sums over the rows.
  train_weights, test_weights = train_mask.astype(np.float32), test_mask.astype(np.float32)
  if train_x.shape[1] != test_x.shape[1]:
    raise ValueError(f"train_x and test_x differ in width ({train_x.shape[1]} vs "
                     f"{test_x.shape[1]}); they must come from the same encoder.")

  records = np.flatnonzero(train_weights)
  kept, held_out = splits.holdout_split(train_labels[records], holdout_fraction, seed)
  fit_weights = np.zeros_like(train_weights)
  fit_weights[records[kept]] = 1.0
  val_weights = np.zeros_like(train_weights)
  val_weights[records[held_out]] = 1.0

  # Padded once here rather than in every fit_probe call: the bank may be large.
  train_x, train_labels, train_weights = _pad_to_bucket(train_x, train_labels, train_weights)
  fit_weights, val_weights = (np.pad(w, (0, len(train_weights) - len(w)))
                              for w in (fit_weights, val_weights))
  def fit(weights, weight_decay):
    # Positional arguments exactly as in fit_probe, so both hit the same jit cache entry.
    return _fit(train_x, train_labels, weights, jnp.float32(weight_decay),
                jnp.float32(tolerance), num_classes=num_classes, max_steps=max_steps)

  num_top = min(5, num_classes)
  results = {}
  best_decay, best_loss = None, np.inf
  # Strongest first, so that on a tie the strongest regularisation is kept.
  for weight_decay in progress.track(sorted(weight_decays, reverse=True),
                                     "linear probe: weight decay", len(weight_decays)):
    params = fit(fit_weights, weight_decay)
    top1, _, loss = np.asarray(_weighted_scores(params, train_x, train_labels, val_weights,
                                                num_top=num_top)) / val_weights.sum()
    results[f"val_top1/wd_{weight_decay:g}"] = float(top1)
    results[f"val_loss/wd_{weight_decay:g}"] = float(loss)
    if loss < best_loss:
      best_decay, best_loss = weight_decay, loss

  params = fit(train_weights, best_decay)
  top1, top5, _ = np.asarray(_weighted_scores(params, test_x, test_labels, test_weights,
                                              num_top=num_top)) / test_weights.sum()
  results.update(top1=float(top1), top5=float(top5), weight_decay=float(best_decay),
                 val_top1=results[f"val_top1/wd_{best_decay:g}"], val_loss=float(best_loss),
                 seconds=time.perf_counter() - start)
  return results
