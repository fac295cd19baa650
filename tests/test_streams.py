"""Multi-stream batches: a labelled + unlabelled method through the real loop, exact resume of
every stream, the class-stratified support sampler, and the `data.streams` config checks."""

import dataclasses
import hashlib
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, methods, runs, train, trainer
from ssl_jax.data import pipeline, sources, streams, subsets
from ssl_jax.methods import base
from tests.fixtures import host_iterators

TOY = "two_stream_toy"
NUM_CLASSES = 10
UNLABELED_WEIGHT = 0.5
MAKE_TRAIN_DATA = streams.make_train_data


@dataclasses.dataclass(frozen=True)
class EntropyMinimisation(base.Method):
  """Semi-supervised linear classifier on raw pixels: cross-entropy on `batch['labeled']` plus
  the mean entropy of its predictions on `batch['unlabeled']` (entropy minimisation,
  Grandvalet & Bengio 2004, Eq. 5), weighted by UNLABELED_WEIGHT."""

  def _logits(self, params, images):
    pixels = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
    return pixels @ params["w"] + params["b"]

  def init(self, rng, batch):
    dim = int(np.prod(batch["labeled"]["image"].shape[1:]))
    return {"w": 0.01 * jax.random.normal(rng, (dim, NUM_CLASSES)),
            "b": jnp.zeros((NUM_CLASSES,))}, {}

  def loss(self, params, state, batch, rng, step):
    del rng, step
    labeled = batch["labeled"]
    logits = self._logits(params, labeled["image"])
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
        logits, labeled["label"]).mean()
    log_probs = jax.nn.log_softmax(self._logits(params, batch["unlabeled"]["image"]))
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labeled["label"])
    return cross_entropy + UNLABELED_WEIGHT * entropy, (
        {"cross_entropy": cross_entropy, "entropy": entropy, "labeled_acc": accuracy}, state)

  def features(self, params, state, images):
    return images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0


@pytest.fixture(autouse=True)
def toy_method_registered(monkeypatch):
  real = methods.method_class
  monkeypatch.setattr(methods, "method_class",
                      lambda name: EntropyMinimisation if name == TOY else real(name))


def toy_config(**overrides):
  """Digits at their native 8x8: 40 labelled records (4 per class), 1,497 unlabelled."""
  c = config_lib.base_config()
  c.method.name = TOY
  c.data.source, c.data.image_size = "digits", 8
  c.data.train_subset = "per_class:4"
  c.data.streams = ml_collections.ConfigDict({
      "labeled": streams.stream_config("labeled", batch_size=16),
      "unlabeled": streams.stream_config("unlabeled", batch_size=32)})
  c.batch_size = 32
  c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = 8, 1, 0, 4
  c.export_at_end, c.visualize, c.eval.protocols = False, False, ""
  c.optim.lr, c.optim.lr_scaling, c.optim.weight_decay = 0.05, "none", 0.0
  c.lock()
  config_lib.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])
  return c


def fingerprint(batch):
  return {name: (stream["label"].tolist(), hashlib.sha1(stream["image"].tobytes()).hexdigest())
          for name, stream in batch.items()}


class Killed(Exception):
  pass


class Recorder(host_iterators.Forwarding):
  """Wraps the run's host iterator: records each batch it reads; optionally crashes at read n.

  Patched in as `streams.make_train_data`. It sits at the host iterator rather than at
  `parallel.host_to_global` because that one also builds the zeros sample a fresh run
  initialises on and a resumed run does not: here batches[k] is the k-th batch the data
  pipeline handed out, in every run.
  """

  def __init__(self, crash_at=None):
    super().__init__()
    self.batches, self.crash_at = [], crash_at

  def make_train_data(self, config, **kwargs):
    data = MAKE_TRAIN_DATA(config, **kwargs)
    self._host = data.iterator
    return dataclasses.replace(data, iterator=self)

  def __next__(self):
    if self.crash_at is not None and len(self.batches) + 1 == self.crash_at:
      raise Killed()
    batch = next(self._host)
    self.batches.append(jax.tree.map(np.asarray, batch))
    return batch


