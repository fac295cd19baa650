"""The machinery every two-view joint-embedding method shares (SimCLR, MoCo v2/v3, BYOL,
SimSiam).

* online network = encoder -> projector [-> predictor], params {'encoder', 'projector'[,
  'predictor']}; BatchNorm statistics live in `state['batch_stats']`;
* an optional EMA teacher = encoder -> projector, held in `state['teacher']` ({'params',
  'batch_stats'}), so the optimizer never sees it and no gradient reaches it; `update_state`
  blends it towards the online params (`ema.EMATeacher`);
* `features` is the online encoder's pooled output (the representation, not the projection),
  with BN running averages, at the first view's resolution.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.data import augment
from ssl_jax.methods import base, ema, views
from ssl_jax.models import registry


class EmbeddingNetwork(nn.Module):
  """encoder -> projector [-> predictor]: the online (or, without predictor, target) network."""
  encoder: nn.Module
  projector: nn.Module
  predictor: nn.Module | None = None

  def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    """Returns {'features' [B, D], 'projections' [B, P] (, 'predictions' [B, P])}."""
    features = self.encoder(images, train=train)["pooled"]
    outputs = {"features": features, "projections": self.projector(features, train=train)}
    if self.predictor is not None:
      outputs["predictions"] = self.predictor(outputs["projections"], train=train)
    return outputs

  def encode(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    return self.encoder(images, train=train)["pooled"]


@dataclasses.dataclass(frozen=True)
class JointEmbeddingMethod(base.Method):
  """Two-view method over an `EmbeddingNetwork`, optionally with an EMA teacher in State.

  Subclasses define `projector()` (and `predictor()`), `loss`, and for a teacher set
  `teacher_parts` and `ema_teacher`. The view recipes come from `config.method.view` (the same
  recipe for both views) or `config.method.view1` / `view2` (an asymmetric pair).
  """

  # Online-network parts the EMA teacher mirrors; () means no teacher.
  teacher_parts: ClassVar[tuple[str, ...]] = ()

  @property
  def dtype(self) -> Any:
    return base.compute_dtype(self.config.model)

  @abc.abstractmethod
  def projector(self) -> nn.Module:
    """The projection head (each paper's own layout)."""

  def predictor(self) -> nn.Module | None:
    return None

  @property
  def ema_teacher(self) -> ema.EMATeacher | None:
    return None

  @property
  def online_network(self) -> EmbeddingNetwork:
    return EmbeddingNetwork(encoder=registry.build_encoder(self.config.model),
                            projector=self.projector(), predictor=self.predictor())

  @property
  def teacher_network(self) -> EmbeddingNetwork:
    return EmbeddingNetwork(encoder=registry.build_encoder(self.config.model),
                            projector=self.projector())

  @property
  def view_recipes(self) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    method = self.config.method
    if "view" in method:
      return method.view, method.view
    if "view1" in method and "view2" in method:
      return method.view1, method.view2
    raise ValueError(f"config.method ({method.name}) needs `view` (one recipe for both views) "
                     "or `view1` and `view2` (an asymmetric pair); see ssl_jax/methods/views.py.")

  @property
  def eval_image_size(self) -> int:
    return int(self.view_recipes[0].size)

  def eval_inputs(self, images: jax.Array) -> jax.Array:
    view = self.view_recipes[0]
    return augment.eval_view(images, size=self.eval_image_size, mean=tuple(view.mean),
                             std=tuple(view.std))

  def make_views(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, ...]:
    return views.two_views(rng, batch["image"], *self.view_recipes)

  @staticmethod
  def apply_network(network: EmbeddingNetwork, params: Any, batch_stats: Any,
                    images: jax.Array, rng: jax.Array) -> tuple[dict, Any]:
    """One training-mode forward pass (teachers too, as in every official implementation):
    BN normalises with the batch statistics and returns its updated running averages."""
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    outputs, updates = network.apply(variables, images, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": rng})
    return outputs, updates.get("batch_stats", batch_stats)

  def forward_views(self, network: EmbeddingNetwork, params: Any, batch_stats: Any,
                    images: Sequence[jax.Array], rng: jax.Array) -> tuple[list[dict], Any]:
    """Each view through `network` separately (per-view BN statistics, as BYOL, SimSiam and
    MoCo v3 do), the running averages updated view after view like two PyTorch forwards."""
    outputs = []
    for index, view_images in enumerate(images):
      out, batch_stats = self.apply_network(network, params, batch_stats, view_images,
                                            jax.random.fold_in(rng, index))
      outputs.append(out)
    return outputs, batch_stats

  def init(self, rng, batch):
    del batch
    size = self.eval_image_size
    images = jnp.zeros((2, size, size, 3), jnp.float32)
    variables = self.online_network.init({"params": rng, "dropout": rng}, images, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    state = {"batch_stats": batch_stats}
    if self.teacher_parts:
      state["teacher"] = {
          "params": ema.EMATeacher.init(params, self.teacher_parts),
          "batch_stats": {part: jax.tree.map(lambda x: jnp.array(x, copy=True), batch_stats[part])
                          for part in self.teacher_parts if part in batch_stats}}
    return params, state

  def update_state(self, params, state, step):
    teacher = self.ema_teacher
    if teacher is None:
      return state
    new_teacher = {**state["teacher"],
                   "params": teacher.update(state["teacher"]["params"], params, step)}
    return {**state, "teacher": new_teacher}

  def features(self, params, state, images):
    variables = {"params": params}
    if state["batch_stats"]:
      variables["batch_stats"] = state["batch_stats"]
    out = self.online_network.apply(variables, self.eval_inputs(images), train=False,
                                    method=EmbeddingNetwork.encode)
    return out.astype(jnp.float32)


def check_temperature(temperature: float) -> float:
  if not temperature > 0:
    raise ValueError(f"method.temperature must be > 0, got {temperature}.")
  return float(temperature)
