"""SwAV: Unsupervised Learning of Visual Features by Contrasting Cluster Assignments
(Caron et al., 2020).

Semantics follow facebookresearch/swav `main_swav.py`, `src/resnet50.py` and
`src/multicropdataset.py`:

* multi-crop: `nmb_crops` = [2, 6] crops of sizes [224, 96], scales (0.14, 1) and (0.05, 0.14),
  every crop with flip, colour distortion (jitter 0.8, 0.8, 0.8, 0.2 with p=0.8, grayscale 0.2)
  and Gaussian blur p=0.5;
* network: backbone (once per resolution) -> projection MLP (2048, BN, ReLU, 128) on all crops
  together -> L2 normalisation -> prototypes (bias-free Linear, 3000 outputs);
* the prototypes are L2-normalised before every forward pass (`w = normalize(w)` under no_grad):
  here they are renormalised by the optimizer right after every update (configs/swav.py's group
  `prototypes`, `project='unit_columns'`) and the forward pass uses their normalised value with a
  straight-through gradient, which is the same sequence of weights and gradients;
* loss (`ssl_jax.losses.distillation.swav_loss`): codes from Sinkhorn-Knopp (eps 0.05, 3
  iterations) over the global batch for each crop in `crops_for_assign`, predicted by every
  other crop with temperature 0.1;
* queue: from epoch `epoch_queue_starts` on, the normalised embeddings of the assigned crops are
  enqueued every step; once full, the queue's scores (against the current prototypes) join the
  batch's in Sinkhorn; its length is cut to a multiple of the global batch;
* the prototypes get no gradient (and so no optimizer step at all) during the first
  `freeze_prototypes_niters` iterations, here the group's `freeze_epochs` (313 iterations is one
  epoch at batch 4096, 5005 one at batch 256);
* optimizer (configs/swav.py, built by ssl_jax/optim.py): SGD (momentum 0.9, wd 1e-6) wrapped in
  LARC (trust 0.001, clip=False) over every parameter (`optim.name='larc_sgd'`), lr warm-up
  `np.linspace(start_warmup, base_lr, W)` then cosine to `final_lr` (`optim.end_lr`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import collapse, steps
from ssl_jax.config_lib import ConfigError
from ssl_jax.data import augment
from ssl_jax.losses import contrastive, distillation
from ssl_jax.losses import queue as queue_lib
from ssl_jax.methods import base, views
from ssl_jax.models import heads, registry


class SwAVNetwork(nn.Module):
  """Backbone per resolution group, then projection, L2 norm and prototypes on all crops.

  Params: {'encoder', 'projector', 'prototypes'}. Returns (embeddings [N, D] unit-norm,
  scores [N, K]) like swav's `forward_head`.
  """
  encoder: nn.Module
  projector: nn.Module
  prototypes: heads.Prototypes

  def __call__(self, crop_groups, *, train: bool) -> tuple[jax.Array, jax.Array]:
    features = views.encode_crop_groups(self.encoder, crop_groups, train=train)
    embeddings = contrastive.l2_normalize(
        self.projector(features, train=train).astype(jnp.float32))
    return embeddings, self.prototypes(embeddings).astype(jnp.float32)

  def encode(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    return self.encoder(images, train=train)


def straight_through_normalized(prototype_params: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The normalised prototypes as the forward value, the identity as the gradient.

  swav normalises the weights in place and differentiates the loss at the normalised weights; a
  plain `normalize_prototypes` inside the loss would instead project the gradient onto the
  sphere's tangent plane. Since the optimizer keeps the stored weights normalised
  (`ssl_jax.optim.project_unit_columns`), the value is unchanged and the gradient is exactly
  swav's.
  """
  normalized = heads.normalize_prototypes(prototype_params)
  return jax.tree.map(lambda p, n: p + jax.lax.stop_gradient(n - p), prototype_params,
                      normalized)


