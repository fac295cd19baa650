"""Schedules of the teacher-student methods and the EMA update of the teacher.

All schedules are jnp functions of the step (or epoch), so they can be evaluated inside a jitted
train step on a traced step counter.
"""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def cosine_schedule(step: int | jax.Array, total_steps: int, base_value: float,
                    final_value: float) -> jax.Array:
  """Half-cosine from `base_value` at step 0 to `final_value` at `total_steps`.

    value(s) = final + (base - final) * (1 + cos(pi * s / S)) / 2,  s clipped to [0, S].

  This is facebookresearch/dino `utils.cosine_scheduler` without warm-up (its table index `it`
  is s, its `len(iters)` is S), deepmind-research/byol `schedules.target_ema` (which also clips
  at `max_steps`) and moco-v3 `adjust_moco_momentum` (s/S = epoch/epochs, fractional).
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}.")
  progress = jnp.clip(jnp.asarray(step, jnp.float32), 0, total_steps) / total_steps
  return final_value + 0.5 * (base_value - final_value) * (1.0 + jnp.cos(jnp.pi * progress))


def teacher_momentum_schedule(step: int | jax.Array, total_steps: int,
                              base_momentum: float = 0.996) -> jax.Array:
  """EMA momentum of the teacher, cosine from `base_momentum` to 1 (BYOL Sec. 3.2, DINO Sec. 3.1).

    tau(k) = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2.

  Defaults: 0.996 for BYOL and DINO; 0.99 in moco-v3 (`--moco-m-cos`). MoCo v1/v2 use a constant
  0.999: pass it to `ema_update` directly.
  """
  if not 0.0 <= base_momentum <= 1.0:
    raise ValueError(f"base_momentum must be in [0, 1], got {base_momentum}.")
  return cosine_schedule(step, total_steps, base_momentum, 1.0)


def teacher_temperature_schedule(epoch: int | jax.Array, warmup_temperature: float = 0.04,
                                 final_temperature: float = 0.07,
                                 warmup_epochs: int = 30) -> jax.Array:
  """DINO's teacher temperature: linear warm-up per epoch, then constant.

  facebookresearch/dino `DINOLoss.teacher_temp_schedule`:
    concatenate(linspace(warmup, final, warmup_epochs), full(final)) indexed by epoch,
  so epoch e < warmup_epochs gets warmup + (final - warmup) * e / (warmup_epochs - 1) (the final
  value is reached at epoch warmup_epochs - 1; a 1-epoch warm-up is just `warmup_temperature`).
  Defaults: the paper's ViT recipe 0.04 -> 0.07 over 30 epochs (the repository's flags default to
  0.04 throughout).
  """
  if warmup_epochs < 0:
    raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
  if not (warmup_temperature > 0 and final_temperature > 0):
    raise ValueError("Teacher temperatures must be > 0, got "
                     f"{warmup_temperature} and {final_temperature}.")
  epoch = jnp.asarray(epoch, jnp.float32)
  if warmup_epochs == 0:
    return jnp.full_like(epoch, final_temperature)
  slope = ((final_temperature - warmup_temperature) / (warmup_epochs - 1)
           if warmup_epochs > 1 else 0.0)
  warming_up = warmup_temperature + slope * jnp.maximum(epoch, 0.0)
  return jnp.where(epoch < warmup_epochs, warming_up, final_temperature)


def ema_update(teacher: Any, student: Any, momentum: float | jax.Array) -> Any:
  """teacher <- momentum * teacher + (1 - momentum) * student, leaf by leaf.

  The momentum-encoder update of MoCo (`param_k = m * param_k + (1 - m) * param_q`), BYOL's target
  network (`x + (1 - tau) * (y - x)`) and DINO's teacher. Each leaf keeps the teacher's dtype; the
  blend is done in float32 so that 1 - m (1e-3 or less) is not rounded away in bf16 leaves.
  """
  teacher_structure = jax.tree.structure(teacher)
  student_structure = jax.tree.structure(student)
  if teacher_structure != student_structure:
    raise ValueError("ema_update needs teacher and student pytrees of the same structure; got\n"
                     f"teacher: {teacher_structure}\nstudent: {student_structure}.")
  momentum = jnp.asarray(momentum, jnp.float32)

  def blend(teacher_leaf, student_leaf):
    if np.shape(teacher_leaf) != np.shape(student_leaf):
      raise ValueError(f"ema_update: a teacher leaf of shape {np.shape(teacher_leaf)} faces a "
                       f"student leaf of shape {np.shape(student_leaf)}.")
    blended = (momentum * jnp.asarray(teacher_leaf, jnp.float32)
               + (1.0 - momentum) * jnp.asarray(student_leaf, jnp.float32))
    return blended.astype(jnp.result_type(teacher_leaf))

  return jax.tree.map(blend, teacher, student)
