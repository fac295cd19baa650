"""Perceptual MAE through the one loop: per-group gradients, the two optimizers, the update
ratio, the feature-discriminator copy, the frozen extractor, checkpoint/resume, a smoke run and
the MAE-vs-PMAE comparison tool."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, runs, subtrees, train, trainer, viz
from ssl_jax.losses import perceptual as P
from ssl_jax.methods import build_method, mae, perceptual_mae

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["model.hidden_size=32", "model.depth=1", "model.num_heads=2", "method.decoder_dim=32",
        "method.decoder_depth=1", "method.decoder_heads=2"]


def _config(spec="perceptual_mae.py:smoke", overrides=()):
  config = config_lib.load_config(f"{REPO}/configs/{spec}")
  config.lock()
  config_lib.apply_overrides(config, list(overrides))
  return config


def _batch(size=4, seed=0):
  images = np.random.default_rng(seed).integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
  return {"image": jnp.asarray(images), "label": jnp.zeros((size,), jnp.int32)}


def _tree_allclose(a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def _tree_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _reference_objectives(method, params, state, batch, rng, step):
  """The generator's and the discriminator's objectives written out plainly, each a function of
  its own group only (the other group a constant), with no stop-gradient anywhere."""
  view_rng, model_rng = jax.random.split(rng)
  images = method._views(view_rng, batch)
  w = method.loss_weights
  adv = P.adversarial_weight(step, method.adversarial_schedule)
  apply_d = method.apply_discriminator
  feature_params = state.get("feature_discriminator", params["discriminator"])

  def generator_objective(generator_params):
    recon = method.reconstruct(generator_params, images, model_rng, train=True)
    fake, real = recon["fake_images"], recon["real_images"]
    fake_logits, _ = apply_d(params["discriminator"], fake)
    _, fake_maps = apply_d(feature_params, fake)
    _, real_maps = apply_d(feature_params, real)
    return (w.l1 * P.l1_loss(fake, real) + w.ssim * P.ssim_loss(fake, real) +
            adv * (w.gan * P.lsgan_generator_loss(fake_logits) +
                   w.perceptual * P.feature_matching_loss(fake_maps, real_maps) +
                   w.style * P.style_loss(fake_maps, real_maps)))

  recon = method.reconstruct(params["generator"], images, model_rng, train=True)

  def discriminator_objective(discriminator_params):
    real_logits, _ = apply_d(discriminator_params, recon["real_images"])
    fake_logits, _ = apply_d(discriminator_params, recon["fake_images"])
    return P.lsgan_discriminator_loss(real_logits, fake_logits)

  return generator_objective, discriminator_objective


def test_each_group_gets_exactly_its_own_objectives_gradient():
  """Through the method's loss (MSG discriminator, lagged feature copy, the authors' default
  weights with SSIM): d loss / d generator == d(generator objective), d loss / d
  discriminator == d(discriminator objective), each written out plainly; and the
  discriminator's loss reaches the generator only through a stop-gradient."""
  config = _config("perceptual_mae.py:smoke", TINY + ["method.loss_weights.l1=1.0",
                                                      "method.loss_weights.ssim=0.85"])
  method = build_method(config, total_steps=10, steps_per_epoch=1)
  batch = _batch()
  params, state = method.init(jax.random.PRNGKey(0), batch)
  assert set(params) == {"generator", "discriminator"} and set(state) == {
      "feature_discriminator"}
  # A lagged copy that differs from the live discriminator.
  state = {"feature_discriminator": jax.tree.map(lambda x: x * 0.9, params["discriminator"])}
  rng, step = jax.random.PRNGKey(3), 2

  # One jitted program: op-by-op dispatch of these graphs is far slower than compiling them.
  @jax.jit
  def gradients(params, state):
    (loss, (metrics, _)), grads = jax.value_and_grad(method.loss, has_aux=True)(
        params, state, batch, rng, step)
    generator_objective, discriminator_objective = _reference_objectives(
        method, params, state, batch, rng, step)
    reference = (jax.value_and_grad(generator_objective)(params["generator"]),
                 jax.value_and_grad(discriminator_objective)(params["discriminator"]))
    images = method._views(jax.random.split(rng)[0], batch)
    term = lambda name: lambda p: method.objective(p, state, images, jax.random.split(rng)[1],
                                                   step)[1][name]

    def unstopped(generator_params):  # the discriminator's loss without the stop-gradient
      recon = method.reconstruct(generator_params, images, jax.random.split(rng)[1],
                                 train=True)
      real_logits, _ = method.apply_discriminator(params["discriminator"],
                                                  recon["real_images"])
      fake_logits, _ = method.apply_discriminator(params["discriminator"],
                                                  recon["fake_images"])
      return P.lsgan_discriminator_loss(real_logits, fake_logits)

    separate = {"disc_term": jax.grad(term("discriminator"))(params),
                "unstopped": jax.grad(unstopped)(params["generator"])}
    return loss, metrics, grads, reference, separate

  loss, metrics, grads, reference, separate = gradients(params, state)
  (generator_value, generator_grads), (disc_value, disc_grads) = reference
  # The loop logs the returned value as train/loss: the generator's total.
  np.testing.assert_allclose(float(loss), float(generator_value), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["disc_loss"]), float(disc_value), rtol=1e-5)
  assert float(metrics["ssim"]) > 0
  _tree_allclose(grads["generator"], generator_grads, rtol=2e-4, atol=1e-7)
  _tree_allclose(grads["discriminator"], disc_grads, rtol=2e-4, atol=1e-7)
  assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(disc_grads))

  # (The generator's terms giving D no gradient is the equality with disc_grads above.)
  nonzero = lambda tree: [bool(np.asarray(g).any()) for g in jax.tree.leaves(tree)]
  assert not any(nonzero(separate["disc_term"]["generator"]))
  assert any(nonzero(separate["disc_term"]["discriminator"]))
  # Without the stop-gradient the discriminator's loss would reach the generator: the zeros
  # above are the stop-gradient's doing, not a disconnected graph.
  assert any(nonzero(separate["unstopped"]))