def swav_view(size: int, crop_scale: tuple[float, float]) -> ml_collections.ConfigDict:
  """One crop recipe of swav's `MultiCropDataset` (same colour distortion for every crop)."""
  return augment.view_config(
      size=size, crop_scale=crop_scale, flip_prob=0.5, jitter_prob=0.8, brightness=0.8,
      contrast=0.8, saturation=0.8, hue=0.2, grayscale_prob=0.2, blur_prob=0.5,
      blur_sigma=(0.1, 2.0), std=(0.228, 0.224, 0.225))


def default_method_config() -> ml_collections.ConfigDict:
  """main_swav.py as run by scripts/swav_800ep_pretrain.sh."""
  m = ml_collections.ConfigDict()
  m.name = "swav"
  m.hidden_mlp = 2048
  m.feat_dim = 128
  m.nmb_prototypes = 3000
  m.temperature = 0.1
  m.epsilon = 0.05
  m.sinkhorn_iterations = 3
  m.crops_for_assign = (0, 1)
  m.queue_length = 0             # 0: no queue. Cut to a multiple of the global batch.
  m.epoch_queue_starts = 15
  m.global_view = swav_view(224, (0.14, 1.0))
  m.global_crops_number = 2
  m.local_view = swav_view(96, (0.05, 0.14))
  m.local_crops_number = 6
  return m


class _Recipe(NamedTuple):
  view: ml_collections.ConfigDict
  count: int