def losses_by_step(workdir):
  return {r["step"]: r["train/loss"] for r in runs.read_metrics(workdir)
          if "train/loss" in r}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """The uninterrupted 8-step run on one device, with every batch it read."""
  workdir = tmp_path_factory.mktemp("straight")
  recorder = Recorder()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(methods, "method_class", lambda name: EntropyMinimisation)
    patch.setattr(streams, "make_train_data", recorder.make_train_data)
    train.train_and_evaluate(toy_config(), str(workdir), devices=jax.devices()[:1])
  # The prefetch thread may have read a few batches past the last step.
  return workdir, recorder.batches[:8]


def test_two_streams_reach_the_method_labelled_from_the_subset_unlabelled_hidden(straight_run):
  _, batches = straight_run
  assert len(batches) == 8
  source = sources.get_source("digits", "train", image_size=8)
  subset = subsets.apply_subset(source, "per_class:4", seed=0)
  subset_images = {source[int(i)]["image"].tobytes() for i in subset.indices}
  for batch in batches:
    assert batch["labeled"]["image"].shape == (16, 8, 8, 3)
    assert batch["unlabeled"]["image"].shape == (32, 8, 8, 3)
    assert all(image.tobytes() in subset_images for image in batch["labeled"]["image"])
    assert set(batch["labeled"]["label"].tolist()) <= set(range(NUM_CLASSES))
    assert (batch["unlabeled"]["label"] == -1).all()
  # The two streams shuffle independently: the unlabelled images are not the subset's.
  assert not all(image.tobytes() in subset_images for image in batches[0]["unlabeled"]["image"])


def test_two_stream_method_learns_and_equals_on_one_and_eight_devices(straight_run, tmp_path):
  workdir, _ = straight_run
  # Also without device prefetch (the straight run prefetches 2): prefetch changes no loss.
  train.train_and_evaluate(toy_config(**{"data.prefetch": 0}), str(tmp_path),
                           devices=jax.devices())
  one, eight = losses_by_step(workdir), losses_by_step(tmp_path)
  assert sorted(one) == sorted(eight) == list(range(1, 9))
  np.testing.assert_allclose([eight[s] for s in one], [one[s] for s in one], rtol=1e-5)
  records = [r for r in runs.read_metrics(workdir) if "train/cross_entropy" in r]
  assert records[-1]["train/cross_entropy"] < 0.7 * records[0]["train/cross_entropy"], records
  # images/s counts both streams: 16 + 32 rows per step.
  last = runs.read_metrics(workdir)[-1]
  np.testing.assert_allclose(last["train/images_per_sec"], 48 * last["train/steps_per_sec"],
                             rtol=1e-6)


def test_killed_and_resumed_run_reads_the_batches_of_the_uninterrupted_run(straight_run,
                                                                         tmp_path, monkeypatch):
  straight_dir, straight_batches = straight_run
  # Killed while fetching step 7's batch: steps 5 and 6 ran but the last checkpoint is step 4.
  monkeypatch.setattr(streams, "make_train_data", Recorder(crash_at=7).make_train_data)
  with pytest.raises(Killed):
    train.train_and_evaluate(toy_config(), str(tmp_path), devices=jax.devices()[:1])
  assert ckpt_lib.Checkpointer(str(tmp_path)).latest_step() == 4
  resumed = Recorder()
  monkeypatch.setattr(streams, "make_train_data", resumed.make_train_data)
  train.train_and_evaluate(toy_config(), str(tmp_path), devices=jax.devices()[:1])
  after = resumed.batches[:4]
  assert [fingerprint(b) for b in after] == [fingerprint(b) for b in straight_batches[4:]]
  straight, resumed_losses = losses_by_step(straight_dir), losses_by_step(tmp_path)
  np.testing.assert_allclose([resumed_losses[s] for s in range(1, 9)],
                             [straight[s] for s in range(1, 9)], rtol=1e-6)


def _count_init_state(monkeypatch):
  """Patches `TrainSetup.init_state` to note each call; returns the list of notes."""
  calls, real = [], trainer.TrainSetup.init_state

  def counting(setup):
    calls.append(setup.config.total_steps)
    return real(setup)

  monkeypatch.setattr(trainer.TrainSetup, "init_state", counting)
  return calls


