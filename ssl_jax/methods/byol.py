"""BYOL (Grill et al. 2020) and SimSiam (Chen & He 2021): prediction of the other view.

BYOL, as deepmind-research/byol `byol_experiment.py`:
* online network = encoder -> projector -> predictor (both MLPs: 4096 hidden with BN + ReLU,
  256 out, no output BN); target network = encoder -> projector, the EMA of the online one with
  tau cosine from 0.996 to 1 (Sec. 3.2), blended right after each optimizer step and held in
  State; the target runs in training mode (batch statistics) with its own BN averages;
* the asymmetric pair of views (blur 1.0 / 0.1, solarize 0 / 0.2), each view through each
  network separately (per-view BN statistics, as the official code's two forward calls);
* loss = mean_n [(2 - 2 cos(p1, sg(z'2))) + (2 - 2 cos(p2, sg(z'1)))]
  (`losses.distillation.byol_loss`).

SimSiam, as facebookresearch/simsiam `simsiam/builder.py` + `main_simsiam.py`:
* encoder -> projector (3 layers, 2048 wide, BN on every layer and on the output without
  affine) -> predictor (bottleneck 512 with BN + ReLU, back to 2048 with a bias); NO momentum
  encoder: the stop-gradient on z alone prevents collapse;
* two views from MoCo v2's recipe; loss = -1/2 [cos(p1, sg(z2)) + cos(p2, sg(z1))]
  (`losses.distillation.simsiam_loss`);
* SGD, cosine schedule, and (the paper's default, Sec. 4.4) the predictor at the constant peak
  learning rate (`--fix-pred-lr`: its `param_group['lr'] = init_lr`): configs/simsiam.py's
  optimizer group `predictor`.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from ssl_jax import collapse
from ssl_jax.losses import distillation
from ssl_jax.methods import ema, joint_embedding, views
from ssl_jax.models import heads


def default_byol_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "byol"
  m.base_momentum = 0.996        # tau_base; cosine to 1.
  m.proj_hidden_dim = 4096
  m.proj_dim = 256
  m.pred_hidden_dim = 4096
  m.view1, m.view2 = views.byol_views(224)
  return m


def default_simsiam_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "simsiam"
  m.proj_hidden_dim = 2048
  m.proj_dim = 2048
  m.pred_hidden_dim = 512        # The predictor's bottleneck.
  m.view = views.moco_v2_view(224)
  return m


@dataclasses.dataclass(frozen=True)
class BYOL(joint_embedding.JointEmbeddingMethod):
  """BYOL: the online predictor regresses the EMA target's projection of the other view."""

  teacher_parts = ("encoder", "projector")

  def _mlp(self, hidden_dim: int) -> heads.MLPHead:
    return heads.MLPHead(num_layers=2, hidden_dim=hidden_dim,
                         out_dim=self.config.method.proj_dim, hidden_batch_norm=True,
                         output_norm="none", use_bias=False, dtype=self.dtype)

  def projector(self):
    return self._mlp(self.config.method.proj_hidden_dim)

  def predictor(self):
    return self._mlp(self.config.method.pred_hidden_dim)

  @property
  def ema_teacher(self):
    return ema.EMATeacher(base_momentum=self.config.method.base_momentum,
                          total_steps=self.total_steps, schedule="cosine")

  def loss(self, params, state, batch, rng, step):
    predictions, targets, metrics, new_state = self.predict_teacher_projections(
        params, state, batch, rng, step)
    loss = distillation.byol_loss(predictions[0], predictions[1], targets[0], targets[1])
    return loss, (metrics, new_state)


@dataclasses.dataclass(frozen=True)
class SimSiam(joint_embedding.JointEmbeddingMethod):
  """SimSiam: each view's prediction regresses the other view's stop-gradient projection."""

  def projector(self):
    m = self.config.method
    return heads.MLPHead(num_layers=3, hidden_dim=m.proj_hidden_dim, out_dim=m.proj_dim,
                         hidden_batch_norm=True, output_norm="batch_norm_no_affine",
                         use_bias=False, dtype=self.dtype)

  def predictor(self):
    m = self.config.method
    return heads.MLPHead(num_layers=2, hidden_dim=m.pred_hidden_dim, out_dim=m.proj_dim,
                         hidden_batch_norm=True, output_norm="none", use_bias=True,
                         dtype=self.dtype)

  def loss(self, params, state, batch, rng, step):
    del step
    view_rng, model_rng = jax.random.split(rng)
    images = self.make_views(view_rng, batch)
    out, batch_stats = self.forward_views(
        self.online_network, params, state["batch_stats"], images, model_rng)
    loss = distillation.simsiam_loss(out[0]["predictions"], out[1]["predictions"],
                                     out[0]["projections"], out[1]["projections"])
    metrics = {"collapse_std": collapse.embedding_std(out[0]["projections"])}
    return loss, (metrics, {**state, "batch_stats": batch_stats})
