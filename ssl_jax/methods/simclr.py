"""SimCLR (Chen et al. 2020).

SimCLR, as google-research/simclr (`run.py`, `objective.add_contrastive_loss`):
* two views of every image from the same recipe (`views.simclr_view`);
* both views go through the network as ONE batch of 2N (the official code concatenates them),
  so BatchNorm statistics are over the 2N views of the global batch ("global BN", Sec. 2.2);
* projection head g: `proj_layers` Linear layers, hidden width `proj_hidden_dim` with BN and
  ReLU, output `proj_dim` with a scale-only BN (`ProjectionHead`, `center=False`);
* NT-Xent over the 2N projections of the global batch (`losses.contrastive.nt_xent_loss`),
  multiplied by 2: the official loss is the SUM of the two views' mean losses (`loss_a +
  loss_b`), twice the paper's per-anchor mean, and LARS with weight decay sees that scale. The
  per-anchor mean is logged as `nt_xent`.

The network, views and teacher machinery are `joint_embedding.JointEmbeddingMethod`'s.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax import collapse
from ssl_jax.losses import contrastive
from ssl_jax.methods import joint_embedding, views
from ssl_jax.models import heads


def default_method_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "simclr"
  m.temperature = 0.1            # ImageNet; 0.5 on CIFAR-10 (Appendix B.9).
  m.proj_layers = 2              # SimCLR v1's g(h) = W2 relu(W1 h); v2 uses 3.
  m.proj_hidden_dim = 2048       # The ResNet-50 feature width, as the official mid_dim.
  m.proj_dim = 128
  m.view = views.simclr_view(224)
  return m


@dataclasses.dataclass(frozen=True)
class SimCLR(joint_embedding.JointEmbeddingMethod):
  """SimCLR: NT-Xent between the two views' projections of the global batch."""

  def projector(self):
    m = self.config.method
    return heads.MLPHead(num_layers=m.proj_layers, hidden_dim=m.proj_hidden_dim,
                         out_dim=m.proj_dim, hidden_batch_norm=True,
                         output_norm="batch_norm_scale_only", dtype=self.dtype)

  def loss(self, params, state, batch, rng, step):
    del step
    temperature = joint_embedding.check_temperature(self.config.method.temperature)
    view_rng, model_rng = jax.random.split(rng)
    view1, view2 = self.make_views(view_rng, batch)
    out, batch_stats = self.apply_network(
        self.online_network, params, state["batch_stats"], jnp.concatenate([view1, view2]),
        model_rng)
    projections1, projections2 = jnp.split(out["projections"], 2)
    nt_xent = contrastive.nt_xent_loss(projections1, projections2, temperature)
    metrics = {"nt_xent": nt_xent, "collapse_std": collapse.embedding_std(projections1)}
    return 2.0 * nt_xent, (metrics, {**state, "batch_stats": batch_stats})
