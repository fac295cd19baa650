"""The joint-embedding papers' view recipes, and multi-crop in one static-shape step.

Every recipe is an `augment.view_config` (a locked ConfigDict of static numbers) that
`augment.make_views(rng, images, view)` turns into a batch of views on device inside the jitted
step. The numbers are the official implementations' torchvision pipelines:

* SimCLR (Chen et al. 2020, Appendix A; google-research/simclr `data_util.py`): random resized
  crop (0.08-1, ratio 3/4-4/3), flip, colour jitter of strength s (brightness, contrast,
  saturation 0.8s, hue 0.2s) with p=0.8, grayscale p=0.2, Gaussian blur (sigma 0.1-2, kernel 10%
  of the side) with p=0.5 on ImageNet and none on CIFAR-10 (Appendix B.9, where s=0.5).
* MoCo v2 (Chen et al. 2020, "aug+"; facebookresearch/moco `main_moco.py`): crop 0.2-1, jitter
  (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, blur p=0.5, flip. SimSiam uses the same recipe.
* BYOL (Grill et al. 2020, Table 6): two ASYMMETRIC views, crop 0.08-1, flip, jitter
  (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2; blur p=1.0 / 0.1 and solarize p=0 / 0.2 for
  view 1 / view 2. MoCo v3 (facebookresearch/moco-v3 `main_moco.py`, `--crop-min 0.08`) uses the
  same two recipes.
* DINO (Caron et al. 2021; facebookresearch/dino `DataAugmentationDINO`): flip, jitter
  (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2, blur sigma 0.1-2 and solarize per crop; LeJEPA
  builds on the same pipeline.

`augment` applies flip before the colour ops while torchvision flips last; flipping commutes
with per-pixel ops and with a symmetric blur kernel, so the distribution of views is the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.data import augment

View = ml_collections.ConfigDict


def simclr_view(size: int, *, strength: float = 1.0, blur_prob: float = 0.5,
                crop_scale: Sequence[float] = (0.08, 1.0)) -> View:
  """SimCLR's view: colour distortion of strength `strength` (s), blur with `blur_prob`.

  ImageNet: `simclr_view(224)`; CIFAR-10 (SimCLR B.9): `simclr_view(32, strength=0.5,
  blur_prob=0.0)`.
  """
  if strength < 0 or 0.2 * strength > 0.5:
    raise ValueError(f"SimCLR colour strength must be in [0, 2.5] (hue jitter 0.2*s is at most "
                     f"half a turn), got {strength}.")
  return augment.view_config(
      size=size, crop_scale=tuple(crop_scale), jitter_prob=0.8, brightness=0.8 * strength,
      contrast=0.8 * strength, saturation=0.8 * strength, hue=0.2 * strength,
      grayscale_prob=0.2, blur_prob=blur_prob)


def moco_v2_view(size: int, *, blur_prob: float = 0.5,
                 crop_scale: Sequence[float] = (0.2, 1.0)) -> View:
  """MoCo v2's "aug+" view (also SimSiam's): SimCLR-like, jitter (0.4, 0.4, 0.4, 0.1)."""
  return augment.view_config(
      size=size, crop_scale=tuple(crop_scale), jitter_prob=0.8, brightness=0.4, contrast=0.4,
      saturation=0.4, hue=0.1, grayscale_prob=0.2, blur_prob=blur_prob)


def byol_views(size: int, *, blur_probs: Sequence[float] = (1.0, 0.1),
               solarize_probs: Sequence[float] = (0.0, 0.2),
               crop_scale: Sequence[float] = (0.08, 1.0)) -> tuple[View, View]:
  """BYOL's asymmetric pair (Table 6): view 1 always blurred, view 2 sometimes solarized.

  On CIFAR-10 the blur is dropped (`blur_probs=(0.0, 0.0)`), as SimCLR (Appendix B.9) and the
  solo-learn CIFAR recipes do.
  """
  if len(blur_probs) != 2 or len(solarize_probs) != 2:
    raise ValueError(f"blur_probs and solarize_probs need one value per view (2), got "
                     f"{tuple(blur_probs)} and {tuple(solarize_probs)}.")
  return tuple(
      augment.view_config(
          size=size, crop_scale=tuple(crop_scale), jitter_prob=0.8, brightness=0.4,
          contrast=0.4, saturation=0.2, hue=0.1, grayscale_prob=0.2, blur_prob=blur,
          solarize_prob=solarize)
      for blur, solarize in zip(blur_probs, solarize_probs))


def moco_v3_views(size: int, *, blur_probs: Sequence[float] = (1.0, 0.1),
                  solarize_probs: Sequence[float] = (0.0, 0.2),
                  crop_scale: Sequence[float] = (0.08, 1.0)) -> tuple[View, View]:
  """MoCo v3's `augmentation1` / `augmentation2`: the BYOL pair (crop-min 0.08)."""
  return byol_views(size, blur_probs=blur_probs, solarize_probs=solarize_probs,
                    crop_scale=crop_scale)


