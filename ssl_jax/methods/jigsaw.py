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

  def shuffled_tiles(self, rng, image, permutations):
    """One image [S, S, C] in [0, 1] -> (tiles [9, t, t, C] in shuffled order, label)."""
    m = self.config.method
    tile_rng, label_rng = jax.random.split(rng)
    tiles = pretext_views.random_grid_tiles(
        tile_rng, image, grid=GRID, stride=m.cell_size, tile=m.tile_size,
        max_offset=m.cell_size - m.tile_size)
    label = jax.random.randint(label_rng, (), 0, permutations.shape[0])
    # Position i of the puzzle holds tile permutations[label, i].
    return pretext_views.normalize_per_tile(tiles[permutations[label]]), label

  def pretext_inputs(self, rng, images, state):
    unit = augment.uint8_to_unit(images)
    keys = jax.random.split(rng, unit.shape[0])
    tiles, labels = jax.vmap(self.shuffled_tiles, in_axes=(0, 0, None))(
        keys, unit, state["permutations"])
    return tiles.reshape((-1,) + tiles.shape[2:]), labels

  def eval_inputs(self, images):
    unit = augment.eval_view(images, size=self.eval_image_size, mean=(0.0, 0.0, 0.0),
                             std=(1.0, 1.0, 1.0))
    return pretext_views.normalize_per_tile(unit)
