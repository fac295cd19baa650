r"""LeJEPA (Balestriero & LeCun 2025, "LeJEPA: Provable and Scalable Self-Supervised Learning
Without the Heuristics"): one predictive term, one regulariser, one hyper-parameter; no teacher,
no stop-gradient, no predictor network.

For V views of every image (V_g global crops, then V - V_g local ones; multi-crop as DINO's)
and their projections z_{v,n} in R^K (encoder -> projector, no normalisation):

    L = (1 - lambda) * L_pred + lambda * mean_v SIGReg({z_{v,n}}_n)
    L_pred = mean_{v,n} ||z_{v,n} - mu_n||^2 / K,  mu_n = mean_{g < V_g} z_{g,n}

L_pred asks every view to predict the centre of the image's global views (the paper's
Algorithm 1: `(centers - a_emb).square().mean()`, a mean over the K dimensions too, the scale
lambda ~ 0.05 was set for); SIGReg (`ssl_jax.losses.sigreg`) pushes each view's embeddings
towards N(0, I_K), which rules out collapse without a teacher or negatives.

The official code (rbalestr-lab/lejepa) was not available here: the multi-crop recipe, the
projector, the quadrature range and the running of the projector once over all views are from
the paper, unverified against it (docs/methods.md lists each).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import collapse
from ssl_jax.config_lib import ConfigError
from ssl_jax.losses import sigreg
from ssl_jax.methods import base, joint_embedding, views
from ssl_jax.models import heads, registry


def default_method_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "lejepa"
  m.sigreg_weight = 0.05         # lambda, the one hyper-parameter.
  m.num_slices = 1024            # M random directions per step.
  m.t_max = 3.0                  # Quadrature on [-t_max, t_max] ...
  m.num_knots = 17               # ... with this many knots on [0, t_max].
  # Projector: Linear-BN-ReLU x (proj_layers - 1), then Linear to proj_dim.
  m.proj_layers = 3
  m.proj_hidden_dim = 2048
  m.proj_dim = 128
  # Multi-crop: `num_global_views` crops of `global_view`, `num_local_views` of `local_view`;
  # rbalestr-lab/lejepa's README: one DINO-style colour recipe for both (blur p=0.5, solarize
  # p=0.2), scales 0.3-1 and 0.05-0.3; local crops of 96 px (theirs: 98, for patch 14).
  m.global_view = views.dino_view(224, (0.3, 1.0), blur_prob=0.5, solarize_prob=0.2)
  m.num_global_views = 2
  m.local_view = views.dino_view(96, (0.05, 0.3), blur_prob=0.5, solarize_prob=0.2)
  m.num_local_views = 6
  return m


def prediction_loss(projections: jax.Array, num_global_views: int) -> jax.Array:
  """L_pred of [V, N, K] view-major projections whose first `num_global_views` views are the
  global ones: mean over views, images and dimensions of (z_{v,n} - mu_n)^2."""
  if projections.ndim != 3 or not 1 <= num_global_views <= projections.shape[0]:
    raise ValueError(f"prediction_loss expects [views, batch, dim] projections with at least "
                     f"{num_global_views} views, got shape {projections.shape}.")
  centers = jnp.mean(projections[:num_global_views], axis=0)
  return jnp.mean(jnp.square(projections - centers))


class MultiViewEmbedding(nn.Module):
  """The encoder once per crop resolution, the projector once on every view's features.

  Params {'encoder', 'projector'}; build the encoder at the global crops' resolution (a learned
  position embedding is resampled for the local crops).
  """
  encoder: nn.Module
  projector: nn.Module

  def __call__(self, crop_groups: Sequence[jax.Array], *, train: bool) -> jax.Array:
    """[sum of group sizes, proj_dim] projections, in the order of the groups."""
    return self.projector(views.encode_crop_groups(self.encoder, crop_groups, train=train),
                          train=train)

  def encode(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    return self.encoder(images, train=train)["pooled"]


@dataclasses.dataclass(frozen=True)
class LeJEPA(base.Method):
  """LeJEPA (Method contract). State: {'batch_stats'} (projector BN, ResNet BN)."""

  @property
  def network(self) -> MultiViewEmbedding:
    m = self._m
    projector = heads.MLPHead(num_layers=m.proj_layers, hidden_dim=m.proj_hidden_dim,
                              out_dim=m.proj_dim, hidden_batch_norm=True, output_norm="none",
                              dtype=base.compute_dtype(self.config.model))
    return MultiViewEmbedding(encoder=registry.build_encoder(self.config.model),
                              projector=projector)

  @property
  def crop_recipes(self) -> list[tuple[ml_collections.ConfigDict, int]]:
    m = self._m
    if m.num_global_views < 1 or m.num_local_views < 0:
      raise ConfigError(f"LeJEPA needs method.num_global_views >= 1 and num_local_views >= 0, "
                        f"got {m.num_global_views} and {m.num_local_views}.")
    recipes = [(m.global_view, int(m.num_global_views))]
    if m.num_local_views:
      recipes.append((m.local_view, int(m.num_local_views)))
    return recipes

  @property
  def num_views(self) -> int:
    return int(self._m.num_global_views) + int(self._m.num_local_views)

  @property
  def eval_recipe(self) -> ml_collections.ConfigDict:
    return self._m.global_view

  def init(self, rng, batch):
    del batch
    groups = [jnp.zeros((2, size, size, 3), jnp.float32)
              for size in dict.fromkeys(int(view.size) for view, _ in self.crop_recipes)]
    variables = self.network.init({"params": rng, "dropout": rng}, groups, train=False)
    return variables["params"], {"batch_stats": variables.get("batch_stats", {})}

  def loss(self, params, state, batch, rng, step):
    del step
    m = self._m
    view_rng, slice_rng, model_rng = jax.random.split(rng, 3)
    crops = views.multi_crop_views(view_rng, batch["image"], self.crop_recipes)
    projections, batch_stats = joint_embedding.JointEmbeddingMethod.apply_network(
        self.network, params, state["batch_stats"], views.group_by_resolution(crops),
        model_rng)
    # Crop-major rows (every image's view 0, then view 1 ...) -> [V, N, K].
    projections = projections.astype(jnp.float32).reshape(self.num_views, -1,
                                                          projections.shape[-1])
    invariance = prediction_loss(projections, int(m.num_global_views))
    regulariser = sigreg.sigreg(projections, slice_rng, num_slices=int(m.num_slices),
                                t_max=float(m.t_max), num_knots=int(m.num_knots))
    weight = float(m.sigreg_weight)
    if not 0.0 <= weight <= 1.0:
      raise ConfigError(f"method.sigreg_weight (lambda) must be in [0, 1], got {weight}.")
    loss = (1.0 - weight) * invariance + weight * regulariser
    metrics = {"invariance": invariance, "sigreg": regulariser,
               "collapse_std": collapse.embedding_std(projections[0])}
    return loss, (metrics, {**state, "batch_stats": batch_stats})

  def features(self, params, state, images):
    """The encoder's pooled output (not the projection), with BN running averages."""
    variables: dict[str, Any] = {"params": params}
    if state["batch_stats"]:
      variables["batch_stats"] = state["batch_stats"]
    out = self.network.apply(variables, self.eval_inputs(images), train=False,
                             method=MultiViewEmbedding.encode)
    return out.astype(jnp.float32)
