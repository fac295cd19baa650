"""PAWS: Semi-Supervised Learning of Visual Features by Non-Parametrically Predicting View
Assignments with Support Samples (Assran et al., 2021).

Semantics follow facebookresearch/suncet `src/paws_train.py`, `src/losses.py` and
`src/resnet.py`; the loss itself is `ssl_jax.losses.paws.paws_loss`.

* streams (`config.data.streams`): `unlabeled` (the unlabelled batch, labels hidden) and
  `support` (kind `support`: `classes` classes x `per_class` labelled images, a fresh draw every
  step, the same classes on every process, rows sample-major);
* views: 2 global + `local_crops_number` local multi-crop views of every unlabelled image;
  `support_views` global-recipe views of every support image (suncet `supervised_views`);
* network (suncet `resnet.py`): per resolution group (support and global views together,
  then the local views) the backbone, the projection head `fc` = 3-layer MLP with BN on the
  hidden layers -> h, and the optional prediction head `pred` = BN, then a 2-layer MLP
  (bottleneck output_dim / 4, BN) -> z (z = h without it); so every BatchNorm, the heads'
  included, normalises each group with its own statistics, as suncet's loop over the groups;
* loss: anchors are z of every unlabelled view classified against z of the supports; targets
  the soft-NN predictions of h (stop-gradient), sharpened, the two global views swapped and the
  local views taught by their mean; minus the me-max entropy;
* optimizer: LARS from the config (`optim.name='lars'`: SGD momentum 0.9, trust 0.001, biases
  and BN excluded from the trust ratio and weight decay, suncet `LARS_exclude`).

Departure: suncet's default `unique_classes_per_rank` draws different classes on every GPU
(e.g. 15 per GPU x 64 GPUs = 960 classes per step); here the whole global support set is one
draw of `classes` classes, the same on every device (the support stream's contract), so the
ImageNet presets set `classes` to the global count.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import collapse
from ssl_jax.config_lib import ConfigError
from ssl_jax.data import augment
from ssl_jax.losses import paws as paws_loss_lib
from ssl_jax.methods import base, views
from ssl_jax.models import heads, registry

UNLABELED, SUPPORT = "unlabeled", "support"


class PAWSNetwork(nn.Module):
  """Backbone per resolution group -> projection (h) [-> prediction (z)]. Returns (h, z)."""
  encoder: nn.Module
  projector: nn.Module
  predictor: nn.Module | None

  def __call__(self, groups, *, train: bool) -> tuple[jax.Array, jax.Array]:
    # suncet `resnet.py` `forward`: backbone, `fc` and `pred` once per resolution group, so the
    # heads' BatchNorm statistics are per group like the backbone's (not over every view).
    hs, zs = [], []
    for images in groups:
      h = self.projector(self.encoder(images, train=train)["pooled"], train=train)
      hs.append(h)
      zs.append(self.predictor(h, train=train) if self.predictor is not None else h)
    h, z = (jnp.concatenate(parts, axis=0) for parts in (hs, zs))
    return h.astype(jnp.float32), z.astype(jnp.float32)

  def encode(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    return self.encoder(images, train=train)


def paws_view(size: int, crop_scale: tuple[float, float], *, strength: float,
              blur_prob: float) -> ml_collections.ConfigDict:
  """suncet `make_transforms` / `make_multicrop_transform`: random resized crop, flip, colour
  distortion of strength s (jitter 0.8s, 0.8s, 0.8s, 0.2s with p 0.8, grayscale 0.2), blur."""
  return augment.view_config(
      size=size, crop_scale=crop_scale, flip_prob=0.5, jitter_prob=0.8,
      brightness=0.8 * strength, contrast=0.8 * strength, saturation=0.8 * strength,
      hue=0.2 * strength, grayscale_prob=0.2, blur_prob=blur_prob, blur_sigma=(0.1, 2.0))


def default_method_config() -> ml_collections.ConfigDict:
  """suncet configs/paws/imgnt_1percent.yaml (ResNet-50, 2x224 + 6x96)."""
  m = ml_collections.ConfigDict()
  m.name = "paws"
  m.temperature = 0.1            # tau of the soft-NN classifier.
  m.sharpen = 0.25               # T of the target sharpening.
  m.label_smoothing = 0.1
  m.me_max = True
  m.hidden_dim = 2048            # projection `fc` hidden width.
  m.output_dim = 2048            # projection output (h) width.
  m.pred_head = True             # suncet use_pred_head (bottleneck output_dim / 4).
  m.support_views = 1            # suncet supervised_views.
  m.global_view = paws_view(224, (0.14, 1.0), strength=1.0, blur_prob=0.5)
  m.local_view = paws_view(96, (0.05, 0.14), strength=1.0, blur_prob=0.5)
  m.local_crops_number = 6
  return m


@dataclasses.dataclass(frozen=True)
class PAWS(base.Method):
  """The PAWS method (Method contract). State: {'batch_stats'} when the network has BN."""

  @property
  def support_classes(self) -> int:
    declared = self.config.data.get("streams") or {}
    missing = [name for name in (UNLABELED, SUPPORT) if name not in declared]
    if missing or declared[SUPPORT].kind != "support":
      raise ConfigError(
          "PAWS reads two streams: config.data.streams.unlabeled = stream_config('unlabeled', "
          "...) and config.data.streams.support = stream_config('support', classes=C, "
          f"per_class=S); got {sorted(declared)} (missing {missing}).")
    return int(declared[SUPPORT].classes)

  @property
  def network(self) -> PAWSNetwork:
    m = self._m
    dtype = base.compute_dtype(self.config.model)
    projector = heads.MLPHead(num_layers=3, hidden_dim=m.hidden_dim, out_dim=m.output_dim,
                              hidden_batch_norm=True, dtype=dtype)
    predictor = None
    if m.pred_head:
      predictor = heads.MLPHead(num_layers=2, hidden_dim=m.output_dim // 4,
                                out_dim=m.output_dim, hidden_batch_norm=True,
                                input_batch_norm=True, dtype=dtype)
    return PAWSNetwork(encoder=registry.build_encoder(self.config.model), projector=projector,
                       predictor=predictor)

  @property
  def eval_recipe(self) -> ml_collections.ConfigDict:
    return self._m.global_view

  def _variables(self, params, state):
    variables = {"params": params}
    if "batch_stats" in state:
      variables["batch_stats"] = state["batch_stats"]
    return variables

  # -- Method contract ------------------------------------------------------------------------

  def init(self, rng, batch):
    del batch
    if self.support_classes < 2:  # Also checks the streams, at init rather than mid-trace.
      raise ConfigError("PAWS's support stream needs classes >= 2: with one class every "
                        "prediction is that class and the loss carries no signal.")
    sizes = [self._m.global_view.size] + ([self._m.local_view.size]
                                          if self._m.local_crops_number else [])
    groups = [jnp.zeros((2, s, s, 3), jnp.float32) for s in sizes]
    variables = self.network.init({"params": rng, "dropout": rng}, groups, train=False)
    state = {"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {}
    return variables["params"], state

  def loss(self, params, state, batch, rng, step):
    del step
    m = self._m
    num_local = int(m.local_crops_number)
    support_views = int(m.support_views)
    if support_views < 1:
      raise ConfigError(f"method.support_views must be >= 1, got {support_views}.")
    support, unlabeled = batch[SUPPORT], batch[UNLABELED]
    support_rng, view_rng, model_rng = jax.random.split(rng, 3)
    # Crop-major arrays: [support x support_views], [global x 2], [local x num_local].
    crops = views.multi_crop_views(support_rng, support["image"],
                                   [(m.global_view, support_views)])
    recipes = [(m.global_view, 2)] + ([(m.local_view, num_local)] if num_local else [])
    crops += views.multi_crop_views(view_rng, unlabeled["image"], recipes)
    groups = views.group_by_resolution(crops)
    variables = self._variables(params, state)
    new_state = dict(state)
    if "batch_stats" in state:
      (h, z), updates = self.network.apply(variables, groups, train=True,
                                           rngs={"dropout": model_rng}, mutable=["batch_stats"])
      new_state["batch_stats"] = updates["batch_stats"]
    else:
      h, z = self.network.apply(variables, groups, train=True, rngs={"dropout": model_rng})

    num_support = support["image"].shape[0] * support_views
    batch_size = unlabeled["image"].shape[0]
    labels = paws_loss_lib.support_label_matrix(
        jnp.tile(support["label"], support_views), self.support_classes, m.label_smoothing)
    loss, metrics = paws_loss_lib.paws_loss(
        anchors=z[num_support:], anchor_supports=z[:num_support],
        targets_from=h[num_support:num_support + 2 * batch_size],
        target_supports=h[:num_support], support_labels=labels, num_local=num_local,
        temperature=m.temperature, sharpen_temperature=m.sharpen, me_max=bool(m.me_max))
    metrics["collapse_std"] = collapse.embedding_std(z[num_support:num_support + batch_size])
    return loss, (metrics, new_state)

  def features(self, params, state, images):
    """The backbone's pooled output (k-NN and linear probes)."""
    out = self.network.apply(self._variables(params, state), self.eval_inputs(images),
                             train=False, method=PAWSNetwork.encode)
    return out["pooled"].astype(jnp.float32)

  def embeddings(self, params, state, images):
    """z, the space the soft-NN classifier is trained in (suncet `snn_eval.py`)."""
    _, z = self.network.apply(self._variables(params, state), [self.eval_inputs(images)],
                              train=False)
    return z
