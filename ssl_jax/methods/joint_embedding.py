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

from ssl_jax import collapse
from ssl_jax.config_lib import ConfigError
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
    raise ConfigError(f"config.method ({method.name}) needs `view` (one recipe for both views) "
                      "or `view1` and `view2` (an asymmetric pair); see ssl_jax/methods/views.py.")

  @property
  def eval_recipe(self) -> ml_collections.ConfigDict:
    return self.view_recipes[0]

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

  def predict_teacher_projections(
      self, params: Any, state: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
      step: jax.Array) -> tuple[list[jax.Array], list[jax.Array], base.Metrics, Any]:
    """The forward of BYOL (Grill et al. 2020, Sec. 3.1) and MoCo v3 (Chen, Xie & He 2021,
    Alg. 1), whose steps differ only in the loss that pairs its outputs: both views through the
    online network and through the EMA teacher, each view separately.

    Returns the online predictions and the teacher's stop-gradient projections, one per view,
    the metrics both log (`collapse_std` of the online projections of view 1, the teacher
    momentum) and the state with both networks' updated BatchNorm statistics.
    """
    view_rng, online_rng, teacher_rng = jax.random.split(rng, 3)
    images = self.make_views(view_rng, batch)
    online_out, batch_stats = self.forward_views(
        self.online_network, params, state["batch_stats"], images, online_rng)
    teacher = state["teacher"]
    teacher_out, teacher_batch_stats = self.forward_views(
        self.teacher_network, teacher["params"], teacher["batch_stats"], images, teacher_rng)
    predictions = [out["predictions"] for out in online_out]
    targets = [jax.lax.stop_gradient(out["projections"]) for out in teacher_out]
    new_state = {**state, "batch_stats": batch_stats,
                 "teacher": {**teacher, "batch_stats": teacher_batch_stats}}
    metrics = {"collapse_std": collapse.embedding_std(online_out[0]["projections"]),
               "momentum": self.ema_teacher.momentum(step)}
    return predictions, targets, metrics, new_state

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
    raise ConfigError(f"method.temperature must be > 0, got {temperature}.")
  return float(temperature)
