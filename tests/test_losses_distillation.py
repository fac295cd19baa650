"""BYOL / SimSiam / DINO / SwAV losses and the teacher schedules against numpy references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssl_jax.losses import distillation
from ssl_jax.losses import schedules

byol_loss = jax.jit(distillation.byol_loss)
simsiam_loss = jax.jit(distillation.simsiam_loss)
dino_loss = jax.jit(distillation.dino_loss,
                    static_argnames=("student_temperature", "center_momentum"))
sinkhorn_knopp = jax.jit(distillation.sinkhorn_knopp, static_argnames=("epsilon", "num_iters"))
swav_loss = jax.jit(distillation.swav_loss,
                    static_argnames=("temperature", "epsilon", "num_sinkhorn_iters",
                                     "crops_for_assign"))


def _cosine(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.sum(np.exp(x - x.max()))) - x.max()


def _softmax(x):
  return np.exp(_log_softmax(x))


def _reference_dino(student, teacher, center, teacher_temp, student_temp=0.1, momentum=0.9):
  """facebookresearch/dino DINOLoss.forward / update_center, written sample by sample."""
  num_student_views, batch_size, _ = student.shape
  total, num_terms = 0.0, 0
  for iq in range(teacher.shape[0]):
    for v in range(num_student_views):
      if v == iq:
        continue
      per_sample = []
      for b in range(batch_size):
        q = _softmax((teacher[iq, b] - center) / teacher_temp)
        per_sample.append(-np.sum(q * _log_softmax(student[v, b] / student_temp)))
      total += np.mean(per_sample)
      num_terms += 1
  batch_center = teacher.reshape(-1, teacher.shape[-1]).sum(0) / (teacher.shape[0] * batch_size)
  return total / num_terms, center * momentum + batch_center * (1 - momentum)


def _reference_sinkhorn(scores, epsilon, num_iters):
  """swav distributed_sinkhorn on one process, Q as K x B with explicit per-row/column sums."""
  q = np.exp(np.asarray(scores, np.float64) / epsilon).T
  num_prototypes, num_samples = q.shape
  q /= q.sum()
  for _ in range(num_iters):
    for k in range(num_prototypes):
      q[k] /= q[k].sum() * num_prototypes
    for b in range(num_samples):
      q[:, b] /= q[:, b].sum() * num_samples
  return (q * num_samples).T


def _reference_swav(scores, temperature, epsilon, num_iters, crops_for_assign, queue_scores=None):
  """swav main_swav.train's loss, with codes from the queue's scores stacked before the batch's."""
  num_views, batch_size, _ = scores.shape
  loss = 0.0
  for i, crop in enumerate(crops_for_assign):
    out = scores[crop]
    if queue_scores is not None:
      out = np.concatenate([queue_scores[i], out])
    codes = _reference_sinkhorn(out, epsilon, num_iters)[-batch_size:]
    subloss = 0.0
    for v in np.delete(np.arange(num_views), crop):
      subloss -= np.mean([np.sum(codes[b] * _log_softmax(scores[v, b] / temperature))
                          for b in range(batch_size)])
    loss += subloss / (num_views - 1)
  return loss / len(crops_for_assign)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def test_byol_matches_reference_and_stops_target_gradient(rng):
  p1, p2, z1, z2 = (rng.normal(size=(3, 4)) for _ in range(4))
  expected = np.mean([(2 - 2 * _cosine(p1[n], z2[n])) + (2 - 2 * _cosine(p2[n], z1[n]))
                      for n in range(3)])
  args = [jnp.asarray(a) for a in (p1, p2, z1, z2)]
  np.testing.assert_allclose(byol_loss(*args), expected, rtol=1e-5)
  grads = jax.jit(jax.grad(distillation.byol_loss, argnums=(0, 1, 2, 3)))(*args)
  assert np.abs(grads[0]).max() > 0 and np.abs(grads[1]).max() > 0
  np.testing.assert_array_equal(grads[2], 0.0)
  np.testing.assert_array_equal(grads[3], 0.0)


