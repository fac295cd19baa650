"""Mean Teacher (Tarvainen & Valpola 2017, "Mean teachers are better role models").

The teacher is an exponential moving average of the student (Eq. 1, theta'_k = a theta'_{k-1}
+ (1 - a) theta_k); the student is pulled towards the teacher's predictions on a differently
augmented view of the same images (its own flip, translation and input noise: "noise =
independent augmentations"):

    L = CE(f(x_l), y_l) + w(k) * mean_{i, c} (softmax f(x_i)_c - softmax f'(x'_i)_c)^2,

the consistency over every row of the step (labelled and unlabelled, as the paper's minibatch),
the teacher's probabilities under stop-gradient. w(k) = w_max exp(-5 (1 - k / K_r)^2) for k < K_r
(`consistency_weight`, `rampup_steps`: the TF code's 40k steps); the EMA decay is a = 0.99 during that ramp-up and 0.999
after (paper, Sec. 3 and App. B.1), capped by 1 - 1 / (t + 1) at the t-th update (mean-teacher
`update_ema_variables`) so the first updates follow the student closely.

As mean-teacher's PyTorch code (`ema_model` in train mode), the teacher's forward normalises
with its own batch statistics and keeps its own BatchNorm running averages; only the weights
are averaged. The teacher is the evaluated model (`features`, `logits`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.config_lib import ConfigError
from ssl_jax.methods import semi_supervised as ssl


def default_method_config() -> ml_collections.ConfigDict:
  m = ssl.default_method_config("mean_teacher")
  m.ema_decay = 0.999             # Teacher decay after the ramp-up ...
  m.ema_decay_rampup = 0.99       # ... and during it.
  m.consistency_weight = 100.0    # w_max (mean-teacher TF: max_consistency_cost=100).
  m.rampup_steps = 40_000         # K_r of the sigmoid ramp-up and of the EMA decay switch.
  m.input_noise = 0.15            # Std of Gaussian noise added to each normalised view.
  return m


def softmax_mse(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """mean over rows and classes of (softmax(s) - softmax(t))^2 (mean-teacher
  `softmax_mse_loss` / num_classes / batch); no gradient reaches the teacher."""
  student = jax.nn.softmax(student_logits.astype(jnp.float32), axis=-1)
  teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), axis=-1)
  return jnp.mean((student - teacher) ** 2)


@dataclasses.dataclass(frozen=True)
class MeanTeacher(ssl.SemiSupervisedClassifier):
  """Student + EMA teacher with a softmax-MSE consistency between two views."""

  ema_batch_stats = "own"

  def __post_init__(self):
    super().__post_init__()
    m = self.config.method
    if not 0.0 < m.ema_decay_rampup < 1.0 or m.ema_decay == 0.0:
      raise ConfigError(f"Mean Teacher needs a teacher: method.ema_decay ({m.ema_decay}) and "
                        f"method.ema_decay_rampup ({m.ema_decay_rampup}) must be in (0, 1).")

  @property
  def rampup_steps(self) -> float:
    return float(self.config.method.rampup_steps)

  def weight(self, step):
    return self.config.method.consistency_weight * ssl.sigmoid_rampup(step, self.rampup_steps)

  def ema_momentum(self, step):
    """a at the end of 0-based step `step`, the (step + 1)-th update."""
    m = self.config.method
    step = jnp.asarray(step, jnp.float32)
    decay = jnp.where(step < self.rampup_steps, m.ema_decay_rampup, m.ema_decay)
    return jnp.minimum(1.0 - 1.0 / (step + 2.0), decay)

  def noisy_view(self, rng, images):
    view_rng, noise_rng = jax.random.split(rng)
    view = self.weak(view_rng, images)
    return view + self.config.method.input_noise * jax.random.normal(noise_rng, view.shape)

  def loss(self, params, state, batch, rng, step):
    labeled, unlabeled = batch[ssl.LABELED], batch[ssl.UNLABELED]
    images = jnp.concatenate([labeled["image"], unlabeled["image"]], axis=0)
    student_rng, teacher_rng = jax.random.split(rng)
    (student,), batch_stats = self.student_logits(params, state,
                                                  [self.noisy_view(student_rng, images)])
    ema = state["ema"]
    teacher, _, teacher_stats = self.apply_model(
        ema["params"], ema["batch_stats"], self.noisy_view(teacher_rng, images), train=True)
    num_labeled = labeled["image"].shape[0]
    cross_entropy, accuracy = self.labeled_loss(student[:num_labeled], labeled["label"])
    consistency = softmax_mse(student, teacher)
    state = {**state, "ema": {"params": ema["params"], "batch_stats": teacher_stats}}
    return self.result(cross_entropy=cross_entropy, accuracy=accuracy,
                       unlabeled_loss=consistency, weight=self.weight(step), state=state,
                       batch_stats=batch_stats, metrics={"ema_decay": self.ema_momentum(step)})
