"""Pseudo-Label (Lee 2013, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning
Method for Deep Neural Networks").

The network's own confident predictions on unlabelled images are its targets:

    L = CE(f(x_l), y_l) + alpha(k) * mean_i [max p_i >= tau] * CE(f(x_u,i), argmax p_i),

p_i = softmax(f(x_u,i)) under stop-gradient, from the same training-mode forward of the same weak
view (Lee recomputes the pseudo-labels at every weight update, Eq. 1). alpha(k) is Lee's Eq. 16
ramp (0 until T1, linear to alpha_f at T2, then constant; `rampup_start_epochs`,
`rampup_end_epochs`, `unlabeled_weight`). Lee keeps every argmax (tau = 0); the confidence
threshold tau is Oliver et al. 2018's ("Realistic Evaluation of Deep Semi-Supervised Learning
Algorithms": 0.95), which rows below tau do not enter the loss at all.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from ssl_jax.config_lib import ConfigError
from ssl_jax.methods import semi_supervised as ssl


def default_method_config() -> ml_collections.ConfigDict:
  m = ssl.default_method_config("pseudo_label")
  m.ema_decay = 0.0               # Lee evaluates the trained network itself.
  m.threshold = 0.95              # tau; 0 keeps every argmax (Lee 2013).
  m.unlabeled_weight = 3.0        # alpha_f (Lee 2013: 3).
  m.rampup_start_epochs = 0.0     # T1 ...
  m.rampup_end_epochs = 0.0       # ... T2: alpha reaches alpha_f.
  return m


@dataclasses.dataclass(frozen=True)
class PseudoLabel(ssl.SemiSupervisedClassifier):
  """Lee 2013 with a confidence threshold."""

  def __post_init__(self):
    super().__post_init__()
    m = self.config.method
    if m.rampup_end_epochs < m.rampup_start_epochs:
      raise ConfigError(f"method.rampup_end_epochs ({m.rampup_end_epochs}) must be >= "
                        f"method.rampup_start_epochs ({m.rampup_start_epochs}).")

  def weight(self, step):
    m = self.config.method
    return ssl.lee_rampup(step, m.rampup_start_epochs * self.steps_per_epoch,
                          m.rampup_end_epochs * self.steps_per_epoch, m.unlabeled_weight)

  def loss(self, params, state, batch, rng, step):
    labeled, unlabeled = batch[ssl.LABELED], batch[ssl.UNLABELED]
    labeled_rng, unlabeled_rng = jax.random.split(rng)
    (logits_l, logits_u), batch_stats = self.student_logits(
        params, state, [self.weak(labeled_rng, labeled["image"]),
                        self.weak(unlabeled_rng, unlabeled["image"])])
    cross_entropy, accuracy = self.labeled_loss(logits_l, labeled["label"])
    targets, mask = ssl.confident_targets(logits_u, self.config.method.threshold)
    unlabeled_loss = ssl.masked_cross_entropy(logits_u, targets, mask)
    return self.result(cross_entropy=cross_entropy, accuracy=accuracy,
                       unlabeled_loss=unlabeled_loss, weight=self.weight(step), state=state,
                       batch_stats=batch_stats, metrics={"mask_rate": mask.mean()})
