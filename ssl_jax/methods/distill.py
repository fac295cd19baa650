"""Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network";
SimCLR v2's third step, Chen et al. 2020b, "Big Self-Supervised Models are Strong
Semi-Supervised Learners", Sec. 2, Eq. 3).

A student classifier (`config.model` backbone -> Dense(num_classes), the semi-supervised
methods' network) learns a frozen teacher's softened predictions on a transfer set:

    L = alpha * [T^2] * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s_l, y_l),

the distillation term over every image of the step, the cross-entropy over the `labeled` stream
only (declared when alpha < 1). SimCLR v2 distils on unlabelled data alone: alpha = 1, T = 1,
no T^2 (Eq. 3, in its cross-entropy form, which has the KL's gradients:
`ssl_jax.losses.knowledge_distillation`); these are the config's defaults. Hinton et al. weight a
hard-label term and scale the soft one by T^2 (`t_squared`).

The teacher is any ssl_jax run whose method has a classifier (`logits`): supervised (a
fine-tuned self-supervised run included, e.g. SimCLR v2's), FixMatch / Mean Teacher /
Pseudo-label (their evaluated EMA model), or another distilled student. It is read through
`ssl_jax.runs` from `method.teacher_workdir` (its config.json and checkpoint
`method.teacher_step`, the latest by default), rebuilt as its own method, and run in inference
mode under stop-gradient. The student's size comes from this config: the teacher's backbone
(self-distillation) or a smaller one.

Both networks see the same pixels: each transfer image is flipped and translated once in uint8
(the weak view of `semi_supervised`, which moves pixels without resampling them), then each
network normalises (and the teacher resizes) it as it was trained to. SimCLR v2 uses its
fine-tuning augmentation (random crop + flip) here; the weak view is the CIFAR equivalent.

Where the teacher lives: in the method state (`state['teacher']`: params, method state and the
checkpoint step it came from), so the optimizer never sees it, no gradient reaches it, it is
sharded like every other state, and a resumed run restores the very teacher it started with
even if the teacher's run has saved newer checkpoints since. The price is a copy of the teacher
in each of this run's checkpoints (closing over the weights instead would bake them into the
compiled step as constants). The teacher's step is logged as `train/teacher_step`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ssl_jax import runs
from ssl_jax.config_lib import ConfigError
from ssl_jax.losses import knowledge_distillation
from ssl_jax.methods import base, build_method, online_probe
from ssl_jax.methods import semi_supervised as ssl

STREAMS = (ssl.LABELED, ssl.UNLABELED)


def default_method_config() -> ml_collections.ConfigDict:
  m = ssl.default_method_config("distill")
  m.ema_decay = 0.0               # SimCLR v2 evaluates the student itself.
  m.teacher_workdir = ""          # Workdir of a trained run with a classifier (required).
  m.teacher_step = -1             # Its checkpoint step; -1 = the latest when the run starts.
  m.temperature = 1.0             # T (SimCLR v2: 1; Hinton et al.: up to 20).
  m.alpha = 1.0                   # Distillation weight; 1 - alpha on the labelled CE.
  m.t_squared = True              # Hinton et al.'s T^2 factor (SimCLR v2: none; same at T = 1).
  return m


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A trained run's classifier: its method and its variables, on host."""
  method: base.Method
  params: Any
  state: Any
  step: int
  origin: str


def load_teacher(workdir: str, step: int | None = None) -> Teacher:
  """The classifier of the ssl_jax run in `workdir` at checkpoint `step` (None: the latest).

  Raises:
    runs.RunError: no such workdir / config.json / checkpoint.
    ValueError: the run's method has no classifier.
  """
  config = runs.load_config(workdir)
  method = build_method(config)
  if not hasattr(method, "logits"):
    raise ConfigError(f"method.teacher_workdir={workdir} holds a {config.method.name!r} run, "
                      "which has no classifier to distil; use a run that has one (supervised, "
                      "a fine-tuned self-supervised run, fixmatch, mean_teacher, pseudo_label, "
                      "distill).")
  run = runs.load_checkpoint(workdir, step)
  # An online probe (eval.online_probe) is not the run's classifier; its params are dropped.
  params = {k: v for k, v in run.params.items() if k != online_probe.PROBE_KEY}
  logging.info("Teacher: %s (%s)", config.method.name, run.origin)
  return Teacher(method=method, params=params, state=run.method_state or {}, step=run.step,
                 origin=run.origin)


