"""On-device views of the classification pretext tasks: rotations, tile grids, permutations.

Pure JAX and a function of the rng alone, like `augment.py`; the methods (rotation, jigsaw,
context) vmap the per-image functions over the batch with one key per image.

* `rotations`: every image at 0/90/180/270 degrees (RotNet, Gidaris et al. 2018, Sec. 2.2: all
  four rotations of an image are in the same batch).
* `grid_tiles` / `random_grid_tiles`: the shared tile cropper of jigsaw and context prediction.
  A grid x grid lattice of `tile`-pixel squares whose corners are `stride` apart; each tile is
  moved by its own random offset in [0, max_offset] (the random gap / jitter that keeps tiles
  from sharing edges and straight lines). Jigsaw (Noroozi & Favaro 2016, Sec. 3.3): a 225 px
  crop, 75 px cells, a 64 px tile anywhere in its cell (stride 75, tile 64, max_offset 11).
  Context (Doersch et al. 2015, Sec. 3): 96 px patches, a 48 px gap, up to 7 px jitter
  (stride 144, tile 96, max_offset 14).
* `normalize_per_tile`: each tile to zero mean and unit std per channel (Noroozi & Favaro
  Sec. 3.3, "we normalize the mean and the standard deviation of each patch independently"),
  against low-level statistics that would identify neighbours.
* `drop_colors` / `project_colors`: Doersch et al.'s guards against chromatic aberration
  (Sec. 3.1): keep one random colour channel (the others Gaussian noise at 1/100 of its std), or
  project out the green-magenta axis.
* `hamming_permutations`: the jigsaw permutation set, chosen greedily from all n! permutations
  (Noroozi & Favaro, supplementary Algorithm 1, made deterministic and max-min).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

# Context prediction's 8 labels: (row, column) offset of the neighbour from the centre patch,
# row-major around it (Doersch et al. 2015, Fig. 2 numbers them the same way, 1..8).
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def rotations(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[B, S, S, C] -> ([4B, S, S, C], labels [4B]): block k is every image turned k x 90 degrees
  counter-clockwise (`jnp.rot90`), label k."""
  if images.ndim != 4 or images.shape[1] != images.shape[2]:
    raise ValueError(f"rotations needs square images [B, S, S, C], got {images.shape}; make the "
                     "rotation view square (method.view.size).")
  rotated = jnp.concatenate([jnp.rot90(images, k, axes=(1, 2)) for k in range(4)])
  labels = jnp.repeat(jnp.arange(4, dtype=jnp.int32), images.shape[0])
  return rotated, labels


def grid_extent(grid: int, stride: int, tile: int, max_offset: int) -> int:
  """Side of the square region a grid of tiles can reach (jigsaw: 2 * 75 + 64 + 11 = 225)."""
  return (grid - 1) * stride + tile + max_offset


def check_grid(image_size: int, *, grid: int, stride: int, tile: int, max_offset: int,
               what: str) -> None:
  """A clear error when the tiles overlap or do not fit the image."""
  if min(grid, tile) < 1 or max_offset < 0 or stride < tile:
    raise ValueError(f"{what}: need grid >= 1, tile >= 1, max_offset >= 0 and stride >= tile "
                     f"(tiles must not overlap); got grid {grid}, stride {stride}, tile {tile}, "
                     f"max_offset {max_offset}.")
  extent = grid_extent(grid, stride, tile, max_offset)
  if extent > image_size:
    raise ValueError(f"{what}: the tiles span {extent} px but the images are {image_size} px; "
                     "use smaller tiles, gaps or jitter, or a larger data.image_size.")


def crop_tile(image: jax.Array, top: jax.Array, left: jax.Array, row: jax.Array,
              column: jax.Array, offset: jax.Array, *, stride: int, tile: int) -> jax.Array:
  """The tile of lattice cell (row, column) of a grid whose region starts at (top, left),
  moved by `offset` [2] (dy, dx): [tile, tile, C]."""
  y = top + row * stride + offset[0]
  x = left + column * stride + offset[1]
  return jax.lax.dynamic_slice(image, (y, x, 0), (tile, tile, image.shape[-1]))


