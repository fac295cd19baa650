"""The Method contract: what makes one training loop enough for every method.

A method is a frozen dataclass of pure functions. The loop owns the optimizer (built from
`config.optim` by `ssl_jax.optim.build_optimizer`; a method's default parameter groups are set in
its config file), shardings, checkpoints and data; the method owns its model(s), its views of the batch, its loss and any
non-trainable state (EMA teachers, centres, queues, BatchNorm statistics).

    init(rng, batch)                        -> (params, state)
    loss(params, state, batch, rng, step)   -> (scalar, (metrics, new_state))
    update_state(params, state, step)       -> state          # after the optimizer step
    features(params, state, images)         -> [B, D]         # for the evaluators
    embeddings(params, state, images)       -> [B, E]         # soft-NN eval; = features

`batch` is the raw host batch as global arrays: `image` uint8 [B, H, W, C] at the data canvas
and `label` int32 [B]; every stochastic view is made on device inside `loss` from `rng`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.data import augment

Params = Any
State = Any
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Method(abc.ABC):
  """Base class; subclasses are built from the whole config by `from_config`."""

  config: ml_collections.ConfigDict  # The full run config (read-only by convention).
  # Resolved by the loop from `total_steps`/`epochs` and the train split size; schedules that
  # the papers state in epochs (teacher momentum, temperature warm-up, frozen layers) use them.
  total_steps: int = 1
  steps_per_epoch: int = 1

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, total_steps: int = 1,
                  steps_per_epoch: int = 1) -> "Method":
    return cls(config=config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[Params, State]:
    """Initial trainable params and non-trainable state."""

  @abc.abstractmethod
  def loss(self, params: Params, state: State, batch: Mapping[str, jax.Array], rng: jax.Array,
           step: jax.Array) -> tuple[jax.Array, tuple[Metrics, State]]:
    """Scalar loss to minimise, metrics (names without the 'train/' prefix), new state."""

  def update_state(self, params: Params, state: State, step: jax.Array) -> State:
    """Post-optimizer-step state update (EMA teachers ...); stateless methods keep it."""
    del params, step
    return state

  @abc.abstractmethod
  def features(self, params: Params, state: State, images: jax.Array) -> jax.Array:
    """[B, D] representation of uint8 canvas images, for k-NN and linear evaluation."""

  def embeddings(self, params: Params, state: State, images: jax.Array) -> jax.Array:
    """[B, E] embedding the method's own nearest-neighbour classifier works in (the `softnn`
    eval protocol; PAWS: its projection); the backbone features by default."""
    return self.features(params, state, images)

  def visualize(self, params: Params, state: State, images: jax.Array,
                rng: jax.Array) -> dict[str, jax.Array]:
    """Named image grids [H, W, 3] in [0, 1] for TensorBoard/PNG; none by default."""
    del params, state, images, rng
    return {}

  # Helpers shared by subclasses.

  @property
  def _m(self) -> ml_collections.ConfigDict:
    """`config.method`: the method's own hyper-parameters."""
    return self.config.method

  @property
  def eval_recipe(self) -> ml_collections.ConfigDict | None:
    """The training view recipe whose size and normalisation evaluation reuses: `method.view`
    (multi-crop methods override it with their first global crop); None: the data canvas size
    and the default normalisation."""
    return self.config.method.view if "view" in self.config.method else None

  @property
  def eval_image_size(self) -> int:
    """Evaluation resolution: the training view's size (ViT position embeddings fix it)."""
    recipe = self.eval_recipe
    return int(recipe.size) if recipe is not None else int(self.config.data.image_size)

  def eval_inputs(self, images: jax.Array) -> jax.Array:
    """Deterministic evaluation preprocessing: canvas -> float, normalised."""
    recipe = self.eval_recipe
    if recipe is None:
      recipe = augment.view_config()
    return augment.eval_view(images, size=self.eval_image_size, mean=tuple(recipe.mean),
                             std=tuple(recipe.std))


def compute_dtype(model_config) -> jnp.dtype:
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[model_config.dtype]
