"""Rotation, jigsaw and context prediction: their views, labels, permutation sets and smoke runs."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import config_lib, runs, train, viz
from ssl_jax.data import pretext_views
from ssl_jax.methods import build_method, jigsaw

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("rotation", "jigsaw", "context")


def _coordinate_image(size):
  """[size, size, 3] float: channel 0 = row, 1 = column, 2 = 0: a pixel says where it was."""
  rows, columns = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  return jnp.asarray(np.stack([rows, columns, np.zeros_like(rows)], -1), jnp.float32)


def _method(name, **overrides):
  config = config_lib.load_config(f"{REPO}/configs/{name}.py:smoke")
  config_lib.apply_overrides(config, [f"method.{k}={v}" for k, v in overrides.items()])
  return build_method(config)


# ------------------------------------------------------------------------------- rotation


def test_rotations_turn_pixels_and_label_exactly():
  image = np.array([[1, 2], [3, 4]])[None, :, :, None]  # [1, 2, 2, 1]
  rotated, labels = pretext_views.rotations(jnp.asarray(image))
  np.testing.assert_array_equal(labels, [0, 1, 2, 3])
  # Counter-clockwise quarter turns of [[1, 2], [3, 4]], by hand.
  expected = [[[1, 2], [3, 4]], [[2, 4], [1, 3]], [[4, 3], [2, 1]], [[3, 1], [4, 2]]]
  np.testing.assert_array_equal(rotated[..., 0], expected)
  with pytest.raises(ValueError, match="square"):
    pretext_views.rotations(jnp.zeros((1, 2, 3, 1)))


def test_rotation_method_puts_every_image_at_every_angle_in_the_batch():
  method = _method("rotation")
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  crops, labels = jax.jit(lambda rng: method.pretext_inputs(rng, jnp.asarray(images), {}))(
      jax.random.PRNGKey(0))
  assert crops.shape == (12, 16, 16, 3)
  np.testing.assert_array_equal(labels, np.repeat(np.arange(4), 3))
  for k in range(4):  # block k is block 0 turned k times
    np.testing.assert_array_equal(crops[3 * k:3 * k + 3], np.rot90(crops[:3], k, axes=(1, 2)))


# --------------------------------------------------------------------------------- jigsaw


def test_hamming_permutations_small_set_by_hand():
  # From the identity, each next one the lexicographically first at the largest minimum
  # distance: the rows of a Latin square, all pairs differing in every position.
  np.testing.assert_array_equal(pretext_views.hamming_permutations(4, 4),
                                [[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]])
  assert pretext_views.minimum_hamming_distance(pretext_views.hamming_permutations(4, 4)) == 4


def test_hundred_permutations_of_nine_tiles_have_minimum_hamming_distance_six():
  permutations = pretext_views.hamming_permutations(100)
  assert permutations.shape == (100, 9)
  np.testing.assert_array_equal(np.sort(permutations, axis=1), np.tile(np.arange(9), (100, 1)))
  # docs/methods.md states 6 for P = 100 (and 5 for P = 1000, a slower computation).
  assert pretext_views.minimum_hamming_distance(permutations) == 6
  np.testing.assert_array_equal(permutations, pretext_views.hamming_permutations(100))
  with pytest.raises(ValueError, match="num_permutations"):
    pretext_views.hamming_permutations(30, 4)


def test_jigsaw_tiles_unshuffled_by_the_inverse_permutation_give_back_the_crop():
  method = _method("jigsaw", cell_size=10, tile_size=10)  # no gaps, no jitter
  state = method.extra_state()
  image = jax.random.uniform(jax.random.PRNGKey(0), (30, 30, 3))  # the crop is the image
  tiles, label = method.puzzle(jax.random.PRNGKey(1), image, state["permutations"])
  permutation = np.asarray(state["permutations"][label])
  unshuffled = np.asarray(tiles)[np.argsort(permutation)]
  np.testing.assert_array_equal(jigsaw.tile_mosaic(jnp.asarray(unshuffled), gap=0), image)
  # What the network sees: each tile on its own at zero mean, unit std per channel.
  images = jnp.asarray(np.asarray(image) * 255, jnp.uint8)[None]
  crops, labels = method.pretext_inputs(jax.random.PRNGKey(1), images, state)
  assert crops.shape == (9, 10, 10, 3) and labels.shape == (1,)
  np.testing.assert_allclose(crops.mean(axis=(1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(crops.std(axis=(1, 2)), 1.0, atol=1e-3)


def test_jigsaw_picture_shows_the_puzzle_and_both_solutions():
  method = _method("jigsaw", cell_size=10, tile_size=8)
  images = jax.random.randint(jax.random.PRNGKey(0), (2, 32, 32, 3), 0, 256).astype(jnp.uint8)
  params, state = method.init(jax.random.PRNGKey(1), {"image": images})
  grid = method.visualize(params, state, images, jax.random.PRNGKey(2))["jigsaw"]
  side = 3 * (8 + 2) + 2
  assert grid.shape == (2 * side, 3 * side, 3)
  assert float(grid.min()) >= 0.0 and float(grid.max()) <= 1.0
  # The true solution's tiles are the grid's, in order: the same pixels as the puzzle's.
  puzzle, solved = np.asarray(grid[:side, :side]), np.asarray(grid[:side, 2 * side:])
  np.testing.assert_allclose(np.sort(puzzle.ravel()), np.sort(solved.ravel()))


def test_jigsaw_tiles_stay_in_their_cells_with_random_gaps():
  image = _coordinate_image(32)
  corners = []
  for seed in range(20):
    tiles = pretext_views.random_grid_tiles(jax.random.PRNGKey(seed), image, grid=3, stride=10,
                                            tile=8, max_offset=2)
    corners.append(np.asarray(tiles[:, 0, 0, :2]))  # [9, (row, column)] of each tile's corner
  corners = np.stack(corners)
  top_left = corners[:, :1]
  offsets = corners - top_left  # tile i's corner, relative to the first tile's
  cells = np.stack(np.divmod(np.arange(9), 3), -1) * 10
  # Corners are 10 px apart, up to 2 px either way: no overlap, and some gaps vary.
  assert np.all(np.abs(offsets - cells) <= 2)
  assert len(np.unique(offsets - cells)) > 1
  assert np.all(top_left >= 0) and np.all(corners + 8 <= 32)


# -------------------------------------------------------------------------------- context


def test_context_labels_match_the_neighbour_geometry():
  method = _method("context", jitter=0, color_guard="none")
  stride = method.geometry["stride"]
  image = _coordinate_image(32)
  seen = set()
  for seed in range(40):
    patches, label = method.patch_pair(jax.random.PRNGKey(seed), image)
    shift = np.asarray(patches[1, 0, 0, :2] - patches[0, 0, 0, :2])
    np.testing.assert_array_equal(shift, np.array(pretext_views.NEIGHBOUR_OFFSETS[int(label)])
                                  * stride)
    seen.add(int(label))
  assert seen == set(range(8))
  # With jitter, up to 2j px off the lattice, never more.
  method = _method("context", jitter=1, color_guard="none")
  for seed in range(10):
    patches, label = method.patch_pair(jax.random.PRNGKey(seed), image)
    shift = np.asarray(patches[1, 0, 0, :2] - patches[0, 0, 0, :2])
    lattice = np.array(pretext_views.NEIGHBOUR_OFFSETS[int(label)]) * stride
    assert np.all(np.abs(shift - lattice) <= 2)


def test_chromatic_aberration_guards():
  patch = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 3))
  dropped = np.asarray(pretext_views.drop_colors(jax.random.PRNGKey(1), patch))
  kept = [c for c in range(3) if np.array_equal(dropped[..., c], patch[..., c])]
  assert len(kept) == 1  # one channel kept as is, the others faint noise
  for c in set(range(3)) - set(kept):
    assert 0 < dropped[..., c].std() < patch[..., kept[0]].std() / 30
  projected = np.asarray(pretext_views.project_colors(patch))
  np.testing.assert_allclose(projected @ np.array([-1.0, 2.0, -1.0]), 0.0, atol=1e-5)
  gray = jnp.full((2, 2, 3), 0.3)
  np.testing.assert_allclose(pretext_views.project_colors(gray), gray, atol=1e-6)


# ------------------------------------------------------------------------ views, all three


@pytest.mark.parametrize("name", METHODS)
def test_views_are_a_function_of_the_rng(name):
  method = _method(name)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8))
  state = method.extra_state()  # the permutation set, for jigsaw
  views = jax.jit(lambda rng: method.pretext_inputs(rng, images, state))
  crops, labels = views(jax.random.PRNGKey(1))
  again, again_labels = views(jax.random.PRNGKey(1))
  other, _ = views(jax.random.PRNGKey(2))
  per_example = {"rotation": 1, "jigsaw": 9, "context": 2}[name]
  assert crops.shape[0] == labels.shape[0] * per_example
  assert crops.shape[1:] == (method.crop_size, method.crop_size, 3)
  assert int(labels.min()) >= 0 and int(labels.max()) < method.num_pretext_classes
  np.testing.assert_array_equal(crops, again)
  np.testing.assert_array_equal(labels, again_labels)
  assert not np.array_equal(crops, other)


# ResNet-18 compiles for ~15 s of CPU: slow.
@pytest.mark.parametrize("model", ["vit", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_block_features_of_the_last_block_are_the_pooled_features(model):
  """The intermediate-block path, run at the last block, reproduces the backbone's output."""
  method = _method("rotation")
  if model == "resnet18":
    config = method.config.copy_and_resolve_references()
    config.model.name, config.model.stem = "resnet18", "cifar"
    method = build_method(config)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8))
  params, state = jax.jit(method.init)(jax.random.PRNGKey(0), {"image": images})

  @jax.jit
  def pooled_last_and_first(params, state):
    inputs = method.eval_inputs(images)
    pooled = method.encoder.apply(method._encoder_variables(params, state), inputs)["pooled"]
    return (pooled, method.block_features(params, state, inputs, method.num_blocks),
            method.block_features(params, state, inputs, 1))

  pooled, last, first = pooled_last_and_first(params, state)
  np.testing.assert_allclose(last, pooled, rtol=1e-5, atol=1e-5)
  assert first.shape == (2, 64)  # ViT width 64; ResNet-18 stage 1: 64 channels
  assert not np.allclose(first, pooled[:, :64])


