"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016).

As the paper (Sec. 3.3 and supplementary) and bbrattoli/JigsawPuzzlePytorch (`JigsawImageLoader`):
* a random `extent` px square of the image (225 at ImageNet scale) split into a 3 x 3 grid of
  `cell_size` cells (75); from each cell a `tile_size` tile (64) at a random position in the
  cell, so neighbouring tiles are separated by a random gap (no shared edges to match);
* each tile normalised to zero mean and unit std per channel, on its own (no shared low-level
  statistics);
* the tiles shuffled by one of P permutations with a large minimum Hamming distance
  (`pretext_views.hamming_permutations`, P = `num_permutations`, 1000 in the paper); the set is
  computed deterministically at init and kept in the method state, so it is checkpointed with
  the run and a resumed run uses the same one;
* the backbone encodes every tile with shared weights (the "context-free network"), the 9 tile
  features are concatenated in the shuffled order and an MLP classifies the permutation index.

Departures: the paper's per-tile fc6 (1024 wide) before the concatenation is folded into the
head's first layer; tiles are cropped from the canvas without the paper's resize to 256.
Evaluation runs the backbone on the whole image, normalised per image as the tiles were.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.data import augment, pretext_views
from ssl_jax.methods import pretext

GRID = 3  # 3 x 3 tiles, as the paper.


def default_method_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "jigsaw"
  m.num_permutations = 1000
  m.cell_size = 75
  m.tile_size = 64
  pretext.add_classifier_config(m, head_layers=2, head_hidden_dim=4096)
  return m


@dataclasses.dataclass(frozen=True)
class Jigsaw(pretext.PretextClassifier):
  """P-way classification of the permutation that shuffled 9 tiles."""

  crops_per_example = GRID * GRID

  def __post_init__(self):
    super().__post_init__()
    m = self.config.method
    pretext_views.check_grid(self.config.data.image_size, grid=GRID, stride=m.cell_size,
                             tile=m.tile_size, max_offset=m.cell_size - m.tile_size,
                             what="jigsaw (method.cell_size, method.tile_size)")

  @property
  def num_pretext_classes(self) -> int:
    return int(self.config.method.num_permutations)

  @property
  def crop_size(self) -> int:
    return int(self.config.method.tile_size)

  def extra_state(self):
    permutations = pretext_views.hamming_permutations(self.num_pretext_classes, GRID * GRID)
    return {"permutations": jnp.asarray(permutations)}

  def puzzle(self, rng, image, permutations):
    """One image [S, S, C] in [0, 1] -> (its 9 tiles [9, t, t, C] in shuffled order, label).

    Position i of the puzzle holds tile permutations[label, i]; the tiles are not yet
    normalised (`pretext_inputs` does that, `visualize` shows them as they are)."""
    m = self.config.method
    tile_rng, label_rng = jax.random.split(rng)
    tiles = pretext_views.random_grid_tiles(
        tile_rng, image, grid=GRID, stride=m.cell_size, tile=m.tile_size,
        max_offset=m.cell_size - m.tile_size)
    label = jax.random.randint(label_rng, (), 0, permutations.shape[0])
    return tiles[permutations[label]], label

  def pretext_inputs(self, rng, images, state):
    unit = augment.uint8_to_unit(images)
    keys = jax.random.split(rng, unit.shape[0])
    tiles, labels = jax.vmap(self.puzzle, in_axes=(0, 0, None))(
        keys, unit, state["permutations"])
    tiles = pretext_views.normalize_per_tile(tiles)
    return tiles.reshape((-1,) + tiles.shape[2:]), labels

  def solve(self, params, state, tiles):
    """Shuffled, normalised puzzles [B, 9, t, t, C] -> the predicted permutation index [B]."""
    variables = self._encoder_variables(params, state)
    pooled = self.encoder.apply(variables, tiles.reshape((-1,) + tiles.shape[2:]),
                                train=False)["pooled"].astype(jnp.float32)
    logits = self.head.apply(
        {"params": params["head"], "batch_stats": state["batch_stats"]["head"]},
        pooled.reshape(tiles.shape[0], -1), train=False)
    return jnp.argmax(logits, axis=-1)

  def visualize(self, params, state, images, rng):
    """One row per image: the shuffled puzzle | reassembled by the model's predicted
    permutation | reassembled by the true one (a solved puzzle shows the last two equal)."""
    permutations = state["permutations"]
    unit = augment.uint8_to_unit(images)
    keys = jax.random.split(rng, unit.shape[0])
    shuffled, labels = jax.vmap(self.puzzle, in_axes=(0, 0, None))(keys, unit, permutations)
    predicted = self.solve(params, state, pretext_views.normalize_per_tile(shuffled))
    # Tile j of the image sits at the puzzle position i with permutation[i] == j.
    unshuffle = jax.vmap(lambda tiles, order: tiles[jnp.argsort(order)])
    columns = [shuffled, unshuffle(shuffled, permutations[predicted]),
               unshuffle(shuffled, permutations[labels])]
    rows = jnp.concatenate([jax.vmap(tile_mosaic)(c) for c in columns], axis=2)
    return {"jigsaw": jnp.concatenate(list(rows), axis=0)}

  def eval_inputs(self, images):
    unit = augment.eval_view(images, size=self.eval_image_size, mean=(0.0, 0.0, 0.0),
                             std=(1.0, 1.0, 1.0))
    return pretext_views.normalize_per_tile(unit)


def tile_mosaic(tiles: jax.Array, gap: int = 2) -> jax.Array:
  """[9, t, t, C] tiles, row-major -> one [3t + 4 gap, 3t + 4 gap, C] picture, white gaps."""
  padded = jnp.pad(tiles, ((0, 0), (gap, 0), (gap, 0), (0, 0)), constant_values=1.0)
  t = padded.shape[1]
  grid = padded.reshape(GRID, GRID, t, t, -1).transpose(0, 2, 1, 3, 4)
  grid = grid.reshape(GRID * t, GRID * t, -1)
  return jnp.pad(grid, ((0, gap), (0, gap), (0, 0)), constant_values=1.0)
