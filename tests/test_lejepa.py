"""LeJEPA: SIGReg against a numpy Epps-Pulley transcription, its behaviour on Gaussian and
collapsed embeddings, 1 device vs 8, the prediction (invariance) term, and a smoke run."""

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import config_lib, parallel, runs, train
from ssl_jax.losses import sigreg
from ssl_jax.methods import lejepa

REPO = pathlib.Path(__file__).resolve().parents[1]
T_MAX, KNOTS = 3.0, 17


def np_epps_pulley(x, t_max=T_MAX, knots=KNOTS):
  """N * int_{-T}^{T} |mean_n exp(i t x_n) - exp(-t^2/2)|^2 exp(-t^2/2) dt, trapezoid rule
  on the symmetric knots (the same spacing as `knots` on [0, T])."""
  t = np.linspace(-t_max, t_max, 2 * knots - 1)
  ecf = np.exp(1j * np.outer(x, t)).mean(axis=0)
  integrand = np.abs(ecf - np.exp(-t**2 / 2)) ** 2 * np.exp(-t**2 / 2)
  return len(x) * np.trapezoid(integrand, t)


def np_sigreg(embeddings, directions):
  """Mean over leading axes and slices of the Epps-Pulley statistic of each projection."""
  embeddings = np.asarray(embeddings, np.float64).reshape(-1, *embeddings.shape[-2:])
  directions = np.asarray(directions, np.float64)
  values = [np_epps_pulley(view @ directions[:, m])
            for view in embeddings for m in range(directions.shape[1])]
  return float(np.mean(values))


def test_sigreg_equals_numpy_epps_pulley_for_the_same_slices():
  rng = jax.random.key(3)
  embeddings = np.random.default_rng(0).normal(0.3, 1.2, (2, 40, 6)).astype(np.float32)
  directions = sigreg.slice_directions(rng, 6, 12)
  np.testing.assert_allclose(np.linalg.norm(directions, axis=0), 1.0, rtol=1e-6)
  got = sigreg.sigreg(jnp.asarray(embeddings), rng, num_slices=12, t_max=T_MAX,
                      num_knots=KNOTS)
  np.testing.assert_allclose(float(got), np_sigreg(embeddings, directions), rtol=1e-4)
  # Per slice too, on other data: [N, M] projections -> [M] statistics.
  x = np.random.default_rng(1).standard_t(3, (50, 4)).astype(np.float32)
  np.testing.assert_allclose(sigreg.epps_pulley(jnp.asarray(x), t_max=5.0, num_knots=9),
                             [np_epps_pulley(x[:, m], 5.0, 9) for m in range(4)], rtol=1e-4)


def test_slice_directions_are_a_function_of_the_rng():
  a = sigreg.slice_directions(jax.random.key(7), 16, 32)
  np.testing.assert_array_equal(a, sigreg.slice_directions(jax.random.key(7), 16, 32))
  assert not np.allclose(a, sigreg.slice_directions(jax.random.key(8), 16, 32))


def test_sigreg_is_near_its_minimum_for_gaussians_and_large_for_collapse():
  rng, key = jax.random.key(0), np.random.default_rng(0)
  n, dim = 1024, 16
  stat = lambda z: float(sigreg.sigreg(jnp.asarray(z, jnp.float32), rng, num_slices=256))
  gaussian = stat(key.normal(size=(n, dim)))
  # E[N |phi_N(t) - phi(t)|^2] = 1 - exp(-t^2) for N(0, 1) samples: the statistic's floor.
  t = np.linspace(-T_MAX, T_MAX, 2001)
  floor = np.trapezoid((1 - np.exp(-t**2)) * np.exp(-t**2 / 2), t)
  assert gaussian == pytest.approx(floor, rel=0.25), (gaussian, floor)
  # Any departure from N(0, I) costs: wrong scale, offset, one shared value, one direction.
  assert stat(2.0 * key.normal(size=(n, dim))) > 10 * gaussian
  assert stat(key.normal(size=(n, dim)) + 1.0) > 10 * gaussian
  assert stat(np.ones((n, dim))) > 100 * gaussian
  rank_one = key.normal(size=(n, 1)) * key.normal(size=(1, dim))
  assert stat(rank_one) > 10 * gaussian