def test_a_resumed_run_restores_without_building_a_fresh_state_first(straight_run, tmp_path,
                                                                      monkeypatch):
  """Initialising and then restoring over it would hold the state twice on the device."""
  straight_dir, _ = straight_run
  inits = _count_init_state(monkeypatch)
  train.train_and_evaluate(toy_config(total_steps=1), str(tmp_path / "fresh"),
                           devices=jax.devices()[:1])
  assert inits == [1]  # A fresh run initialises, once.
  workdir = tmp_path / "resumed"
  shutil.copytree(straight_dir, workdir)
  shutil.rmtree(workdir / "checkpoints" / "8")  # Resumes from step 4.
  train.train_and_evaluate(toy_config(), str(workdir), devices=jax.devices()[:1])
  assert inits == [1]
  straight, resumed = losses_by_step(straight_dir), losses_by_step(workdir)
  np.testing.assert_allclose([resumed[s] for s in range(5, 9)],
                             [straight[s] for s in range(5, 9)], rtol=1e-6)


# ----------------------------------------------------------------------------- support


def _members(num_classes=6, per_class=5):
  return [np.arange(c * 100, c * 100 + per_class) for c in range(num_classes)]


def _draw(step, process_index=0, process_count=1, seed=3, classes=4, per_class=4):
  return streams.support_indices(_members(), seed=seed, step=step, classes=classes,
                                 per_class=per_class, process_index=process_index,
                                 process_count=process_count)


