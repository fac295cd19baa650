"""Noisy Student (Xie et al. 2020, "Self-training with Noisy Student improves ImageNet
classification"; google-research/noisystudent).

A teacher labels unlabelled images once (`python -m ssl_jax.label`, written to a labels file);
a student, as large as the teacher or larger, is trained from scratch on the labelled images
and on those pseudo-labelled ones with noise on its inputs and in its model:

    L = CE(f~(x_l), y_l) + w * mean_i H(q_i, softmax(f~(x_u,i))),

q_i the teacher's probabilities for x_u,i (soft pseudo-labels, the paper's choice for
in-domain unlabelled data; `soft_targets=False` uses one-hot argmax q_i), H the cross-entropy
-sum_c q_c log p_c, w = `unlabeled_weight` (1: the two terms simply add up), and f~ the
noised student: RandAugment on both streams' images (2 ops at magnitude 27 of 30 on ImageNet
= 9 of timm's 10 here), stochastic depth in the backbone (`model.drop_path_rate`, linear decay to
survival 0.8 at the last block) and dropout 0.5 before the classifier (`head_dropout`). The
teacher is not noised (it labels with `method.logits`). Both streams go through the student in
one forward pass. The student then becomes the teacher: label again and train a new student
(docs/methods.md has the command sequence).

Data selection happens in the `pseudo_labeled` stream (`ssl_jax.data.pseudo_labels.select`):
records with teacher confidence below `min_confidence` (0.3) are dropped and each class is
balanced to `per_class` records (duplicated or the most confident kept).

Departures: RandAugment is timm's op set (`ssl_jax.data.randaugment`) with each op applied
with probability 0.5 (the official EfficientNet RandAugment draws it from U(0.2, 0.8), mean
0.5), at a fixed magnitude; the backbone is a Wide ResNet or ViT, not EfficientNet.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.config_lib import ConfigError
from ssl_jax.methods import semi_supervised as ssl

PSEUDO_LABELED = "pseudo_labeled"


def default_method_config() -> ml_collections.ConfigDict:
  m = ssl.default_method_config("noisy_student")
  m.soft_targets = True           # Soft pseudo-labels (the paper's choice in-domain).
  m.unlabeled_weight = 1.0        # w
  m.head_dropout = 0.5            # Dropout on the classifier's input.
  m.randaugment_layers = 2        # N ...
  m.randaugment_magnitude = 9.0   # ... M (the paper's 27 of 30 = 9 of timm's 10) ...
  m.randaugment_prob = 0.5        # ... each op applied with this probability.
  return m


@dataclasses.dataclass(frozen=True)
class NoisyStudent(ssl.SemiSupervisedClassifier):
  """A noised student on the 'labeled' stream and the teacher-labelled 'pseudo_labeled' one."""

  required_streams = (ssl.LABELED, PSEUDO_LABELED)

  def __post_init__(self):
    super().__post_init__()
    m = self.config.method
    if not 0.0 <= m.head_dropout < 1.0:
      raise ConfigError(f"method.head_dropout must be in [0, 1), got {m.head_dropout}.")
    if not 0.0 <= m.randaugment_prob <= 1.0:
      raise ConfigError(f"method.randaugment_prob must be in [0, 1], got {m.randaugment_prob}.")
    kind = self.config.data.streams[PSEUDO_LABELED].kind
    if kind != PSEUDO_LABELED:
      raise ConfigError(f"data.streams.{PSEUDO_LABELED}.kind={kind!r}: Noisy Student trains on "
                        "a teacher's labels file; make it streams.stream_config("
                        "'pseudo_labeled', labels_file=...).")

  @property
  def head_dropout(self) -> float:
    return float(self.config.method.head_dropout)

  def noised(self, rng, images):
    """The student's input noise: flip + translate, then RandAugment at a fixed magnitude."""
    m = self.config.method
    return ssl.strong_view(jax.random.split(rng, 3), images, flip_prob=m.flip_prob,
                           max_shift=self.max_shift, layers=m.randaugment_layers,
                           magnitude=m.randaugment_magnitude, magnitude_std=0.0,
                           prob=m.randaugment_prob, cutout_fraction=0.0, mean=m.mean,
                           std=m.std)

  def targets(self, pseudo) -> jax.Array:
    """q: the teacher's probabilities, or their argmax one-hot."""
    if self.config.method.soft_targets:
      return pseudo["soft"]
    return jax.nn.one_hot(pseudo["label"], self.config.method.num_classes)

  def loss(self, params, state, batch, rng, step):
    del step
    m = self.config.method
    labeled, pseudo = batch[ssl.LABELED], batch[PSEUDO_LABELED]
    noise_rng, model_rng = jax.random.split(rng)
    # Both streams' images are noised in one call (one RandAugment program to compile).
    images = self.noised(noise_rng, jnp.concatenate([labeled["image"], pseudo["image"]]))
    count = labeled["image"].shape[0]
    (logits_l, logits_u), batch_stats = self.student_logits(
        params, state, [images[:count], images[count:]], rng=model_rng)
    cross_entropy, accuracy = self.labeled_loss(logits_l, labeled["label"])
    unlabeled_loss = ssl.soft_cross_entropy(logits_u, self.targets(pseudo))
    agreement = jnp.mean(jnp.argmax(logits_u, axis=-1) == pseudo["label"])
    return self.result(cross_entropy=cross_entropy, accuracy=accuracy,
                       unlabeled_loss=unlabeled_loss,
                       weight=jnp.asarray(m.unlabeled_weight, jnp.float32), state=state,
                       batch_stats=batch_stats, metrics={"teacher_agreement": agreement})