def test_sigreg_is_the_same_on_one_device_and_sharded_over_eight():
  assert jax.device_count() == 8
  embeddings = np.random.default_rng(0).normal(size=(3, 64, 8)).astype(np.float32)
  fn = jax.jit(lambda z, key: sigreg.sigreg(z, key, num_slices=32))
  rng = jax.random.key(5)
  single = fn(jax.device_put(embeddings, jax.devices()[0]), rng)
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  sharded = jax.device_put(embeddings, NamedSharding(mesh, P(None, parallel.BATCH_AXES)))
  assert len(sharded.addressable_shards) == 8
  np.testing.assert_allclose(fn(sharded, jax.device_put(rng, parallel.replicated(mesh))),
                             single, rtol=1e-5)
  # The crop-major [V*N, K] rows of the method, batch-sharded, then reshaped as the loss does.
  rows = jax.device_put(embeddings.reshape(-1, 8), parallel.batch_sharding(mesh))
  np.testing.assert_allclose(fn(rows.reshape(3, 64, 8), rng), single, rtol=1e-5)


def test_prediction_loss_is_the_distance_to_the_global_views_centre():
  z = np.random.default_rng(0).normal(size=(5, 4, 3))
  expected = 0.0
  for n in range(4):
    centre = (z[0, n] + z[1, n]) / 2
    expected += sum(np.sum((z[v, n] - centre) ** 2) for v in range(5))
  expected /= 5 * 4 * 3
  np.testing.assert_allclose(lejepa.prediction_loss(jnp.asarray(z), 2), expected, rtol=1e-6)
  # Identical views: nothing to predict.
  assert float(lejepa.prediction_loss(jnp.broadcast_to(jnp.asarray(z[:1]), z.shape), 2)) == 0
  with pytest.raises(ValueError, match="views"):
    lejepa.prediction_loss(jnp.asarray(z), 6)


def test_smoke_run_lowers_its_loss_and_beats_chance(tmp_path):
  config = config_lib.load_config(f"{REPO}/configs/lejepa.py:smoke")
  config.lock()
  config_lib.apply_overrides(config, [
      "total_steps=30", "log_every=10", "export_at_end=False", "visualize=False",
      "checkpoint_every=0"])
  result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  records = runs.read_metrics(tmp_path)
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  sigregs = [r["train/sigreg"] for r in records if "train/sigreg" in r]
  assert len(losses) == 3 and losses[-1] < losses[0], losses
  assert sigregs[-1] < sigregs[0], sigregs
  assert all("train/invariance" in r for r in records if "train/loss" in r)
  assert result["eval/knn_top1"] > 0.3, result  # 10 classes: chance is 0.1.


def test_resnet_backbone_threads_its_batch_norm_statistics_through_the_loss():
  """The `resnet50` preset's path (ResNet-18 here, shapes only): BN statistics of the encoder
  and projector live in the state and come back from the loss; features are the pooled 512."""
  config = config_lib.load_config(f"{REPO}/configs/lejepa.py:imagenet,resnet50")
  config.model.name = "resnet18"
  m = config.method
  m.global_view.size, m.local_view.size, m.proj_hidden_dim, m.proj_dim = 32, 16, 64, 16
  method = lejepa.LeJEPA.from_config(config)
  batch = {"image": jnp.zeros((4, 40, 40, 3), jnp.uint8), "label": jnp.zeros((4,), jnp.int32)}
  params, state = jax.eval_shape(method.init, jax.random.key(0), batch)
  assert set(params) == set(state["batch_stats"]) == {"encoder", "projector"}
  loss, (metrics, new_state) = jax.eval_shape(method.loss, params, state, batch,
                                              jax.random.key(1), jnp.int32(0))
  assert loss.shape == () and set(metrics) == {"invariance", "sigreg", "collapse_std"}
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert jax.eval_shape(method.features, params, state, batch["image"]).shape == (4, 512)