def test_optimizers_update_ratio_copy_refresh_and_checkpoint_resume(tmp_path):
  """Ratio 2: D changes on steps 0 and 2 only, G every step. Copy refresh every 2 epochs of 2
  steps: the copy the next step uses tracks D after steps 0 and 3, is frozen after 1 and 2.
  Both optimizers' states and the copy round-trip through the Checkpointer: resuming after
  step 2 reproduces steps 3 and 4 exactly."""
  config = _config("perceptual_mae.py:smoke,dcgan", TINY + [
      "batch_size=8", "optim.warmup_steps=0", "method.discriminator_update_every=2",
      "method.feature_discriminator_refresh_epochs=2", "optim.groups.discriminator.lr=1e-3"])
  setup = trainer.build(config, devices=jax.devices()[:1], total_steps=4, steps_per_epoch=2)
  batch = setup.global_batch({k: np.asarray(v) for k, v in _batch(8).items()})
  train_state, shardings, step_fn = setup.init_state(), setup.shardings, setup.step
  history = [jax.device_get(train_state)]
  updates = []
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  for _ in range(4):
    train_state, metrics = step_fn(train_state, batch)
    history.append(jax.device_get(train_state))
    updates.append(float(metrics["train/disc_update"]))
    if len(history) == 3:
      checkpointer.save(2, train_state, None, force=True)
  assert updates == [1.0, 0.0, 1.0, 0.0]
  disc = [h["params"]["discriminator"] for h in history]
  gen = [h["params"]["generator"] for h in history]
  copy = [h["method_state"]["feature_discriminator"] for h in history]
  assert [not _tree_equal(gen[i], gen[i + 1]) for i in range(4)] == [True] * 4
  assert [not _tree_equal(disc[i], disc[i + 1]) for i in range(4)] == [True, False, True, False]
  assert _tree_equal(copy[1], disc[1]) and _tree_equal(copy[2], disc[1])
  assert _tree_equal(copy[3], disc[1]) and not _tree_equal(copy[3], disc[3])
  assert _tree_equal(copy[4], disc[4])
  # Adam counts: the generator's advanced 4 times, the discriminator's on its 2 updates only.
  counts = sorted(int(x) for x in jax.tree.leaves(history[-1]["opt_state"]) if np.ndim(x) == 0)
  assert 2 in counts and 4 in counts

  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          train_state, shardings)
  restored = checkpointer.restore(2, abstract)
  checkpointer.close()
  assert _tree_equal(restored, history[2])
  for expected in history[3:]:
    restored, _ = step_fn(restored, batch)
    assert _tree_equal(jax.device_get(restored), expected)


