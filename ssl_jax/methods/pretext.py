"""The shared machinery of the classification pretext tasks: rotation, jigsaw, context.

Each of them turns a batch into `inputs` (several crops per example), a pretext label per
example, and classifies the label from the backbone features of the example's crops,
concatenated in order:

* RotNet (Gidaris et al. 2018): 1 crop (a rotated image) -> 4 rotations;
* jigsaw (Noroozi & Favaro 2016): 9 tiles in shuffled order -> P permutations; the backbone is
  the shared-weight tile encoder (their "context-free network");
* context prediction (Doersch et al. 2015): 2 patches (centre, neighbour) -> 8 positions.

`PretextClassifier` owns the backbone ('encoder'), the classifier `PretextHead` ('head', an
MLP over the concatenated features) and their BatchNorm statistics; a subclass says how many
classes and crops there are and makes the crops in `pretext_inputs`. Cross-entropy is the loss;
`pretext_accuracy` is logged beside it.

Evaluation (`features`): the backbone on the whole image, at block `method.feature_block`
(1-based; -1 = the last, the backbone's pooled output). RotNet found an intermediate block best
(Gidaris et al. 2018, Table 1: the second of four); for a ViT, block k is the CLS token (or
mean patch token, per `model.pool`) after block k through the final LayerNorm, for a ResNet the
global average of stage k's output.
"""

from __future__ import annotations

import abc
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssl_jax.config_lib import ConfigError
from ssl_jax.methods import base
from ssl_jax.models import heads, registry, resnet, vit


def add_classifier_config(m: ml_collections.ConfigDict, *, head_layers: int,
                          head_hidden_dim: int, feature_block: int = -1) -> None:
  """The keys every pretext classifier reads."""
  m.head_layers = head_layers          # 1: a linear classifier; 2+: MLP (hidden BN + ReLU).
  m.head_hidden_dim = head_hidden_dim
  m.feature_block = feature_block      # Block whose features are evaluated; -1 = the last.


class PretextHead(nn.Module):
  """Concatenated crop features [B, crops * D] -> pretext logits [B, num_classes]."""
  num_classes: int
  num_layers: int
  hidden_dim: int

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    return heads.MLPHead(num_layers=self.num_layers, hidden_dim=self.hidden_dim,
                         out_dim=self.num_classes, hidden_batch_norm=True,
                         output_norm="none", name="mlp")(features.astype(jnp.float32), train)


