"""MoCo v2 (Chen, Fan, Girshick & He 2020) and MoCo v3 (Chen, Xie & He 2021).

MoCo v2, as facebookresearch/moco `moco/builder.py` with `--mlp --aug-plus --cos`:
* query encoder = backbone -> 2-layer MLP head (hidden `proj_hidden_dim` with bias and ReLU, no
  BN, output `proj_dim` = 128); key encoder = a copy updated by a CONSTANT momentum 0.999,
  held in State (no gradient reaches it);
* one query view and one key view per image from the same "aug+" recipe;
* loss = InfoNCE of each query against its key (positive) and the K = 65536 queued keys
  (negatives), temperature 0.2 (`losses.contrastive.moco_infonce_loss`), one direction only;
* AFTER the loss, the L2-normalised keys of the whole GLOBAL batch overwrite the oldest queue
  entries (`_dequeue_and_enqueue` after `concat_all_gather`); the queue starts as random unit
  vectors, so negatives are usable from the first step.

No shuffle-BN. MoCo shuffles the key batch across GPUs because per-GPU BatchNorm lets a query
and its key share statistics of the same small sub-batch, a signal the model can exploit to
find the positive without learning good features ("cheating", He et al. 2020, Sec. 3.3). Here
the step is jitted over the global batch, so every BatchNorm, the key encoder's included, uses
statistics of the whole global batch ("global BN", SimCLR Sec. 2.2; MoCo v3 uses SyncBN and no
shuffle). That is how this implementation mitigates the leak, and it is a difference from the
official MoCo v2: the statistics still contain each key (1/B of them), which matters only at
small global batches. With a ViT backbone the MoCo v2 network has no BatchNorm at all.

MoCo v3, as facebookresearch/moco-v3 `moco/builder.py` + `main_moco.py`:
* base encoder = backbone -> projector (`proj_layers` = 3 for ViT / 2 for ResNet, hidden 4096
  with BN + ReLU, output 256 with BN without affine, no biases) -> predictor (2 layers, 4096,
  output BN without affine for ViT and none for ResNet); momentum encoder = backbone ->
  projector, EMA with m cosine from 0.99 to 1 (`--moco-m-cos`), applied at the start of each
  step (see `ema.EMATeacher.momentum_of_next_step`);
* the BYOL pair of views; loss = ctr(q1, k2) + ctr(q2, k1), each InfoNCE over the global batch
  with T = 0.2, scaled by 2T (`losses.contrastive.moco_v3_loss`); no queue;
* the ViT's random patch projection stays fixed (`--stop-grad-conv1`, Sec. 4.2): configs/
  moco_v3.py's frozen optimizer group `patch_embed` (no update, so no weight decay either, as
  for a torch param without gradient).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from ssl_jax import collapse
from ssl_jax.config_lib import ConfigError
from ssl_jax.losses import contrastive, queue as queue_lib
from ssl_jax.methods import ema, joint_embedding, views
from ssl_jax.models import heads


def default_moco_v2_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "moco_v2"
  m.temperature = 0.2
  m.queue_size = 65536
  m.momentum = 0.999             # Constant (MoCo v1/v2 have no momentum schedule).
  m.proj_hidden_dim = 2048
  m.proj_dim = 128
  m.view = views.moco_v2_view(224)
  return m


def default_moco_v3_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "moco_v3"
  m.temperature = 0.2            # ViT recipe; the ResNet-50 recipe uses 1.0.
  m.base_momentum = 0.99         # Cosine to 1.
  m.proj_layers = 3              # 3 for ViT, 2 for ResNet.
  m.proj_hidden_dim = 4096
  m.proj_dim = 256
  m.pred_hidden_dim = 4096
  m.view1, m.view2 = views.moco_v3_views(224)
  return m


@dataclasses.dataclass(frozen=True)
class MoCoV2(joint_embedding.JointEmbeddingMethod):
  """MoCo v2: query encoder trained by InfoNCE against a momentum key encoder and a queue."""

  teacher_parts = ("encoder", "projector")

  def projector(self):
    m = self.config.method
    return heads.MLPHead(num_layers=2, hidden_dim=m.proj_hidden_dim, out_dim=m.proj_dim,
                         hidden_batch_norm=False, output_norm="none", use_bias=True,
                         dtype=self.dtype)

  @property
  def ema_teacher(self):
    return ema.EMATeacher(base_momentum=self.config.method.momentum,
                          total_steps=self.total_steps, schedule="constant")

  def init(self, rng, batch):
    m = self.config.method
    if m.queue_size < self.config.batch_size:
      raise ConfigError(f"method.queue_size={m.queue_size} is smaller than batch_size="
                        f"{self.config.batch_size}: every step enqueues the whole global batch "
                        "of keys, so the queue must hold at least one batch.")
    params_rng, queue_rng = jax.random.split(rng)
    params, state = super().init(params_rng, batch)
    state["queue"] = queue_lib.init_queue(m.queue_size, m.proj_dim, rng=queue_rng)
    return params, state

  def loss(self, params, state, batch, rng, step):
    temperature = joint_embedding.check_temperature(self.config.method.temperature)
    view_rng, query_rng, key_rng = jax.random.split(rng, 3)
    query_images, key_images = self.make_views(view_rng, batch)
    query_out, batch_stats = self.apply_network(
        self.online_network, params, state["batch_stats"], query_images, query_rng)
    teacher = state["teacher"]
    key_out, teacher_batch_stats = self.apply_network(
        self.teacher_network, teacher["params"], teacher["batch_stats"], key_images, key_rng)
    queries = query_out["projections"]
    keys = jax.lax.stop_gradient(key_out["projections"])
    # The loss sees the queue as it was before this step; this batch's keys go in afterwards.
    loss = contrastive.moco_infonce_loss(queries, keys, state["queue"].entries, temperature)
    new_queue = queue_lib.enqueue(state["queue"], contrastive.l2_normalize(keys))
    new_state = {**state, "batch_stats": batch_stats, "queue": new_queue,
                 "teacher": {**teacher, "batch_stats": teacher_batch_stats}}
    metrics = {"collapse_std": collapse.embedding_std(queries),
               "momentum": self.ema_teacher.momentum(step)}
    return loss, (metrics, new_state)


@dataclasses.dataclass(frozen=True)
class MoCoV3(joint_embedding.JointEmbeddingMethod):
  """MoCo v3: symmetric InfoNCE between predictor outputs and momentum-encoder projections."""

  teacher_parts = ("encoder", "projector")

  @property
  def _is_vit(self) -> bool:
    return self.config.model.name.startswith("vit")

  def projector(self):
    m = self.config.method
    return heads.MLPHead(num_layers=m.proj_layers, hidden_dim=m.proj_hidden_dim,
                         out_dim=m.proj_dim, hidden_batch_norm=True,
                         output_norm="batch_norm_no_affine", use_bias=False, dtype=self.dtype)

  def predictor(self):
    m = self.config.method
    # moco-v3 `MoCo_ViT` builds the predictor with last_bn=True, `MoCo_ResNet` with False.
    return heads.MLPHead(num_layers=2, hidden_dim=m.pred_hidden_dim, out_dim=m.proj_dim,
                         hidden_batch_norm=True,
                         output_norm="batch_norm_no_affine" if self._is_vit else "none",
                         use_bias=False, dtype=self.dtype)

  @property
  def ema_teacher(self):
    return ema.EMATeacher(base_momentum=self.config.method.base_momentum,
                          total_steps=self.total_steps, schedule="cosine",
                          momentum_of_next_step=True)

  def loss(self, params, state, batch, rng, step):
    temperature = joint_embedding.check_temperature(self.config.method.temperature)
    queries, keys, metrics, new_state = self.predict_teacher_projections(
        params, state, batch, rng, step)
    loss = contrastive.moco_v3_loss(queries[0], queries[1], keys[0], keys[1], temperature)
    return loss, (metrics, new_state)