def grid_tiles(image: jax.Array, top: jax.Array, left: jax.Array, offsets: jax.Array, *,
               grid: int, stride: int, tile: int) -> jax.Array:
  """All grid x grid tiles, row-major: [grid * grid, tile, tile, C]; `offsets` [grid * grid, 2]."""
  cells = jnp.arange(grid * grid)
  return jax.vmap(lambda cell, offset: crop_tile(
      image, top, left, cell // grid, cell % grid, offset, stride=stride, tile=tile))(
          cells, offsets)


def random_grid_origin(rng: jax.Array, image_size: int, extent: int) -> jax.Array:
  """(top, left) of an `extent`-pixel region placed uniformly in the image."""
  return jax.random.randint(rng, (2,), 0, image_size - extent + 1)


def random_offsets(rng: jax.Array, count: int, max_offset: int) -> jax.Array:
  """[count, 2] integer offsets, each coordinate uniform in [0, max_offset]."""
  return jax.random.randint(rng, (count, 2), 0, max_offset + 1)


def random_grid_tiles(rng: jax.Array, image: jax.Array, *, grid: int, stride: int, tile: int,
                      max_offset: int) -> jax.Array:
  """Tiles of a grid placed at random in `image` [S, S, C], each moved by its own random
  offset (the jigsaw's random gaps): [grid * grid, tile, tile, C], row-major."""
  origin_rng, offset_rng = jax.random.split(rng)
  top, left = random_grid_origin(origin_rng, image.shape[0],
                                 grid_extent(grid, stride, tile, max_offset))
  offsets = random_offsets(offset_rng, grid * grid, max_offset)
  return grid_tiles(image, top, left, offsets, grid=grid, stride=stride, tile=tile)


def normalize_per_tile(tiles: jax.Array, eps: float = 1e-5) -> jax.Array:
  """[..., h, w, C] -> each tile's channels to mean 0, std 1 (over its own pixels)."""
  mean = jnp.mean(tiles, axis=(-3, -2), keepdims=True)
  std = jnp.std(tiles, axis=(-3, -2), keepdims=True)
  return (tiles - mean) / (std + eps)


def drop_colors(rng: jax.Array, patch: jax.Array) -> jax.Array:
  """Doersch et al.'s colour dropping: one random channel kept, the two others replaced by
  Gaussian noise with 1/100 of the kept channel's std (Sec. 3.1); [h, w, C] unit-range."""
  keep_rng, noise_rng = jax.random.split(rng)
  keep = jax.random.randint(keep_rng, (), 0, patch.shape[-1])
  kept = jnp.take(patch, keep, axis=-1)[..., None]
  noise = jax.random.normal(noise_rng, patch.shape) * (jnp.std(kept) / 100.0)
  return jnp.where(jnp.arange(patch.shape[-1]) == keep, kept, noise)


# The green-magenta axis (green minus the mean of red and blue): orthogonal to gray, so
# removing it "shifts green and magenta toward gray" (Doersch et al. 2015, Sec. 3.1).
_GREEN_MAGENTA = np.array([-1.0, 2.0, -1.0]) / np.sqrt(6.0)


def project_colors(patch: jax.Array) -> jax.Array:
  """Doersch et al.'s projection: the green-magenta component of every pixel removed."""
  axis = jnp.asarray(_GREEN_MAGENTA, patch.dtype)
  return patch - jnp.tensordot(patch, axis, axes=(-1, 0))[..., None] * axis


@functools.lru_cache(maxsize=None)
def _hamming_permutations(count: int, size: int) -> np.ndarray:
  candidates = np.array(list(itertools.permutations(range(size))), dtype=np.int8)
  if count > len(candidates):
    raise ValueError(f"jigsaw: {count} permutations asked of {size} tiles, which have only "
                     f"{len(candidates)}; lower method.num_permutations.")
  chosen = [0]  # The identity (candidates are in lexicographic order): deterministic start.
  # Distances from every candidate to the chosen set: the minimum (maximised, the stated
  # criterion) and the sum (the paper's Algorithm 1 argmax, here the tie-break).
  distance = np.sum(candidates != candidates[0], axis=1)
  minimum, total = distance.copy(), distance.astype(np.int64)
  for _ in range(count - 1):
    # One integer key (total < 10 * size * count): argmax takes the first index among equals.
    best = int(np.argmax(minimum * (10 * size * count) + total))
    chosen.append(best)
    distance = np.sum(candidates != candidates[best], axis=1)
    np.minimum(minimum, distance, out=minimum)
    total += distance
  return candidates[chosen].astype(np.int32)


def hamming_permutations(count: int, size: int = 9) -> np.ndarray:
  """[count, size] permutations of range(size) with a large minimum Hamming distance.

  Noroozi & Favaro's greedy selection (supplementary Algorithm 1; bbrattoli/JigsawPuzzlePytorch
  `select_permutations.py`), deterministic: start from the identity, then repeatedly add the
  permutation whose minimum Hamming distance to those chosen is largest (ties: the largest
  summed distance, the paper's own criterion; then the first in lexicographic order). Cached
  per process; the jigsaw method also stores the set in its state, so it travels with the run.
  """
  if count < 2:
    raise ValueError(f"jigsaw needs at least 2 permutations, got {count}.")
  return _hamming_permutations(int(count), int(size)).copy()


def minimum_hamming_distance(permutations: np.ndarray) -> int:
  """Smallest number of differing positions over all pairs of rows."""
  permutations = np.asarray(permutations)
  differing = permutations[:, None, :] != permutations[None, :, :]
  distances = differing.sum(-1) + np.eye(len(permutations), dtype=int) * permutations.shape[1]
  return int(distances.min())