def dino_view(size: int, crop_scale: tuple[float, float], blur_prob: float,
              solarize_prob: float = 0.0) -> View:
  """One crop recipe of DINO's `DataAugmentationDINO` (flip, jitter p=0.8, grayscale p=0.2,
  blur, solarize), also LeJEPA's crops (the DINO-style pipeline its paper builds on)."""
  return augment.view_config(
      size=size, crop_scale=crop_scale, flip_prob=0.5, jitter_prob=0.8, brightness=0.4,
      contrast=0.4, saturation=0.2, hue=0.1, grayscale_prob=0.2, blur_prob=blur_prob,
      blur_sigma=(0.1, 2.0), solarize_prob=solarize_prob)


def two_views(rng: chex.PRNGKey, images: jax.Array, view1: View,
              view2: View) -> tuple[jax.Array, jax.Array]:
  """Two independently drawn views of every image (same recipe twice, or an asymmetric pair).

  View i uses `split(rng)[i]` either way; one recipe used twice is traced once, vmapped over
  the two keys, which halves the augmentation's share of the compile time.
  """
  keys = jax.random.split(rng)
  if view1.to_dict() == view2.to_dict():
    both = jax.vmap(lambda key: augment.make_views(key, images, view1))(keys)
    return both[0], both[1]
  return augment.make_views(keys[0], images, view1), augment.make_views(keys[1], images, view2)


def multi_crop_views(rng: chex.PRNGKey, images: jax.Array,
                     recipes: Sequence[tuple[View, int]]) -> list[jax.Array]:
  """Multi-crop (SwAV, Caron et al. 2020, Sec. 3.2; DINO): one [count * B, size, size, C] array
  per (recipe, count), e.g. DINO's [(global_view_1, 1), (global_view_2, 1), (local_view, 8)].

  Each array is crop-major (crop 0 of every image, then crop 1 ...), the layout of the official
  `torch.cat(crops)`. The `count` crops of one recipe are drawn by one `make_views` over the
  tiled batch, so the traced program grows with the number of recipes, not of crops, and every
  size is a static number from the config: the step compiles once, never per batch.

  Args:
    rng: key; recipe i uses `split(rng, len(recipes))[i]`.
    images: uint8 [B, H, W, C] canvas images (the global batch).
    recipes: (view recipe, count >= 1) pairs, globals first.
  """
  if not recipes:
    raise ValueError("multi_crop_views needs at least one (view recipe, count) pair.")
  keys = jax.random.split(rng, len(recipes))
  crops = []
  for key, (view, count) in zip(keys, recipes):
    if int(count) != count or count < 1:
      raise ValueError(f"Every crop recipe needs an int count >= 1, got {count!r}; leave a "
                       "recipe out instead of asking for 0 crops of it.")
    tiled = jnp.tile(images, (count,) + (1,) * (images.ndim - 1)) if count > 1 else images
    crops.append(augment.make_views(key, tiled, view))
  return crops


def group_by_resolution(crops: Sequence[jax.Array]) -> list[jax.Array]:
  """Concatenates consecutive crop arrays of the same size (DINO's `MultiCropWrapper`
  grouping): one backbone call per resolution instead of one per crop."""
  groups: list[list[jax.Array]] = []
  for crop in crops:
    if groups and groups[-1][0].shape[1:] == crop.shape[1:]:
      groups[-1].append(crop)
    else:
      groups.append([crop])
  return [jnp.concatenate(g, axis=0) if len(g) > 1 else g[0] for g in groups]


def encode_crop_groups(encoder: nn.Module, crop_groups: Sequence[jax.Array], *,
                       train: bool) -> jax.Array:
  """[sum of group sizes, D] pooled backbone features of every crop, in the groups' order.

  The multi-crop forward of DINO's `MultiCropWrapper` (facebookresearch/dino `utils.py`), SwAV's
  `ResNet.forward` (facebookresearch/swav `src/resnet50.py`) and LeJEPA's (PAWS runs its heads
  per group too, `PAWSNetwork`): the backbone once per resolution group
  (`group_by_resolution`), the features concatenated so the head that follows runs once on all
  of them (one set of BatchNorm statistics over every crop). Call it from the owning module's `__call__`, so the
  encoder's params stay under the owner's 'encoder'.
  """
  features = [encoder(images, train=train)["pooled"] for images in crop_groups]
  return jnp.concatenate(features, axis=0) if len(features) > 1 else features[0]