def test_smoke_run_learns_and_keeps_the_discriminator_in_the_game(tmp_path):
  # One device: the same program without eight-way partitioning overhead on a 2-core CPU.
  train.train_and_evaluate(_config(), str(tmp_path), devices=jax.devices()[:1])
  records = runs.read_metrics(tmp_path)
  logged = [r for r in records if "train/loss" in r]
  assert len(logged) == 6
  for r in records:
    assert all(np.isfinite(v) for k, v in r.items() if k != "step"), r
  assert logged[-1]["train/l1"] < 0.9 * logged[0]["train/l1"], logged
  accuracy = np.mean([(r["train/disc_real_acc"] + r["train/disc_fake_acc"]) / 2
                      for r in logged[-3:]])
  assert 0.02 < accuracy < 0.98, accuracy
  knn = [r["eval/knn_top1"] for r in records if "eval/knn_top1" in r]
  assert knn[-1] > 0.3, knn  # chance: 0.1
  assert list((tmp_path / "images").glob("reconstruction_*.png"))
  exported = np.load(tmp_path / "export" / "params.npz")
  assert any(n.startswith("generator/encoder/blocks_0") for n in exported.files)
  assert any(n.startswith("discriminator/") for n in exported.files)


def _save_run(workdir, config, params, step=1):
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(config_lib.to_json(config))
  checkpointer = ckpt_lib.Checkpointer(str(workdir))
  checkpointer.save(step, {"params": params}, None, force=True)
  checkpointer.close()


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
  """A finished-looking tiny MAE run (config.json + one checkpoint of initial params)."""
  config = _config("mae.py:smoke", TINY)
  params, _ = build_method(config).init(jax.random.PRNGKey(7), _batch())
  workdir = tmp_path_factory.mktemp("runs") / "mae"
  _save_run(workdir, config, params)
  return workdir, params


def test_frozen_feature_extractor_from_a_checkpoint(mae_run):
  workdir, mae_params = mae_run
  config = _config("perceptual_mae.py:smoke,dcgan", TINY + [
      f"method.feature_extractor_workdir={workdir}", "method.feature_extractor_style_weight=1.0"])
  method = build_method(config, total_steps=10, steps_per_epoch=5)
  assert method.feature_extractor.params_path == "encoder"
  assert method.feature_extractor_blocks == (0,)
  batch = _batch()
  params, state = method.init(jax.random.PRNGKey(0), batch)
  assert set(params) == {"generator", "discriminator"}  # never trained: not in params
  _tree_allclose(state["feature_extractor"], mae_params["encoder"], rtol=0, atol=0)

  # The captured block output, after the encoder's final LayerNorm, is its token output.
  extractor = method.feature_extractor
  inputs = method.eval_inputs(batch["image"])
  maps = perceptual_mae.vit_block_feature_maps(extractor.encoder, extractor.params, inputs, (0,))
  tokens = extractor.encoder.apply({"params": extractor.params}, inputs)["tokens"][:, 1:]
  norm = extractor.params["norm"]
  x = np.asarray(maps[0]).reshape(tokens.shape)
  normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(normed * norm["scale"] + norm["bias"], tokens, rtol=1e-4, atol=1e-4)

  rng, step = jax.random.PRNGKey(3), 0
  loss_fn = jax.jit(method.loss)
  loss, (metrics, new_state) = loss_fn(params, state, batch, rng, step)
  assert float(metrics["extractor_perceptual"]) > 0 and float(metrics["extractor_style"]) > 0
  assert _tree_equal(new_state["feature_extractor"], state["feature_extractor"])
  without = {k: v for k, v in state.items() if k != "feature_extractor"}
  loss_without, _ = loss_fn(params, without, batch, rng, step)
  extra = (config.method.feature_extractor_perceptual_weight * metrics["extractor_perceptual"] +
           config.method.feature_extractor_style_weight * metrics["extractor_style"])
  np.testing.assert_allclose(float(loss), float(loss_without + extra), rtol=1e-5)


