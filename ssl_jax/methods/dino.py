"""DINO: Emerging Properties in Self-Supervised Vision Transformers (Caron et al., 2021).

Semantics follow facebookresearch/dino `main_dino.py` (and `utils.py`, `vision_transformer.py`):

* multi-crop (`DataAugmentationDINO`): 2 global crops (224 px, scale (0.4, 1)) and
  `local_crops_number` local crops (96 px, scale (0.05, 0.4)); flip, colour jitter
  (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2 on every crop; Gaussian blur p=1.0 on the first
  global crop, p=0.1 plus solarization p=0.2 on the second, p=0.5 on the local crops;
* the student (backbone + `DINOHead`) sees every crop, backbone run once per resolution and the
  head once on all of them (`MultiCropWrapper`); the teacher, an EMA of the student held in the
  method state, sees the 2 global crops only and has no stochastic depth;
* loss (`DINOLoss`, `ssl_jax.losses.distillation.dino_loss`): cross-entropy between the centred,
  sharpened teacher and the student over every (teacher crop t, student crop v != t) pair, the
  teacher temperature warmed up linearly per epoch, the centre an EMA (0.9) of the teacher logits;
* teacher momentum cosine from `momentum_teacher` to 1 over the whole run, per iteration;
* optimizer (`train_one_epoch`), declared in configs/dino.py and built by ssl_jax/optim.py:
  AdamW, lr warm-up from 0 (`np.linspace`, the peak at warm-up step W - 1) then cosine to
  `min_lr`, weight decay cosine from `weight_decay` to `weight_decay_end` on every parameter of
  rank > 1 (`get_params_groups`), gradients clipped per parameter tensor to norm `clip_grad`
  (`clip_gradients`), and the head's last layer (group `last_layer`) frozen (its gradient set to
  None, so AdamW skips it entirely) during the first `freeze_last_layer` epochs
  (`cancel_gradients_last_layer`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import attention, collapse, optim
from ssl_jax.config_lib import ConfigError
from ssl_jax.losses import distillation, schedules
from ssl_jax.methods import base, views
from ssl_jax.models import heads, registry, vit


# ---------------------------------------------------------------------------------------------
# Networks and the method.


class EncoderWithHead(nn.Module):
  """Backbone once per resolution group, head once on all the features (`MultiCropWrapper`).

  Params: {'encoder', 'head'}. The encoder must be built at the first group's resolution (the
  global crops) for a learned position embedding; later groups get it resampled.
  """
  encoder: nn.Module
  head: nn.Module

  def __call__(self, crop_groups: Sequence[jax.Array], *, train: bool) -> jax.Array:
    return self.head(views.encode_crop_groups(self.encoder, crop_groups, train=train),
                     train=train)

  def encode(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    return self.encoder(images, train=train)


def default_method_config() -> ml_collections.ConfigDict:
  """main_dino.py's flag defaults (ViT-S/16 on 8 GPUs for 100 epochs)."""
  m = ml_collections.ConfigDict()
  m.name = "dino"
  # DINOHead.
  m.out_dim = 65536
  m.hidden_dim = 2048
  m.bottleneck_dim = 256
  m.head_layers = 3
  m.use_bn_in_head = False
  m.norm_last_layer = True
  # Teacher and loss.
  m.momentum_teacher = 0.996
  m.warmup_teacher_temp = 0.04
  m.teacher_temp = 0.04
  m.warmup_teacher_temp_epochs = 0
  m.student_temp = 0.1
  m.center_momentum = 0.9
  # Multi-crop: the two global recipes and the local one.
  m.global_view_1 = views.dino_view(224, (0.4, 1.0), blur_prob=1.0)
  m.global_view_2 = views.dino_view(224, (0.4, 1.0), blur_prob=0.1, solarize_prob=0.2)
  m.local_view = views.dino_view(96, (0.05, 0.4), blur_prob=0.5)
  m.local_crops_number = 8
  # Attention maps at eval time: keep this fraction of each head's mass (visualize_attention.py).
  m.attention_keep_mass = 0.6
  return m