def test_simsiam_matches_reference_and_stops_target_gradient(rng):
  p1, p2, z1, z2 = (rng.normal(size=(3, 4)) for _ in range(4))
  expected = 0.5 * (-np.mean([_cosine(p1[n], z2[n]) for n in range(3)])
                    - np.mean([_cosine(p2[n], z1[n]) for n in range(3)]))
  args = [jnp.asarray(a) for a in (p1, p2, z1, z2)]
  np.testing.assert_allclose(simsiam_loss(*args), expected, rtol=1e-5)
  # Predictions aligned with the other view's projections reach the minimum -1.
  np.testing.assert_allclose(simsiam_loss(args[3], args[2], args[2], 3 * args[3]), -1.0,
                             rtol=1e-6)
  grads = jax.jit(jax.grad(distillation.simsiam_loss, argnums=(0, 1, 2, 3)))(*args)
  assert np.abs(grads[0]).max() > 0 and np.abs(grads[1]).max() > 0
  np.testing.assert_array_equal(grads[2], 0.0)
  np.testing.assert_array_equal(grads[3], 0.0)


def test_dino_matches_official_loop_and_updates_center(rng):
  student = rng.normal(size=(4, 3, 5))  # 2 global + 2 local crops, B=3, K=5.
  teacher = rng.normal(size=(2, 3, 5))
  center = rng.normal(size=(5,)) * 0.1
  loss, new_center = dino_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(center),
                               0.04)
  expected_loss, expected_center = _reference_dino(student, teacher, center, 0.04)
  assert loss.dtype == jnp.float32 and loss.shape == () and new_center.shape == (5,)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(new_center, expected_center, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      new_center, 0.9 * center + 0.1 * teacher.mean(axis=(0, 1)), rtol=1e-5, atol=1e-7)


def test_dino_skips_same_view_pairs(rng):
  # Two global crops only: the loss is exactly the two cross pairs (t0, s1) and (t1, s0).
  student = rng.normal(size=(2, 3, 5))
  teacher = rng.normal(size=(2, 3, 5))
  center = np.zeros(5)
  loss, _ = dino_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(center), 0.07)

  def cross_entropy(t, s):
    return np.mean([-np.sum(_softmax(teacher[t, b] / 0.07) * _log_softmax(student[s, b] / 0.1))
                    for b in range(3)])

  np.testing.assert_allclose(loss, 0.5 * (cross_entropy(0, 1) + cross_entropy(1, 0)), rtol=1e-5)
  # Including the same-view pairs would average four terms instead.
  with_same_view = 0.25 * sum(cross_entropy(t, v) for t in range(2) for v in range(2))
  assert abs(float(loss) - with_same_view) > 1e-3


def test_dino_stops_gradient_to_teacher_and_center(rng):
  student = jnp.asarray(rng.normal(size=(3, 2, 5)))
  teacher = jnp.asarray(rng.normal(size=(2, 2, 5)))
  center = jnp.asarray(rng.normal(size=(5,)))
  loss_only = lambda s, t, c: distillation.dino_loss(s, t, c, 0.04)[0]
  grads = jax.jit(jax.grad(loss_only, argnums=(0, 1, 2)))(student, teacher, center)
  assert np.abs(grads[0]).max() > 0
  np.testing.assert_array_equal(grads[1], 0.0)
  np.testing.assert_array_equal(grads[2], 0.0)


def test_dino_takes_traced_teacher_temperature_and_bf16(rng):
  student, teacher = rng.normal(size=(3, 2, 5)), rng.normal(size=(2, 2, 5))
  temperature = schedules.teacher_temperature_schedule(jnp.asarray(3))
  loss, center = dino_loss(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16),
                           jnp.zeros(5), temperature)
  assert loss.dtype == jnp.float32 and center.dtype == jnp.float32
  expected, _ = _reference_dino(student, teacher, np.zeros(5), float(temperature))
  np.testing.assert_allclose(loss, expected, rtol=3e-2)


def test_dino_rejects_bad_inputs():
  with pytest.raises(ValueError, match="crop-major"):
    distillation.dino_loss(jnp.ones((6, 5)), jnp.ones((2, 3, 5)), jnp.zeros(5), 0.04)
  with pytest.raises(ValueError, match="center must have shape"):
    distillation.dino_loss(jnp.ones((4, 3, 5)), jnp.ones((2, 3, 5)), jnp.zeros((1, 5)), 0.04)
  with pytest.raises(ValueError, match="first crops"):
    distillation.dino_loss(jnp.ones((2, 3, 5)), jnp.ones((3, 3, 5)), jnp.zeros(5), 0.04)
  with pytest.raises(ValueError, match="teacher_temperature"):
    distillation.dino_loss(jnp.ones((4, 3, 5)), jnp.ones((2, 3, 5)), jnp.zeros(5), 0.0)


