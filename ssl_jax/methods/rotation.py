"""RotNet: rotation prediction (Gidaris, Singh & Komodakis, ICLR 2018).

As gidariss/FeatureLearningRotNet (`dataloader.py`, `algorithms/ClassificationModel.py`):
* every image of the batch appears at 0, 90, 180 and 270 degrees in the same batch (Sec. 2.2,
  "feeding all four rotated copies of an image simultaneously ... is better"), after the usual
  random crop and flip (`method.view`); label k for a k x 90 degree counter-clockwise turn;
* a 4-way classifier on the backbone's pooled features (the official heads are the network's
  own last block + a Linear layer: `method.head_layers = 1`); cross-entropy over the 4B crops.

Rotations are exact on the pixel grid (transposes and flips), so there are no interpolation
artefacts to shortcut the task. Evaluation uses block `method.feature_block` (the paper's best
is an intermediate block); `python -m ssl_jax.evaluate --workdir W --method.feature_block=-1
--tag last_block` adds the last block's k-NN to the run.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from ssl_jax.data import augment, pretext_views
from ssl_jax.methods import pretext


def default_method_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "rotation"
  m.view = augment.view_config(size=224, crop_scale=(0.08, 1.0))
  pretext.add_classifier_config(m, head_layers=1, head_hidden_dim=0, feature_block=-1)
  return m


@dataclasses.dataclass(frozen=True)
class Rotation(pretext.PretextClassifier):
  """4-way rotation classification of every image at the four rotations."""

  num_pretext_classes = 4
  crops_per_example = 1

  @property
  def crop_size(self) -> int:
    return int(self.config.method.view.size)

  def pretext_inputs(self, rng, images, state):
    del state
    return pretext_views.rotations(augment.make_views(rng, images, self.config.method.view))
