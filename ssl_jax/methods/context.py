"""Context prediction: relative position of two patches (Doersch, Gupta & Efros, ICCV 2015).

As the paper (Sec. 3, 3.1) and cdoersch/deepcontext (`train.py`):
* a 3 x 3 lattice of `patch_size` patches (96 px) separated by `gap` pixels (48), placed at
  random in the image, every patch moved by up to `jitter` px (7) in each direction;
* of each image, the centre patch and one of its 8 neighbours, chosen uniformly; the label is
  the neighbour's position (`pretext_views.NEIGHBOUR_OFFSETS`, row-major around the centre);
* against chromatic aberration (which tells a patch's position in the lens' field, a shortcut
  the paper found the network taking), `color_guard`: 'drop' keeps one random colour channel
  per patch and replaces the others with faint noise (the paper's colour dropping), 'project'
  removes the green-magenta axis (its projection), 'none' keeps colours;
* the backbone encodes both patches with shared weights, the two features are concatenated
  (centre first) and an MLP (the paper's fc7-fc8 after the pair's fc6) classifies 8 ways.

Departures: the official code resizes images to 150k-450k pixels and picks patches from the
whole image; here they come from the canvas as the data pipeline makes it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.config_lib import ConfigError
from ssl_jax.data import augment, pretext_views
from ssl_jax.methods import pretext

GRID = 3
COLOR_GUARDS = ("drop", "project", "none")


def default_method_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "context"
  m.patch_size = 96
  m.gap = 48
  m.jitter = 7
  m.color_guard = "drop"
  m.mean = (0.485, 0.456, 0.406)   # Patch normalisation after the colour guard.
  m.std = (0.229, 0.224, 0.225)
  pretext.add_classifier_config(m, head_layers=2, head_hidden_dim=4096)
  return m


@dataclasses.dataclass(frozen=True)
class Context(pretext.PretextClassifier):
  """8-way classification of a neighbour patch's position relative to the centre patch."""

  num_pretext_classes = len(pretext_views.NEIGHBOUR_OFFSETS)
  crops_per_example = 2

  def __post_init__(self):
    super().__post_init__()
    m = self.config.method
    if m.color_guard not in COLOR_GUARDS:
      raise ConfigError(f"method.color_guard must be one of {COLOR_GUARDS}, got "
                        f"{m.color_guard!r}.")
    if m.gap < 0 or m.jitter < 0:
      raise ConfigError(f"method.gap and method.jitter must be >= 0, got {m.gap}, {m.jitter}.")
    pretext_views.check_grid(self.config.data.image_size, **self.geometry,
                             what="context (method.patch_size, method.gap, method.jitter)")

  @property
  def geometry(self) -> dict[str, int]:
    """The lattice as `pretext_views.grid_tiles` takes it: jitter in [-j, j] is an offset in
    [0, 2j] from a lattice shifted by j."""
    m = self.config.method
    return dict(grid=GRID, stride=m.patch_size + m.gap, tile=m.patch_size,
                max_offset=2 * m.jitter)

  @property
  def crop_size(self) -> int:
    return int(self.config.method.patch_size)

  def _guard(self, rng, patch):
    guard = self.config.method.color_guard
    if guard == "drop":
      return pretext_views.drop_colors(rng, patch)
    if guard == "project":
      return pretext_views.project_colors(patch)
    return patch

  def patch_pair(self, rng, image):
    """One image [S, S, C] in [0, 1] -> (patches [2, p, p, C]: centre, neighbour; label)."""
    geometry = self.geometry
    origin_rng, offset_rng, label_rng, guard_rng = jax.random.split(rng, 4)
    top, left = pretext_views.random_grid_origin(
        origin_rng, image.shape[0], pretext_views.grid_extent(**geometry))
    offsets = pretext_views.random_offsets(offset_rng, 2, geometry["max_offset"])
    label = jax.random.randint(label_rng, (), 0, self.num_pretext_classes)
    row_offset, column_offset = jnp.asarray(pretext_views.NEIGHBOUR_OFFSETS)[label]
    crop = lambda row, column, offset: pretext_views.crop_tile(
        image, top, left, row, column, offset, stride=geometry["stride"],
        tile=geometry["tile"])
    patches = jnp.stack([crop(1, 1, offsets[0]),
                         crop(1 + row_offset, 1 + column_offset, offsets[1])])
    patches = jax.vmap(self._guard)(jax.random.split(guard_rng, 2), patches)
    return patches, label

  def pretext_inputs(self, rng, images, state):
    del state
    m = self.config.method
    unit = augment.uint8_to_unit(images)
    patches, labels = jax.vmap(self.patch_pair)(jax.random.split(rng, unit.shape[0]), unit)
    patches = augment.normalize(patches, tuple(m.mean), tuple(m.std))
    return patches.reshape((-1,) + patches.shape[2:]), labels

  def eval_inputs(self, images):
    m = self.config.method
    return augment.eval_view(images, size=self.eval_image_size, mean=tuple(m.mean),
                             std=tuple(m.std))