def test_support_sampler_draws_s_distinct_records_of_c_classes_the_same_on_every_process():
  whole = _draw(step=0)
  classes = whole // 100
  counts = np.bincount(classes, minlength=6)
  assert sorted(counts[counts > 0].tolist()) == [4] * 4  # C = 4 classes, S = 4 each
  assert len(set(whole.tolist())) == whole.size  # no record twice
  # Sample-major rows: every block of C rows holds each chosen class once.
  assert all(sorted(block) == sorted(set(classes)) for block in classes.reshape(4, 4).tolist())
  shares = [_draw(step=0, process_index=p, process_count=2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(shares), whole)
  assert set((shares[0] // 100).tolist()) == set((shares[1] // 100).tolist()) == set(classes)
  assert all(np.bincount(share // 100, minlength=6).max() == 2 for share in shares)


def test_support_sampler_is_a_pure_function_of_seed_and_step():
  np.testing.assert_array_equal(_draw(step=5), _draw(step=5))
  draws = [tuple(_draw(step=s)) for s in range(6)]
  assert len(set(draws)) == 6  # a fresh draw every step
  assert len({tuple(set(np.asarray(d) // 100)) for d in draws}) > 1  # of varying classes
  assert tuple(_draw(step=0, seed=4)) != draws[0]
  with pytest.raises(ValueError, match="does not split over 3 processes"):
    _draw(step=0, process_count=3)


def _three_stream_config(**overrides):
  c = toy_config(**overrides)
  c.unlock()
  c.data.streams.support = streams.stream_config("support", classes=5, per_class=2)
  c.lock()
  return c


def test_every_stream_resumes_exactly_through_the_checkpointer(tmp_path):
  config = _three_stream_config()
  data = streams.make_train_data(config, process_index=0, process_count=1)
  assert data.images_per_step == 16 + 32 + 10
  assert data.steps_per_epoch == 1497 // 32  # the longest pass: the unlabelled stream
  for _ in range(3):
    next(data.iterator)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  state = {"step": jnp.asarray(3)}
  checkpointer.save(3, state, data.iterator, force=True)
  expected = [fingerprint(next(data.iterator)) for _ in range(2)]
  fresh = streams.make_train_data(config, process_index=0, process_count=1)
  checkpointer.restore(3, jax.eval_shape(lambda: state), fresh.iterator)
  checkpointer.close()
  assert [fingerprint(next(fresh.iterator)) for _ in range(2)] == expected
  support = expected[0]["support"][0]
  assert sorted(np.bincount(support)[np.bincount(support) > 0].tolist()) == [2] * 5

  # Other streams, or another support set, are a data change (which restore reports as such),
  # not a damaged checkpoint (which it would offer to delete).
  other = streams.make_train_data(toy_config(), process_index=0, process_count=1)
  with pytest.raises(pipeline.DataChangedError,
                     match="has streams \\['labeled', 'support', 'unlabeled'\\], this run's is "
                           "\\['labeled', 'unlabeled'\\]"):
    other.iterator.set_state(data.iterator.get_state())
  config.unlock()
  config.data.streams.support.per_class = 1
  other = streams.make_train_data(config, process_index=0, process_count=1)
  with pytest.raises(pipeline.DataChangedError, match="support stream .*per_class=2.*per_class=1"):
    other.iterator.set_state(data.iterator.get_state())


def test_each_process_reads_its_share_of_every_stream():
  config = _three_stream_config()
  shares = [next(streams.make_train_data(config, process_index=p, process_count=2).iterator)
            for p in range(2)]
  for name, rows in (("labeled", 8), ("unlabeled", 16), ("support", 5)):
    assert all(share[name]["image"].shape[0] == rows for share in shares)
  # Support: the same 5 classes on both processes, one record of each per process.
  labels = [share["support"]["label"] for share in shares]
  assert sorted(labels[0].tolist()) == sorted(labels[1].tolist())
  assert len(set(labels[0].tolist())) == 5
  images = [{image.tobytes() for image in share["unlabeled"]["image"]} for share in shares]
  assert not images[0] & images[1]  # disjoint shards


# ----------------------------------------------------------------------------- config


def _with_streams(entries, **top):
  c = config_lib.base_config()
  c.total_steps = 10
  c.data.streams = ml_collections.ConfigDict(entries)
  for key, value in top.items():
    section, _, leaf = key.rpartition(".")
    (c[section] if section else c)[leaf] = value
  return c


@pytest.mark.parametrize("entries,top,message", [
    ({"u": {"kind": "unlabeled", "batch_sise": 8}}, {}, "Did you mean data.streams.u.batch_size"),
    ({"u": {"kind": "unlabelled"}}, {}, "data.streams.u.kind='unlabelled'; choose one of"),
    ({"image": {"kind": "unlabeled"}}, {}, "other than 'image' and 'label'"),
    ({"s": {"kind": "support", "classes": 10}}, {}, "set data.streams.s.classes"),
    ({"s": {"kind": "support", "classes": 2, "per_class": 2, "batch_size": 4}}, {},
     "leave batch_size at 0"),
    ({"l": {"kind": "labeled", "per_class": 2}}, {}, "applies to support streams only"),
    ({"u": {"kind": "unlabeled"}}, {"data.train_subset": "per_class:4"},
     "every declared stream is 'unlabeled'"),
    ({"u": {"kind": "unlabeled"}}, {"eval.online_probe": True}, "set eval.online_probe=False"),
    ({"u": {"kind": "unlabeled", "batch_size": 6}}, {"optim.grad_accum_steps": 4},
     "not divisible by optim.grad_accum_steps=4"),
])
def test_bad_stream_configs_are_clear_errors(entries, top, message):
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.validate(_with_streams(entries, **top))


def test_single_stream_configs_keep_the_single_batch():
  config = config_lib.base_config()
  config.total_steps = 10
  config_lib.validate(config)
  assert streams.parse_streams(config) == ()
  shapes = streams.batch_shapes(config, process_count=2)
  assert shapes["image"].shape == (128, 32, 32, 3) and shapes["label"].shape == (128,)
  assert streams.batch_sizes(toy_config()) == {"labeled": 16, "unlabeled": 32}


def test_train_step_bench_times_a_two_stream_config():
  from bench import train_step
  result = train_step.measure(toy_config(), steps=2)
  assert result["num_params"] == 8 * 8 * 3 * NUM_CLASSES + NUM_CLASSES
  np.testing.assert_allclose(result["images_per_sec"], (16 + 32) / result["step_time_s"])
