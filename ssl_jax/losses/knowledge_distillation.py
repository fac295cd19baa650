"""Knowledge distillation to a teacher's softened class probabilities (Hinton et al. 2015).

With p^T = softmax(t / T) the teacher's and q^T = softmax(s / T) the student's probabilities at
temperature T, over a batch of N rows:

    cross-entropy (SimCLR v2, Eq. 3) = mean_i -sum_c p^T_ic log q^T_ic
    KL (`distillation_loss`)          = mean_i  sum_c p^T_ic (log p^T_ic - log q^T_ic)
                                      = cross-entropy - mean_i H(p^T_i).

The two differ by the teacher's entropy, which does not depend on the student: same gradients,
but the KL is 0 when the student matches the teacher, so it is the one computed here (a curve of
it shows how far the student still is from its teacher). Hinton et al. (Sec. 2) multiply the
soft term by T^2 so that its gradients keep their magnitude when T changes ("the magnitudes of
the gradients produced by the soft targets scale as 1/T^2"); SimCLR v2's Eq. 3 has no such
factor (at its T = 1 the two agree). The teacher's logits are under stop-gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_temperature(temperature: float) -> float:
  if not temperature > 0:
    raise ValueError(f"The distillation temperature must be > 0, got {temperature}.")
  return float(temperature)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float,
                      *, t_squared: bool = True) -> jax.Array:
  """[T^2 *] mean_i KL(softmax(t_i / T) || softmax(s_i / T)) over [N, C] logits.

  `t_squared`: Hinton et al.'s T^2 factor (True); SimCLR v2 has none (False).
  """
  temperature = _check_temperature(temperature)
  log_teacher = jax.nn.log_softmax(
      jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1)
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  kl = jnp.mean(jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=-1))
  return kl * temperature ** 2 if t_squared else kl