@dataclasses.dataclass(frozen=True)
class PretextClassifier(base.Method):
  """Backbone on every crop, head on each example's concatenated crop features."""

  def __post_init__(self):
    m = self.config.method
    if m.head_layers < 1:
      raise ConfigError(f"method.head_layers must be >= 1 (1 = linear), got {m.head_layers}.")
    blocks = self.num_blocks
    if m.feature_block != -1 and not 1 <= m.feature_block <= blocks:
      raise ConfigError(f"method.feature_block must be -1 (the last) or in [1, {blocks}] for "
                        f"{self.config.model.name}, got {m.feature_block}.")

  # What a subclass defines.

  @property
  @abc.abstractmethod
  def num_pretext_classes(self) -> int:
    """Size of the classifier's output."""

  @property
  @abc.abstractmethod
  def crops_per_example(self) -> int:
    """Crops whose features are concatenated for one label."""

  @property
  @abc.abstractmethod
  def crop_size(self) -> int:
    """Side of the crops the backbone sees in training."""

  @abc.abstractmethod
  def pretext_inputs(self, rng: jax.Array, images: jax.Array,
                     state) -> tuple[jax.Array, jax.Array]:
    """uint8 canvas [B, H, W, C] -> (crops [N * crops_per_example, s, s, C] float, grouped by
    example, and labels [N] int32)."""

  def extra_state(self) -> dict:
    """Non-trainable arrays a subclass keeps with the run (e.g. the permutation set)."""
    return {}

  # Modules.

  @property
  def encoder(self) -> nn.Module:
    return registry.build_encoder(self.config.model)

  @property
  def head(self) -> PretextHead:
    m = self.config.method
    return PretextHead(num_classes=self.num_pretext_classes, num_layers=m.head_layers,
                       hidden_dim=m.head_hidden_dim)

  @property
  def num_blocks(self) -> int:
    encoder = self.encoder
    if isinstance(encoder, resnet.ResNet):
      return len(resnet.RESNET_DEPTHS[encoder.depth][0])
    return encoder.depth

  def _block_module_name(self, block: int) -> str:
    encoder = self.encoder
    if isinstance(encoder, resnet.ResNet):
      return f"layer{block}_{resnet.RESNET_DEPTHS[encoder.depth][0][block - 1] - 1}"
    return f"blocks_{block - 1}"

  # The Method contract.

  def init(self, rng, batch):
    del batch
    encoder_rng, head_rng = jax.random.split(rng)
    # At the evaluation size: a ViT's learned position table is made for the largest grid it
    # sees and resampled for the training crops.
    size = max(self.eval_image_size, self.crop_size)
    variables = self.encoder.init(encoder_rng, jnp.zeros((1, size, size, 3)), train=False)
    width = self.encoder.feature_dim * self.crops_per_example
    head_variables = self.head.init(head_rng, jnp.zeros((2, width)), train=False)
    params = {"encoder": variables["params"], "head": head_variables["params"]}
    batch_stats = {"head": head_variables.get("batch_stats", {})}
    if "batch_stats" in variables:
      batch_stats["encoder"] = variables["batch_stats"]
    return params, {"batch_stats": batch_stats, **self.extra_state()}

  def loss(self, params, state, batch, rng, step):
    del step
    view_rng, drop_rng = jax.random.split(rng)
    crops, labels = self.pretext_inputs(view_rng, batch["image"], state)
    stats = state["batch_stats"]
    variables = {"params": params["encoder"]}
    if "encoder" in stats:
      variables["batch_stats"] = stats["encoder"]
    out, encoder_updates = self.encoder.apply(variables, crops, train=True,
                                              mutable=["batch_stats"],
                                              rngs={"dropout": drop_rng})
    features = out["pooled"].astype(jnp.float32).reshape(labels.shape[0], -1)
    logits, head_updates = self.head.apply(
        {"params": params["head"], "batch_stats": stats["head"]}, features, train=True,
        mutable=["batch_stats"])
    cross_entropy = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    new_stats = {"head": head_updates["batch_stats"]}
    if "encoder" in stats:
      new_stats["encoder"] = encoder_updates["batch_stats"]
    metrics = {"cross_entropy": cross_entropy, "pretext_accuracy": accuracy}
    return cross_entropy, (metrics, {**state, "batch_stats": new_stats})

  def features(self, params, state, images):
    """Block `method.feature_block` of the backbone on the whole (evaluation-view) image."""
    block = self.config.method.feature_block
    inputs = self.eval_inputs(images)
    if block == -1 or block == self.num_blocks:
      return self.encoder.apply(self._encoder_variables(params, state), inputs,
                                train=False)["pooled"].astype(jnp.float32)
    return self.block_features(params, state, inputs, block)

  def block_features(self, params, state, inputs, block: int):
    """[B, width of block] summary of block `block` (1-based) on preprocessed `inputs`."""
    name = self._block_module_name(block)
    _, captured = self.encoder.apply(
        self._encoder_variables(params, state), inputs, train=False, mutable=["intermediates"],
        capture_intermediates=lambda module, method: method == "__call__" and module.name == name)
    x = captured["intermediates"][name]["__call__"][0]
    if isinstance(self.encoder, resnet.ResNet):
      return jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
    normed = nn.LayerNorm(epsilon=vit.LAYER_NORM_EPSILON, dtype=x.dtype).apply(
        {"params": params["encoder"]["norm"]}, x)
    pooled = normed[:, 0] if self.encoder.pool == "cls" else jnp.mean(normed[:, 1:], axis=1)
    return pooled.astype(jnp.float32)

  def _encoder_variables(self, params, state):
    variables = {"params": params["encoder"]}
    if "encoder" in state["batch_stats"]:
      variables["batch_stats"] = state["batch_stats"]["encoder"]
    return variables