@dataclasses.dataclass(frozen=True)
class Distill(ssl.SemiSupervisedClassifier):
  """A student classifier distilled from a frozen teacher run's classifier."""

  required_streams = ()  # Checked below: 'unlabeled' and/or 'labeled', or the single batch.

  def __post_init__(self):
    super().__post_init__()
    m = self.config.method
    if not m.teacher_workdir:
      raise ConfigError("method.teacher_workdir is empty: set it to the workdir of a trained "
                        "run with a classifier, e.g. --config.method.teacher_workdir=/tmp/sup.")
    if not 0.0 <= m.alpha <= 1.0:
      raise ConfigError(f"method.alpha must be in [0, 1], got {m.alpha}.")
    declared = set(self.config.data.streams.keys())
    if declared - set(STREAMS) or (declared and ssl.UNLABELED not in declared):
      raise ConfigError(f"distill reads the {ssl.UNLABELED!r} stream (and {ssl.LABELED!r} for "
                        f"the labelled cross-entropy), or the single-stream batch; "
                        f"config.data.streams declares {sorted(declared)}.")
    if m.alpha < 1.0 and ssl.LABELED not in declared:
      raise ConfigError(f"method.alpha={m.alpha} weights a cross-entropy on labelled data by "
                        f"1 - alpha: declare a {ssl.LABELED!r} stream in config.data.streams, "
                        "or set method.alpha=1.0 to distil only.")

  @functools.cached_property
  def teacher(self) -> Teacher:
    """The teacher run's classifier, read once per method object."""
    m = self.config.method
    return load_teacher(m.teacher_workdir, None if m.teacher_step < 0 else int(m.teacher_step))

  def init(self, rng, batch):
    params, state = super().init(rng, batch)
    teacher = self.teacher
    variables = (teacher.params, teacher.state)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                            variables)
    # A host callback rather than constants, as supervised `init_from`: jit would bake the
    # weights into the program.
    teacher_params, teacher_state = jax.pure_callback(lambda: variables, abstract)
    state["teacher"] = {"params": teacher_params, "state": teacher_state,
                        "step": jnp.asarray(teacher.step, jnp.int32)}
    return params, state

  def teacher_logits(self, state, images: jax.Array) -> jax.Array:
    """The teacher's inference-mode logits of uint8 canvas images, under stop-gradient."""
    teacher = state["teacher"]
    logits = self.teacher.method.logits(teacher["params"], teacher["state"], images)
    return jax.lax.stop_gradient(logits.astype(jnp.float32))

  def transfer_images(self, batch) -> tuple[jax.Array, jax.Array | None]:
    """(uint8 images the distillation term covers, labels of its first rows or None): the
    labelled rows first when a 'labeled' stream is declared."""
    if not self.config.data.streams:
      return batch["image"], None
    images = [batch[ssl.UNLABELED]["image"]]
    labels = None
    if ssl.LABELED in batch:
      images.insert(0, batch[ssl.LABELED]["image"])
      labels = batch[ssl.LABELED]["label"]
    return jnp.concatenate(images, axis=0), labels

  def loss(self, params, state, batch, rng, step):
    del step
    m = self.config.method
    images, labels = self.transfer_images(batch)
    # One flip + translation of the uint8 pixels, seen by both networks.
    view = ssl.flip_and_translate(rng, images, flip_prob=m.flip_prob, max_shift=self.max_shift)
    (student,), batch_stats = self.student_logits(params, state, [self.eval_inputs(view)])
    teacher = self.teacher_logits(state, view)
    distillation = knowledge_distillation.distillation_loss(
        student, teacher, m.temperature, t_squared=m.t_squared)
    loss = m.alpha * distillation
    metrics = {"distillation": distillation,
               "teacher_agreement": jnp.mean(jnp.argmax(student, -1) == jnp.argmax(teacher, -1)),
               "teacher_step": state["teacher"]["step"]}
    if labels is not None:
      cross_entropy, accuracy = self.labeled_loss(student[:labels.shape[0]], labels)
      loss = loss + (1.0 - m.alpha) * cross_entropy
      metrics.update(cross_entropy=cross_entropy, labeled_acc=accuracy)
    return loss, (metrics, {**state, "batch_stats": batch_stats})
