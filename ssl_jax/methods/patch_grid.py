"""The patch grid of the methods whose ViT predicts something per patch of one training view.

MAE (He et al. 2021) predicts each masked patch's pixels, Context Encoders (Pathak et al. 2016,
`inpainting`) the pixels of each patch of the hole, colorization (Zhang et al. 2016) the ab bins
of each patch's cells: all three need the ViT's patch side and the side of the view
(`config.method.view`) the patches tile.
"""

from __future__ import annotations

import dataclasses

from ssl_jax.methods import base
from ssl_jax.models import registry


@dataclasses.dataclass(frozen=True)
class PatchGridMethod(base.Method):
  """A method on one view (`config.method.view`) of a ViT (`model.name = vit_*`)."""

  @property
  def patch_size(self) -> int:
    """The ViT's patch side p (`vit_s16` -> 16)."""
    return registry.parse_vit_name(self.config.model.name)[1]

  @property
  def image_size(self) -> int:
    """The training view's side, the image the patches tile."""
    return int(self.config.method.view.size)