@dataclasses.dataclass(frozen=True)
class DINO(base.Method):
  """The DINO method (Method contract). State: {'teacher', 'center'[, 'batch_stats']}."""

  def _network(self, drop_path_rate: float | None = None) -> EncoderWithHead:
    model_config = ml_collections.ConfigDict(self.config.model.to_dict())
    if drop_path_rate is not None:
      model_config.drop_path_rate = drop_path_rate
    m = self._m
    head = heads.DINOHead(out_dim=m.out_dim, hidden_dim=m.hidden_dim,
                          bottleneck_dim=m.bottleneck_dim, num_layers=m.head_layers,
                          use_bn=m.use_bn_in_head, norm_last_layer=m.norm_last_layer,
                          dtype=base.compute_dtype(self.config.model))
    return EncoderWithHead(encoder=registry.build_encoder(model_config), head=head)

  @property
  def student(self) -> EncoderWithHead:
    return self._network()

  @property
  def teacher(self) -> EncoderWithHead:
    # main_dino.py builds the teacher without stochastic depth.
    return self._network(drop_path_rate=0.0)

  @property
  def crop_recipes(self) -> list[tuple[ml_collections.ConfigDict, int]]:
    m = self._m
    if m.global_view_1.size != m.global_view_2.size:
      raise ConfigError(f"The two global crops must have one size (the teacher sees them as one "
                        f"batch); got method.global_view_1.size={m.global_view_1.size} and "
                        f"method.global_view_2.size={m.global_view_2.size}.")
    if m.local_crops_number < 0:
      raise ConfigError(f"method.local_crops_number must be >= 0, got {m.local_crops_number}.")
    recipes = [(m.global_view_1, 1), (m.global_view_2, 1)]
    if m.local_crops_number:
      recipes.append((m.local_view, int(m.local_crops_number)))
    return recipes

  @property
  def num_crops(self) -> int:
    return 2 + int(self._m.local_crops_number)

  @property
  def eval_recipe(self) -> ml_collections.ConfigDict:
    return self._m.global_view_1

  def make_crops(self, rng: jax.Array, images: jax.Array) -> list[jax.Array]:
    """[global 1, global 2, local crops...] as normalised float arrays, crop-major."""
    return views.multi_crop_views(rng, images, self.crop_recipes)

  # -- Method contract ------------------------------------------------------------------------

  def init(self, rng, batch):
    m = self._m
    global_size, local_size = int(m.global_view_1.size), int(m.local_view.size)
    groups = [jnp.zeros((2, global_size, global_size, 3), jnp.float32)]
    if m.local_crops_number:
      groups.append(jnp.zeros((2, local_size, local_size, 3), jnp.float32))
    variables = self.student.init({"params": rng, "dropout": rng}, groups, train=False)
    params = variables["params"]
    # The teacher starts as a copy of the student (`load_state_dict(student.state_dict())`).
    state = {"teacher": jax.tree.map(jnp.copy, params),
             "center": jnp.zeros((m.out_dim,), jnp.float32)}
    if "batch_stats" in variables:
      state["batch_stats"] = {"student": variables["batch_stats"],
                              "teacher": jax.tree.map(jnp.copy, variables["batch_stats"])}
    return params, state

  def _apply(self, network, params, batch_stats, groups, rng):
    """Train-mode forward; BatchNorm (if any) on batch statistics, as both nets in dino."""
    variables = {"params": params}
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
      out, updates = network.apply(variables, groups, train=True, rngs={"dropout": rng},
                                   mutable=["batch_stats"])
      return out, updates["batch_stats"]
    return network.apply(variables, groups, train=True, rngs={"dropout": rng}), None

  def teacher_forward(self, state, crops: Sequence[jax.Array]) -> tuple[jax.Array, Any]:
    """[2, B, K] teacher head outputs on the two global crops (no gradient), and the teacher's
    updated BatchNorm statistics (None without BatchNorm)."""
    batch_stats = state["batch_stats"]["teacher"] if "batch_stats" in state else None
    # The teacher has no stochastic depth, so its dropout rng is never drawn from.
    out, new_stats = self._apply(self.teacher, state["teacher"], batch_stats,
                                 views.group_by_resolution(crops[:2]), jax.random.PRNGKey(0))
    return jax.lax.stop_gradient(out.reshape(2, -1, out.shape[-1])), new_stats

  def teacher_temperature(self, step: jax.Array) -> jax.Array:
    m = self._m
    epoch = jnp.asarray(step) // self.steps_per_epoch
    return schedules.teacher_temperature_schedule(
        epoch, m.warmup_teacher_temp, m.teacher_temp, int(m.warmup_teacher_temp_epochs))

  def loss(self, params, state, batch, rng, step):
    m = self._m
    view_rng, drop_rng = jax.random.split(rng)
    crops = self.make_crops(view_rng, batch["image"])
    has_bn = "batch_stats" in state
    student_out, student_stats = self._apply(
        self.student, params, state["batch_stats"]["student"] if has_bn else None,
        views.group_by_resolution(crops), drop_rng)
    student_logits = student_out.reshape(self.num_crops, -1, student_out.shape[-1])
    teacher_logits, teacher_stats = self.teacher_forward(state, crops)
    temperature = self.teacher_temperature(step)
    loss, new_center = distillation.dino_loss(
        student_logits, teacher_logits, state["center"], temperature,
        student_temperature=m.student_temp, center_momentum=m.center_momentum)

    new_state = {**state, "center": new_center}
    if has_bn:
      new_state["batch_stats"] = {"student": student_stats, "teacher": teacher_stats}
    teacher_probs = jax.nn.softmax((teacher_logits - state["center"]) / temperature, axis=-1)
    metrics = {"dino_loss": loss, "teacher_temperature": temperature,
               "collapse_teacher_entropy": collapse.normalised_entropy(teacher_probs),
               "teacher_momentum": self.teacher_momentum(step),
               "weight_decay": self.weight_decay(step)}
    return loss, (metrics, new_state)

  def teacher_momentum(self, step: jax.Array) -> jax.Array:
    return schedules.teacher_momentum_schedule(step, self.total_steps, self._m.momentum_teacher)

  def weight_decay(self, step: jax.Array) -> jax.Array:
    """The base group's weight decay (configs/dino.py: cosine 0.04 -> 0.4), for the metrics."""
    schedule = optim.weight_decay_schedule(self.config.optim, total_steps=self.total_steps)
    return schedule(step) if callable(schedule) else jnp.asarray(schedule)

  def update_state(self, params, state, step):
    teacher = schedules.ema_update(state["teacher"], params, self.teacher_momentum(step))
    return {**state, "teacher": teacher}

  def features(self, params, state, images):
    """The teacher backbone's output (CLS token for a ViT), as dino's eval_knn/eval_linear."""
    del params
    variables = {"params": state["teacher"]}
    if "batch_stats" in state:
      variables["batch_stats"] = state["batch_stats"]["teacher"]
    out = self.teacher.apply(variables, self.eval_inputs(images), train=False,
                             method=EncoderWithHead.encode)
    return out["pooled"].astype(jnp.float32)

  # -- Attention maps -------------------------------------------------------------------------

  def attention_encoder(self, params, state) -> tuple[nn.Module, Any]:
    """The backbone whose attention is shown and its params: the teacher's, as dino's figures."""
    del params
    return self.teacher.encoder, state["teacher"]["encoder"]

  def visualize(self, params, state, images, rng):
    """One row per image: image | CLS attention of each head | 60%-mass masks (attention.py)."""
    del rng
    encoder, encoder_params = self.attention_encoder(params, state)
    if not isinstance(encoder, vit.VisionTransformer):
      return {}
    inputs = self.eval_inputs(images)
    view = self._m.global_view_1
    display = jnp.clip(inputs * jnp.asarray(view.std) + jnp.asarray(view.mean), 0.0, 1.0)
    maps = attention.cls_attention(encoder, encoder_params, inputs)
    return {"attention": attention.render_attention_grid(
        display, maps, encoder.patch_size, keep_mass=float(self._m.attention_keep_mass))}