def test_backbone_search_finds_nested_encoders_and_explains_misses(mae_run):
  _, mae_params = mae_run
  nested = {"generator": mae_params, "discriminator": {"w": np.zeros((3, 3))}}
  path, found = subtrees.find_backbone_subtree(nested, mae_params["encoder"])
  assert path == ("generator", "encoder") and found is mae_params["encoder"]
  key = "method.feature_extractor_params_path"
  assert subtrees.find_backbone_subtree(nested, mae_params["encoder"], subtree="generator/encoder",
                                        subtree_key=key)[0] == ("generator", "encoder")
  with pytest.raises(ValueError, match=f"{key}='generator/backbone' is not a subtree"):
    subtrees.find_backbone_subtree(nested, mae_params["encoder"], subtree="generator/backbone",
                                   subtree_key=key)
  with pytest.raises(ValueError, match="No subtree of the checkpoint.s params"):
    subtrees.find_backbone_subtree({"decoder": mae_params["decoder"]}, mae_params["encoder"])


@pytest.mark.parametrize("override,message", [
    ("method.discriminator.type=wgan", "discriminator.type must be one of"),
    ("method.discriminator_update_every=0", "discriminator_update_every must be >= 1"),
    ("method.loss_weights.gan=-1.0", "loss weight gan"),
    ("method.pixel_loss_region=visible", "pixel_loss_region must be one of"),
])
def test_bad_config_raises_a_clear_error(override, message):
  with pytest.raises(ValueError, match=message):
    build_method(_config(overrides=[override]))


def test_compare_renders_mae_and_pmae_side_by_side(mae_run, tmp_path):
  mae_workdir, mae_params = mae_run
  pmae_config = _config("perceptual_mae.py:smoke", TINY)
  pmae_params, _ = build_method(pmae_config).init(jax.random.PRNGKey(8), _batch())
  pmae_workdir = tmp_path / "pmae"
  _save_run(pmae_workdir, pmae_config, pmae_params, step=3)
  images = tmp_path / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):  # Any size: the tool resizes to each run's canvas.
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
  output = tmp_path / "out" / "compare.png"
  args = ["compare", "--workdirs", str(mae_workdir), str(pmae_workdir), "--images",
          str(images), "--output", str(output), "--tile_size", "64"]
  viz.main(args)
  picture = np.asarray(Image.open(output))
  # 7 columns (input, 2 x (masked, reconstruction), 2 x attention) of 32 px upscaled 2x, 3 rows,
  # under a 26 px title strip.
  assert picture.shape == (26 + 3 * 64, 7 * 64, 3)
  # The MAE reconstruction column is MAE.visualize's, with the same mask seed.
  canvas = viz._canvas(viz.load_image_folder(images, 3), 32)
  mae_grid = np.asarray(mae.MAE.from_config(_config("mae.py:smoke", TINY)).visualize(
      mae_params, {}, jnp.asarray(canvas), jax.random.PRNGKey(0))["reconstruction"])
  expected = viz.to_uint8(mae_grid[:, 3 * 32:4 * 32])           # reconstruction + visible
  shown = picture[26:, 2 * 64:3 * 64][::2, ::2]
  np.testing.assert_allclose(shown, expected, atol=1)  # jit vs eager rounding
  assert list((mae_workdir / "tensorboard").iterdir())
  with pytest.raises(ValueError, match="at least two"):
    viz.main(["compare", "--workdirs", str(mae_workdir), "--images", str(images)])