def test_sinkhorn_matches_official_and_marginals(rng):
  scores = _normalize(rng.normal(size=(6, 4))) @ _normalize(rng.normal(size=(5, 4))).T
  codes = sinkhorn_knopp(jnp.asarray(scores), epsilon=0.05, num_iters=3)
  np.testing.assert_allclose(codes, _reference_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-7)
  # Official convention: after the final (column) step every sample's code sums to exactly 1;
  # the prototype marginals are only approximately B/K after 3 iterations.
  np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-5)
  converged = sinkhorn_knopp(jnp.asarray(scores), epsilon=0.05, num_iters=200)
  np.testing.assert_allclose(converged.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(converged.sum(axis=0), 6 / 5, rtol=1e-3)


def test_sinkhorn_is_shift_invariant_finite_and_gradient_free(rng):
  scores = rng.normal(size=(6, 5))
  codes = sinkhorn_knopp(jnp.asarray(scores, jnp.float32))
  # exp(20 / 0.05) overflows float32; subtracting the max keeps it exact and finite.
  shifted = sinkhorn_knopp(jnp.asarray(scores + 20.0, jnp.float32))
  assert np.all(np.isfinite(shifted))
  np.testing.assert_allclose(shifted, codes, rtol=1e-4, atol=1e-7)
  grad = jax.jit(jax.grad(lambda s: jnp.sum(distillation.sinkhorn_knopp(s) ** 2)))(
      jnp.asarray(scores))
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("crops_for_assign", [(0, 1), (1,)])
def test_swav_matches_official_loop(rng, crops_for_assign):
  scores = rng.uniform(-1, 1, size=(4, 3, 5))  # 2 global + 2 local crops, B=3, K=5.
  loss = swav_loss(jnp.asarray(scores), crops_for_assign=crops_for_assign)
  np.testing.assert_allclose(
      loss, _reference_swav(scores, 0.1, 0.05, 3, crops_for_assign), rtol=1e-4)


def test_swav_with_queue_matches_official_loop(rng):
  scores = rng.uniform(-1, 1, size=(3, 3, 5))
  queue_scores = rng.uniform(-1, 1, size=(2, 6, 5))
  loss = swav_loss(jnp.asarray(scores), queue_scores=jnp.asarray(queue_scores))
  expected = _reference_swav(scores, 0.1, 0.05, 3, (0, 1), queue_scores)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  assert abs(expected - _reference_swav(scores, 0.1, 0.05, 3, (0, 1))) > 1e-3  # the queue matters
  grads = jax.jit(jax.grad(lambda s, q: distillation.swav_loss(s, queue_scores=q),
                           argnums=(0, 1)))(jnp.asarray(scores), jnp.asarray(queue_scores))
  assert np.abs(grads[0]).max() > 0
  np.testing.assert_array_equal(grads[1], 0.0)


def test_swav_rejects_bad_inputs():
  with pytest.raises(ValueError, match="crops_for_assign"):
    distillation.swav_loss(jnp.ones((2, 3, 5)), crops_for_assign=(0, 2))
  with pytest.raises(ValueError, match="queue_scores"):
    distillation.swav_loss(jnp.ones((2, 3, 5)), queue_scores=jnp.ones((1, 4, 5)))


def test_distillation_losses_are_global_under_sharding(rng):
  mesh = Mesh(np.array(jax.devices()), ("data",))
  assert mesh.size == 8
  on_batch_axis = lambda axis: NamedSharding(mesh, PartitionSpec(*([None] * axis), "data"))
  pairs = [rng.normal(size=(16, 4)).astype(np.float32) for _ in range(4)]
  pairs_sharded = [jax.device_put(a, on_batch_axis(0)) for a in pairs]
  student = rng.normal(size=(4, 8, 5)).astype(np.float32)
  teacher = rng.normal(size=(2, 8, 5)).astype(np.float32)
  center = np.zeros(5, np.float32)
  student_sharded = jax.device_put(student, on_batch_axis(1))
  teacher_sharded = jax.device_put(teacher, on_batch_axis(1))
  assert len(student_sharded.sharding.device_set) == 8

  np.testing.assert_allclose(byol_loss(*pairs_sharded), byol_loss(*pairs), rtol=1e-6)
  np.testing.assert_allclose(simsiam_loss(*pairs_sharded), simsiam_loss(*pairs), rtol=1e-6)
  loss, new_center = dino_loss(student_sharded, teacher_sharded, center, 0.04)
  expected_loss, expected_center = _reference_dino(student, teacher, center, 0.04)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(new_center, expected_center, rtol=1e-5, atol=1e-7)
  scores = np.tanh(student)
  np.testing.assert_allclose(swav_loss(jax.device_put(scores, on_batch_axis(1))),
                             _reference_swav(scores, 0.1, 0.05, 3, (0, 1)), rtol=1e-4)


def _dino_cosine_scheduler(base_value, final_value, total_iters):
  """facebookresearch/dino utils.cosine_scheduler without warm-up, element by element."""
  return np.array([final_value + 0.5 * (base_value - final_value)
                   * (1 + np.cos(np.pi * i / total_iters)) for i in range(total_iters)])


def test_momentum_and_weight_decay_schedules_match_dino_tables():
  total = 50
  momentum = jax.vmap(functools.partial(schedules.teacher_momentum_schedule, total_steps=total))(
      jnp.arange(total))
  np.testing.assert_allclose(momentum, _dino_cosine_scheduler(0.996, 1.0, total), rtol=1e-6)
  # DINO's weight decay (--weight_decay 0.04, --weight_decay_end 0.4; ssl_jax/optim.py).
  weight_decay = jax.vmap(functools.partial(schedules.cosine_schedule, total_steps=total,
                                            base_value=0.04, final_value=0.4))(jnp.arange(total))
  np.testing.assert_allclose(weight_decay, _dino_cosine_scheduler(0.04, 0.4, total), rtol=1e-5)


def test_momentum_schedule_endpoints_and_byol_formula():
  total, base = 1000, 0.99
  for step in (0, 1, 250, 500, 999, 1000, 5000):
    # BYOL: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, with k clipped at K.
    expected = 1 - (1 - base) * (np.cos(np.pi * min(step, total) / total) + 1) / 2
    np.testing.assert_allclose(schedules.teacher_momentum_schedule(step, total, base), expected,
                               rtol=1e-6)
  assert float(schedules.teacher_momentum_schedule(0, total, base)) == pytest.approx(0.99)
  assert float(schedules.teacher_momentum_schedule(total, total, base)) == 1.0


def test_teacher_temperature_schedule_matches_dino_table():
  warmup_epochs, num_epochs = 30, 40
  table = np.concatenate((np.linspace(0.04, 0.07, warmup_epochs),
                          np.ones(num_epochs - warmup_epochs) * 0.07))
  values = jax.vmap(schedules.teacher_temperature_schedule)(jnp.arange(num_epochs))
  np.testing.assert_allclose(values, table, rtol=1e-6)
  one_epoch = [float(schedules.teacher_temperature_schedule(e, 0.04, 0.07, 1)) for e in (0, 1, 5)]
  np.testing.assert_allclose(one_epoch, [0.04, 0.07, 0.07], rtol=1e-6)
  np.testing.assert_allclose(schedules.teacher_temperature_schedule(3, 0.04, 0.07, 0), 0.07)


def test_ema_update_formula_and_dtypes():
  teacher = {"w": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(4.0, jnp.bfloat16)}}
  student = {"w": jnp.array([3.0, -2.0]), "b": {"c": jnp.array(0.0, jnp.bfloat16)}}
  updated = jax.jit(schedules.ema_update)(teacher, student, 0.75)
  np.testing.assert_allclose(updated["w"], [1.5, 1.0])
  assert updated["b"]["c"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(updated["b"]["c"]), 3.0)
  np.testing.assert_array_equal(schedules.ema_update(teacher, student, 1.0)["w"], teacher["w"])
  with pytest.raises(ValueError, match="same structure"):
    schedules.ema_update(teacher, {"w": student["w"]}, 0.9)


def test_schedules_reject_bad_arguments():
  with pytest.raises(ValueError, match="total_steps"):
    schedules.cosine_schedule(0, 0, 1.0, 0.0)
  with pytest.raises(ValueError, match="base_momentum"):
    schedules.teacher_momentum_schedule(0, 10, 1.5)