def test_bad_geometry_and_feature_block_are_clear_errors():
  with pytest.raises(ValueError, match="span 42 px"):
    _method("jigsaw", cell_size=14, tile_size=12)
  with pytest.raises(ValueError, match="feature_block"):
    _method("rotation", feature_block=3)
  with pytest.raises(ValueError, match="color_guard"):
    _method("context", color_guard="gray")


# ------------------------------------------------------------------------------ smoke runs


# Steps: a context step (2 crops of 8 px an image) costs a fraction of the others'.
@pytest.mark.parametrize("name,steps", [("rotation", 40), ("jigsaw", 40), ("context", 100)])
def test_smoke_run_lowers_its_loss_and_beats_chance(name, steps, tmp_path):
  config = config_lib.load_config(f"{REPO}/configs/{name}.py:smoke")
  config_lib.apply_overrides(config, [
      f"total_steps={steps}", "export_at_end=False", "visualize=False", "checkpoint_every=0"])
  result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  records = runs.read_metrics(tmp_path)
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  accuracy = [r["train/pretext_accuracy"] for r in records if "train/pretext_accuracy" in r]
  assert losses[-1] < losses[0] - 0.2, losses
  # Beats chance: the cross-entropy of a uniform guess is log K. (Rotation stays well under
  # 100%: digits such as 0, 1 and 8 look alike upside down.)
  num_classes = build_method(config).num_pretext_classes
  assert losses[-1] < np.log(num_classes) - 0.3, losses
  assert accuracy[-1] > 1.5 / num_classes, accuracy
  assert result["eval/knn_top1"] > 0.3, result  # 10 classes: chance is 0.1.
  if name == "jigsaw":  # Its pictures, from the saved run: `python -m ssl_jax.viz pictures`.
    written = viz.main(["pictures", "--workdir", str(tmp_path), "--num_images", "2"])
    assert (tmp_path / "images" / f"jigsaw_{steps}.png").is_file(), written