@dataclasses.dataclass(frozen=True)
class SwAV(base.Method):
  """The SwAV method (Method contract). State: {'queue'[, 'batch_stats']}."""

  @property
  def network(self) -> SwAVNetwork:
    m = self._m
    if m.nmb_prototypes <= m.feat_dim:
      # With K <= D the prototypes leave a null space: embeddings orthogonal to every prototype
      # score 0 against all of them, so predictions and Sinkhorn codes are uniform, the loss
      # sits at log K and its gradient vanishes (seen on CIFAR-10: K = 100, D = 128).
      raise ConfigError(f"method.nmb_prototypes ({m.nmb_prototypes}) must exceed method.feat_dim "
                        f"({m.feat_dim}), or the embeddings can escape every prototype into "
                        "their null space (uniform codes, loss stuck at log K); swav uses 3000 "
                        "prototypes for 128-d embeddings.")
    dtype = base.compute_dtype(self.config.model)
    projector = heads.MLPHead(num_layers=2, hidden_dim=m.hidden_mlp, out_dim=m.feat_dim,
                              hidden_batch_norm=True, use_bias=True, dtype=dtype)
    return SwAVNetwork(encoder=registry.build_encoder(self.config.model), projector=projector,
                       prototypes=heads.Prototypes(m.nmb_prototypes, dtype=dtype))

  @property
  def crop_recipes(self) -> list[_Recipe]:
    m = self._m
    if m.global_crops_number < 1 or m.local_crops_number < 0:
      raise ConfigError(f"method.global_crops_number must be >= 1 and local_crops_number >= 0; "
                        f"got {m.global_crops_number} and {m.local_crops_number}.")
    recipes = [_Recipe(m.global_view, int(m.global_crops_number))]
    if m.local_crops_number:
      recipes.append(_Recipe(m.local_view, int(m.local_crops_number)))
    return recipes

  @property
  def num_crops(self) -> int:
    return sum(recipe.count for recipe in self.crop_recipes)

  @property
  def crops_for_assign(self) -> tuple[int, ...]:
    crops = tuple(int(c) for c in self._m.crops_for_assign)
    if not crops or not all(0 <= c < self.num_crops for c in crops):
      raise ConfigError(f"method.crops_for_assign={crops} must name crops in [0, "
                        f"{self.num_crops}).")
    return crops

  @property
  def queue_length(self) -> int:
    """swav: `queue_length -= queue_length % (batch_size * world_size)`."""
    length = int(self._m.queue_length)
    if length < 0:
      raise ConfigError(f"method.queue_length must be >= 0, got {length}.")
    return length - length % int(self.config.batch_size)

  @property
  def queue_start_step(self) -> int:
    return steps.epochs_to_steps(int(self._m.epoch_queue_starts), self.steps_per_epoch)

  @property
  def eval_recipe(self) -> ml_collections.ConfigDict:
    return self._m.global_view

  def make_crops(self, rng: jax.Array, images: jax.Array) -> list[jax.Array]:
    return views.multi_crop_views(rng, images, [tuple(r) for r in self.crop_recipes])

  # -- Method contract ------------------------------------------------------------------------

  def init(self, rng, batch):
    del batch
    groups = [jnp.zeros((2, r.view.size, r.view.size, 3), jnp.float32)
              for r in self.crop_recipes]
    variables = self.network.init({"params": rng, "dropout": rng}, groups, train=False)
    params = dict(variables["params"])
    params["prototypes"] = heads.normalize_prototypes(params["prototypes"])
    state = {}
    if self.queue_length:
      state["queue"] = tuple(queue_lib.init_queue(self.queue_length, int(self._m.feat_dim))
                             for _ in self.crops_for_assign)
    if "batch_stats" in variables:
      state["batch_stats"] = variables["batch_stats"]
    return params, state

  def forward(self, params, state, crops, rng):
    """Train-mode forward of all crops: ([V, B, D] embeddings, [V, B, K] scores, batch stats)."""
    params = {**params, "prototypes": straight_through_normalized(params["prototypes"])}
    variables = {"params": params}
    groups = views.group_by_resolution(crops)
    if "batch_stats" in state:
      variables["batch_stats"] = state["batch_stats"]
      (embeddings, scores), updates = self.network.apply(
          variables, groups, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])
      batch_stats = updates["batch_stats"]
    else:
      embeddings, scores = self.network.apply(variables, groups, train=True,
                                              rngs={"dropout": rng})
      batch_stats = None
    num_crops = self.num_crops
    return (embeddings.reshape(num_crops, -1, embeddings.shape[-1]),
            scores.reshape(num_crops, -1, scores.shape[-1]), batch_stats)

  def loss(self, params, state, batch, rng, step):
    m = self._m
    view_rng, model_rng = jax.random.split(rng)
    crops = self.make_crops(view_rng, batch["image"])
    embeddings, scores, batch_stats = self.forward(params, state, crops, model_rng)
    loss_fn = lambda queue_scores: distillation.swav_loss(
        scores, temperature=m.temperature, epsilon=m.epsilon,
        num_sinkhorn_iters=int(m.sinkhorn_iterations), crops_for_assign=self.crops_for_assign,
        queue_scores=queue_scores)

    new_state = dict(state)
    metrics = {}
    if "queue" in state:
      queues = state["queue"]
      prototypes = heads.normalize_prototypes(params["prototypes"])["kernel"]
      queue_scores = jax.lax.stop_gradient(
          jnp.stack([q.entries for q in queues]) @ prototypes.astype(jnp.float32))
      use_queue = queue_lib.is_full(queues[0])
      loss = jax.lax.cond(use_queue, lambda: loss_fn(queue_scores), lambda: loss_fn(None))
      # Enqueue after computing the codes, and only once the queue has started.
      started = step >= self.queue_start_step
      enqueued = tuple(queue_lib.enqueue(q, embeddings[c])
                       for q, c in zip(queues, self.crops_for_assign))
      new_state["queue"] = jax.tree.map(lambda new, old: jnp.where(started, new, old), enqueued,
                                        queues)
      metrics["queue_in_use"] = use_queue.astype(jnp.float32)
    else:
      loss = loss_fn(None)
    if batch_stats is not None:
      new_state["batch_stats"] = batch_stats
    metrics["swav_loss"] = loss
    metrics["collapse_std"] = collapse.embedding_std(embeddings[0])
    return loss, (metrics, new_state)

  def features(self, params, state, images):
    """The backbone's output (average-pooled for a ResNet, CLS for a ViT), as swav's eval."""
    variables = {"params": params}
    if "batch_stats" in state:
      variables["batch_stats"] = state["batch_stats"]
    out = self.network.apply(variables, self.eval_inputs(images), train=False,
                             method=SwAVNetwork.encode)
    return out["pooled"].astype(jnp.float32)
