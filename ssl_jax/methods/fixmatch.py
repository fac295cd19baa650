"""FixMatch (Sohn et al. 2020; google-research/fixmatch `fixmatch.py`).

Each unlabelled image gets a weak view (flip + translation by up to 12.5%) and a strong view
(RandAugment + Cutout, made on the device); the weak view's prediction, under stop-gradient,
is a hard pseudo-label for the strong view where it is confident (Eq. 2):

    L = CE(f(weak(x_l)), y_l)
        + lambda_u * 1/(mu B) sum_i [max q_i >= tau] CE(f(strong(u_i)), argmax q_i),
    q_i = softmax(f(weak(u_i))),

the mean over ALL mu B unlabelled images (masked ones count in the denominator), tau = 0.95,
lambda_u = 1, mu = 7 (the 'unlabeled' stream's batch is mu times the 'labeled' one's). Labelled,
weak and strong rows go through the student in one training-mode forward (fixmatch interleaves
them for the same BatchNorm statistics). The evaluated model is the EMA (0.999) of the weights
with the student's BatchNorm running statistics (fixmatch's `ema.apply(utils.model_vars())`
averages the trainable variables only; its EMA classifier reads the raw moving averages).

The strong view: `randaugment.rand_augment_batch` with 2 ops, each applied with probability
0.5 at a magnitude drawn uniformly per op (fixmatch's `AugmentPoolRAMC`: `(op, 0.5,
np.random.randint(1, 10))`), then Cutout of a square of side U(0, 0.5) of the width (the
paper's Table 12; the code's `cutout_numpy` cuts a fixed 16 px, half of CIFAR's side).
Departures: the op set is timm's 15 "increasing" ops (with Invert and SolarizeAdd, without
Identity) rather than FixMatch's 14 (Identity, AutoContrast, Brightness, Color, Contrast,
Equalize, Posterize, Rotate, Sharpness, ShearX/Y, Solarize, TranslateX/Y), translations reach
45% of the side (FixMatch: 30%), and magnitudes are drawn from U(0, 10), not from the integers
1-9.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.methods import semi_supervised as ssl


def default_method_config() -> ml_collections.ConfigDict:
  m = ssl.default_method_config("fixmatch")
  m.ema_decay = 0.999
  m.threshold = 0.95              # tau
  m.unlabeled_weight = 1.0        # lambda_u
  m.randaugment_layers = 2        # N ops of the strong view ...
  m.randaugment_magnitude = 10.0  # ... at a magnitude drawn from U(0, this) per op ...
  m.randaugment_prob = 0.5        # ... each op applied with this probability.
  m.cutout_fraction = 0.5         # Cutout side ~ U(0, this) * width.
  return m


@dataclasses.dataclass(frozen=True)
class FixMatch(ssl.SemiSupervisedClassifier):
  """Weak-view pseudo-labels above a confidence threshold, as targets for strong views."""

  ema_batch_stats = "student"

  def weak_and_strong(self, rng, images):
    """(weak, strong) normalised views of the same uint8 images, row i of both from image i."""
    m = self.config.method
    weak_rng, *strong_rngs = jax.random.split(rng, 4)
    strong = ssl.strong_view(strong_rngs, images, flip_prob=m.flip_prob,
                             max_shift=self.max_shift, layers=m.randaugment_layers,
                             magnitude=m.randaugment_magnitude, magnitude_std=float("inf"),
                             prob=m.randaugment_prob, cutout_fraction=m.cutout_fraction,
                             mean=m.mean, std=m.std)
    return self.weak(weak_rng, images), strong

  def loss(self, params, state, batch, rng, step):
    del step
    m = self.config.method
    labeled, unlabeled = batch[ssl.LABELED], batch[ssl.UNLABELED]
    labeled_rng, unlabeled_rng = jax.random.split(rng)
    weak, strong = self.weak_and_strong(unlabeled_rng, unlabeled["image"])
    (logits_l, logits_weak, logits_strong), batch_stats = self.student_logits(
        params, state, [self.weak(labeled_rng, labeled["image"]), weak, strong])
    cross_entropy, accuracy = self.labeled_loss(logits_l, labeled["label"])
    targets, mask = ssl.confident_targets(logits_weak, m.threshold)
    unlabeled_loss = ssl.masked_cross_entropy(logits_strong, targets, mask)
    return self.result(cross_entropy=cross_entropy, accuracy=accuracy,
                       unlabeled_loss=unlabeled_loss,
                       weight=jnp.asarray(m.unlabeled_weight, jnp.float32), state=state,
                       batch_stats=batch_stats, metrics={"mask_rate": mask.mean()})
