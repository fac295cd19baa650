"""Supervised training of a backbone + linear head: from scratch, fine-tuning, linear probing.

One method covers the papers' downstream protocols, so they run in the same loop, shardings,
checkpoints and logs as pretraining:

* from scratch (the supervised baseline; DeiT's recipe on ImageNet, Touvron et al. 2021);
* fine-tuning (`method.init_from`): MAE's recipe (He et al. 2022, App. A.2; facebookresearch/mae
  `main_finetune.py`): AdamW, layer-wise lr decay, drop path, mixup / cutmix, label smoothing,
  RandAugment, mean-pooled patch tokens through a fresh LayerNorm (`fc_norm`);
* linear probing (`method.freeze_backbone`): the backbone runs in inference mode under
  `stop_gradient` and the optimizer holds state for the head only. MAE's recipe
  (`main_linprobe.py`): CLS token -> BatchNorm without affine (eps 1e-6) -> Linear, LARS;
  DINO's (`eval_linear.py`): CLS tokens of the last 4 blocks (each through the final
  LayerNorm) concatenated -> Linear, SGD.

Params are {'encoder': backbone, 'head': Linear, ['fc_norm': LayerNorm]}; the head is named like
timm's so exported fine-tuned weights keep timm names, and layer-wise lr decay puts it in the
top layer. Non-trainable state holds BatchNorm statistics (ResNet backbones, the probe's
BatchNorm) under {'batch_stats': {'encoder': ..., 'head_norm': ...}}.

`init_from` reads the params of any ssl_jax run (a workdir's latest checkpoint, or exported
params) and takes the subtree whose names and shapes equal this backbone's: `encoder` for MAE, a
student/online backbone for the joint-embedding methods (`method.init_subtree` names one
explicitly; `ssl_jax.subtrees`). A mismatch is an error that lists the differing paths.
`init_from=timm:FILE` reads a timm `VisionTransformer` / `ResNet` safetensors file instead
(`ssl_jax/interop/timm.py`).

`init_head_layers=k` fine-tunes "from a middle layer of the projection head" (SimCLR v2, Chen et
al. 2020b, Sec. 2; google-research/simclr tf2 `ft_proj_selector`): the first k [Linear -> BN ->
ReLU] layers of the pretrained run's projector (the `projector` beside its backbone) are kept
between the backbone and the classifier, as params['projector'] with their BatchNorm statistics
in state['batch_stats']['projector'], and fine-tuned with the backbone.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ssl_jax import runs, subtrees
from ssl_jax.config_lib import ConfigError
from ssl_jax.data import augment, mixing, randaugment
from ssl_jax.interop import timm as timm_interop
from ssl_jax.methods import base
from ssl_jax.models import heads, registry, vit

FEATURES = ("pooled", "last_blocks_cls", "global_pool")
PROJECTOR = "projector"  # The kept projection-head layers, in params and batch_stats.


def default_method_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "supervised"
  m.num_classes = 10
  m.init_from = ""              # Workdir or export dir of an ssl_jax run, or timm:FILE.safetensors
                                # (ssl_jax.export --format timm, or public timm weights); "" = random.
  m.init_subtree = ""           # '/'-path of the backbone in those params; "" = found by shape.
  # SimCLR v2: keep the first k hidden layers of the pretrained projection head (k = 1 of its 3
  # layers, "from the middle layer"); 0 = the classifier sits on the backbone.
  m.init_head_layers = 0
  m.init_head_hidden_dim = 0    # Their width: the pretrained run's method.proj_hidden_dim.
  # Linear probe: only the head trains (configs/supervised.py freezes the optimizer group
  # `backbone` with it).
  m.freeze_backbone = False
  # Head input: 'pooled' (the backbone's pooled output: model.pool for ViTs), 'last_blocks_cls'
  # (DINO: CLS of the last `num_last_blocks` blocks, each through the final norm, concatenated,
  # + mean patch token of the last one if `avgpool_patchtokens`), 'global_pool' (MAE
  # fine-tuning: mean of the last block's patch tokens -> fresh LayerNorm 'fc_norm').
  m.feature = "pooled"
  m.num_last_blocks = 4
  m.avgpool_patchtokens = False
  m.head_batch_norm = False     # MAE linear probe: BatchNorm without affine before the head.
  m.head_init_std = 0.01        # Normal init of the head's kernel (MAE fine-tune: 2e-5).
  m.label_smoothing = 0.0
  m.mixup_alpha = 0.0           # 0 disables; MAE fine-tune: 0.8.
  m.cutmix_alpha = 0.0          # 0 disables; MAE fine-tune: 1.0.
  m.mix_prob = 1.0
  m.mix_switch_prob = 0.5
  m.randaugment_layers = 0      # 0 disables; MAE fine-tune: 2 ops, magnitude 9, std 0.5.
  m.randaugment_magnitude = 9.0
  m.randaugment_magnitude_std = 0.5
  m.randaugment_prob = 0.5
  m.view = augment.view_config(crop_scale=(0.08, 1.0))
  return m


class ClassifierHead(nn.Module):
  """[fc_norm LayerNorm] -> [BatchNorm without affine] -> Linear, on [B, D] features."""
  num_classes: int
  fc_norm: bool = False
  batch_norm: bool = False
  init_std: float = 0.01

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    x = features.astype(jnp.float32)
    if self.fc_norm:
      x = nn.LayerNorm(epsilon=vit.LAYER_NORM_EPSILON, name="fc_norm")(x)
    if self.batch_norm:
      # torch BatchNorm1d(affine=False, eps=1e-6), momentum 0.1 (Flax: 0.9).
      x = nn.BatchNorm(use_running_average=not train, use_bias=False, use_scale=False,
                       momentum=0.9, epsilon=1e-6, name="head_norm")(x)
    # timm's trunc_normal_(std) truncates at +-2 absolute, which never binds at these stds.
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(self.init_std),
                    bias_init=nn.initializers.zeros, name="head")(x)


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A backbone's variables taken from another run, as host arrays."""
  params: Any
  batch_stats: Any | None
  origin: str
  # The first `init_head_layers` layers of the run's projector (None when none are kept).
  projector_params: Any | None = None
  projector_batch_stats: Any | None = None


def _cast_like(tree: Any, like: Any) -> Any:
  return jax.tree.map(lambda x, s: np.asarray(x, dtype=s.dtype), tree, like)


@dataclasses.dataclass(frozen=True)
class Supervised(base.Method):
  """Backbone + linear head trained with (soft-target) cross-entropy on the batch labels."""

  def __post_init__(self):
    m = self.config.method
    if m.feature not in FEATURES:
      raise ConfigError(f"method.feature must be one of {FEATURES}, got {m.feature!r}.")
    if m.num_classes < 2:
      raise ConfigError(f"method.num_classes must be >= 2, got {m.num_classes}; set it to the "
                        "dataset's class count (10 for digits and CIFAR-10, 1000 for ImageNet).")
    layer_decay = self.config.optim.layer_decay
    if not 0.0 < layer_decay <= 1.0:
      raise ConfigError(f"optim.layer_decay must be in (0, 1], got {layer_decay}.")
    if m.freeze_backbone and (layer_decay < 1.0 or self.config.model.drop_path_rate > 0):
      raise ConfigError("method.freeze_backbone trains only the head: set optim.layer_decay=1.0 "
                        "and model.drop_path_rate=0.0 (they act on the backbone).")
    if not self.is_vit and (m.feature != "pooled" or layer_decay < 1.0):
      raise ConfigError(f"method.feature={m.feature!r} and optim.layer_decay are defined for "
                        f"ViT backbones; {self.config.model.name} supports feature='pooled' and "
                        "layer_decay=1.0.")
    if m.feature == "last_blocks_cls" and not 1 <= m.num_last_blocks <= self.encoder.depth:
      raise ConfigError(f"method.num_last_blocks must be in [1, {self.encoder.depth}], got "
                        f"{m.num_last_blocks}.")
    if m.init_head_layers < 0:
      raise ConfigError(f"method.init_head_layers must be >= 0, got {m.init_head_layers}.")
    if m.init_head_layers:
      if m.init_head_hidden_dim <= 0:
        raise ConfigError("method.init_head_layers keeps projection-head layers: set "
                          "method.init_head_hidden_dim to their width (the pretrained run's "
                          "method.proj_hidden_dim).")
      if m.feature != "pooled" or m.freeze_backbone or m.init_from.startswith(timm_interop.PREFIX):
        raise ConfigError("method.init_head_layers fine-tunes an ssl_jax run from its projection "
                          "head: it needs feature='pooled', freeze_backbone=False and an "
                          "ssl_jax workdir (not timm weights) as method.init_from.")

  # The modules.

  @property
  def is_vit(self) -> bool:
    return self.config.model.name.startswith("vit_")

  @property
  def encoder(self) -> nn.Module:
    return registry.build_encoder(self.config.model)

  @property
  def head(self) -> ClassifierHead:
    m = self.config.method
    return ClassifierHead(num_classes=m.num_classes, fc_norm=m.feature == "global_pool",
                          batch_norm=m.head_batch_norm, init_std=m.head_init_std)

  @property
  def projector(self) -> heads.MLPTrunk | None:
    """The kept projection-head layers (SimCLR's: Linear without bias -> BN -> ReLU)."""
    m = self.config.method
    if not m.init_head_layers:
      return None
    return heads.MLPTrunk(num_layers=m.init_head_layers, hidden_dim=m.init_head_hidden_dim,
                          hidden_batch_norm=True, dtype=base.compute_dtype(self.config.model))

  @property
  def feature_dim(self) -> int:
    m = self.config.method
    if m.init_head_layers:
      return m.init_head_hidden_dim
    width = self.encoder.feature_dim
    if m.feature == "last_blocks_cls":
      return width * (m.num_last_blocks + int(m.avgpool_patchtokens))
    return width

  def _sample_images(self) -> jax.Array:
    return jnp.zeros((1, self.eval_image_size, self.eval_image_size, 3), jnp.float32)

  # Pretrained weights.

  @functools.cached_property
  def pretrained(self) -> Pretrained | None:
    """The backbone of `method.init_from`, read once per method object (None if unset)."""
    m = self.config.method
    if not m.init_from:
      return None
    expected = jax.eval_shape(
        lambda: self.encoder.init(jax.random.PRNGKey(0), self._sample_images()))
    if m.init_from.startswith(timm_interop.PREFIX):
      path = m.init_from[len(timm_interop.PREFIX):]
      variables = timm_interop.from_state_dict(timm_interop.load_state_dict(path), self.encoder,
                                               expected, origin=path)
      logging.info("init_from: backbone of timm weights %s", path)
      return Pretrained(params=variables["params"], batch_stats=variables.get("batch_stats"),
                        origin=f"timm weights {path}")
    run = runs.load_variables(m.init_from)
    path, params = subtrees.find_backbone_subtree(run.params, expected["params"],
                                                  subtree=m.init_subtree)
    batch_stats = None
    if "batch_stats" in expected:
      if run.method_state is None:
        raise ConfigError(f"{self.config.model.name} needs BatchNorm statistics, which exported "
                          f"params do not carry; point method.init_from at the workdir of the run "
                          f"(its checkpoints/), not at {run.origin}.")
      _, batch_stats = subtrees.find_backbone_subtree(
          run.method_state, expected["batch_stats"], what="method state (BatchNorm statistics)")
      batch_stats = _cast_like(batch_stats, expected["batch_stats"])
    logging.info("init_from: backbone %s of %s", "/".join(path) or "<root>", run.origin)
    projector_params = projector_stats = None
    if self.projector is not None:
      projector_params, projector_stats = self._pretrained_projector(run, path)
    return Pretrained(params=_cast_like(params, expected["params"]), batch_stats=batch_stats,
                      origin=f"{'/'.join(path) or '<root>'} of {run.origin}",
                      projector_params=projector_params, projector_batch_stats=projector_stats)

  def _pretrained_projector(self, run: runs.RunVariables, backbone_path: tuple[str, ...]):
    """The first `init_head_layers` layers of the `projector` beside the run's backbone, and
    their BatchNorm statistics, checked against this trunk's names and shapes."""
    expected = jax.eval_shape(lambda: self.projector.init(
        jax.random.PRNGKey(0), jnp.zeros((2, self.encoder.feature_dim)), train=False))
    parent = backbone_path[:-1]
    where = "/".join(parent + (PROJECTOR,))
    taken = []
    for collection, tree in (("params", run.params), ("batch_stats", run.method_state)):
      if collection not in expected:
        continue
      if collection == "batch_stats":
        if tree is None or "batch_stats" not in tree:
          raise ConfigError(f"method.init_head_layers needs the projector's BatchNorm "
                            f"statistics, which {run.origin} does not hold; point "
                            "method.init_from at the pretraining run's workdir.")
        tree = tree["batch_stats"]
      node = subtrees.get_path(tree, parent + (PROJECTOR,))
      if node is None:
        raise ConfigError(f"method.init_head_layers={self.config.method.init_head_layers}: "
                          f"{run.origin} has no {collection} {where!r} beside its backbone "
                          f"{'/'.join(backbone_path)!r}; pretrain with a projection head "
                          "(e.g. configs/simclr.py) or set init_head_layers=0.")
      kept = {name: node[name] for name in expected[collection] if name in node}
      found, wanted = subtrees.flat_shapes(kept), subtrees.flat_shapes(expected[collection])
      if found != wanted:
        raise ConfigError(f"The first {self.config.method.init_head_layers} layer(s) of "
                          f"{collection} {where!r} of {run.origin} do not match "
                          f"method.init_head_layers / init_head_hidden_dim:\n"
                          f"{subtrees.describe_mismatch(found, wanted)}")
      taken.append(_cast_like(kept, expected[collection]))
    logging.info("init_from: %d projection-head layer(s) %s of %s",
                 self.config.method.init_head_layers, where, run.origin)
    return taken[0], (taken[1] if len(taken) > 1 else None)

  def init(self, rng, batch):
    del batch
    encoder_rng, head_rng = jax.random.split(rng)
    variables = self.encoder.init({"params": encoder_rng, "dropout": encoder_rng},
                                  self._sample_images(), train=False)
    encoder_params = variables["params"]
    encoder_stats = variables.get("batch_stats")
    projector_params = projector_stats = None
    if self.projector is not None:
      projector_variables = self.projector.init(
          jax.random.fold_in(head_rng, 1), jnp.zeros((2, self.encoder.feature_dim)), train=False)
      projector_params = projector_variables["params"]
      projector_stats = projector_variables.get("batch_stats")
    pretrained = self.pretrained
    if pretrained is not None:
      # A host callback rather than constants: jit would bake constant weights into the
      # program (slow to compile for large backbones); the callback streams them in at run time.
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                              (encoder_params, encoder_stats, projector_params, projector_stats))
      encoder_params, encoder_stats, projector_params, projector_stats = jax.pure_callback(
          lambda: (pretrained.params, pretrained.batch_stats, pretrained.projector_params,
                   pretrained.projector_batch_stats), abstract)
    head_variables = self.head.init(head_rng, jnp.zeros((1, self.feature_dim)), train=False)
    params = {"encoder": encoder_params, **head_variables["params"]}
    if projector_params is not None:
      params[PROJECTOR] = projector_params
    batch_stats = {}
    if encoder_stats is not None:
      batch_stats["encoder"] = encoder_stats
    if projector_stats is not None:
      batch_stats[PROJECTOR] = projector_stats
    if "batch_stats" in head_variables:
      batch_stats.update(head_variables["batch_stats"])
    return params, ({"batch_stats": batch_stats} if batch_stats else {})

  # Forward passes.

  def _encode(self, params, state, images, *, train: bool, rng=None):
    """Backbone features [B, feature_dim] (per `method.feature`) and updated encoder stats."""
    m = self.config.method
    stats = state.get("batch_stats", {}).get("encoder")
    variables = {"params": params["encoder"]}
    mutable = []
    if stats is not None:
      variables["batch_stats"] = stats
      if train:
        mutable.append("batch_stats")
    capture = False
    if m.feature != "pooled":
      mutable.append("intermediates")
      capture = lambda module, method_name: (isinstance(module, vit.Block)
                                             and method_name == "__call__")
    out = self.encoder.apply(variables, images, train=train, mutable=mutable or False,
                             capture_intermediates=capture,
                             rngs={"dropout": rng} if rng is not None else None)
    out, updated = out if mutable else (out, {})
    if m.feature == "pooled":
      features = out["pooled"]
    else:
      depth = self.encoder.depth
      blocks = [updated["intermediates"][f"blocks_{i}"]["__call__"][0] for i in range(depth)]
      if m.feature == "global_pool":
        features = jnp.mean(blocks[-1][:, 1:], axis=1, dtype=jnp.float32)
      else:
        final_norm = nn.LayerNorm(epsilon=vit.LAYER_NORM_EPSILON, dtype=blocks[-1].dtype)
        normed = [final_norm.apply({"params": params["encoder"]["norm"]}, x)
                  for x in blocks[depth - m.num_last_blocks:]]
        parts = [x[:, 0] for x in normed]
        if m.avgpool_patchtokens:
          parts.append(jnp.mean(normed[-1][:, 1:], axis=1))
        features = jnp.concatenate(parts, axis=-1)
    new_stats = updated.get("batch_stats", stats)
    return features.astype(jnp.float32), new_stats

  def _project(self, params, state, features, *, train: bool):
    """The kept projection-head layers on the backbone features (identity when none), and
    their updated BatchNorm statistics (None when none)."""
    if self.projector is None:
      return features, None
    variables = {"params": params[PROJECTOR]}
    stats = state.get("batch_stats", {}).get(PROJECTOR)
    if stats is not None:
      variables["batch_stats"] = stats
    if train and stats is not None:
      out, updated = self.projector.apply(variables, features, train=True,
                                          mutable=["batch_stats"])
      return out.astype(jnp.float32), updated["batch_stats"]
    return self.projector.apply(variables, features, train=train).astype(jnp.float32), stats

  def _classify(self, params, state, features, *, train: bool):
    head_params = {k: v for k, v in params.items() if k not in ("encoder", PROJECTOR)}
    variables = {"params": head_params}
    stats = {k: v for k, v in state.get("batch_stats", {}).items()
             if k not in ("encoder", PROJECTOR)}
    if stats:
      variables["batch_stats"] = stats
    if stats and train:
      logits, updated = self.head.apply(variables, features, train=True, mutable=["batch_stats"])
      return logits, dict(updated["batch_stats"])
    return self.head.apply(variables, features, train=train), stats

  def _train_images(self, rng, images):
    """Crop/flip (and colour) views of `method.view`, then RandAugment if enabled."""
    m = self.config.method
    view = m.view
    if m.randaugment_layers == 0:
      return augment.make_views(rng, images, view)
    crop_rng, augment_rng = jax.random.split(rng)
    unit_view = view.copy_and_resolve_references()
    unit_view.mean, unit_view.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    unit = augment.make_views(crop_rng, images, unit_view)
    unit = randaugment.rand_augment_batch(
        augment_rng, unit, num_layers=m.randaugment_layers, magnitude=m.randaugment_magnitude,
        magnitude_std=m.randaugment_magnitude_std, prob=m.randaugment_prob,
        fill=tuple(view.mean))
    return augment.normalize(unit, tuple(view.mean), tuple(view.std))

  def loss(self, params, state, batch, rng, step):
    del step
    m = self.config.method
    view_rng, mix_rng, drop_rng = jax.random.split(rng, 3)
    images = self._train_images(view_rng, batch["image"])
    labels = batch["label"]
    targets = mixing.smooth_one_hot(labels, m.num_classes, m.label_smoothing)
    if m.mixup_alpha > 0 or m.cutmix_alpha > 0:
      images, targets = mixing.mixup_cutmix(
          mix_rng, images, targets, mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha,
          switch_prob=m.mix_switch_prob, prob=m.mix_prob)
    frozen = m.freeze_backbone
    features, encoder_stats = self._encode(params, state, images, train=not frozen,
                                           rng=None if frozen else drop_rng)
    if frozen:
      features = jax.lax.stop_gradient(features)
    features, projector_stats = self._project(params, state, features, train=True)
    logits, head_stats = self._classify(params, state, features, train=True)
    loss = jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))
    # Against the unmixed labels: under mixup/cutmix, agreement with each image's own class.
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    new_state = state
    if state:
      new_stats = dict(head_stats)
      if encoder_stats is not None:
        new_stats["encoder"] = encoder_stats
      if projector_stats is not None:
        new_stats[PROJECTOR] = projector_stats
      new_state = {"batch_stats": new_stats}
    return loss, ({"cross_entropy": loss, "accuracy": accuracy}, new_state)

  def features(self, params, state, images):
    """The backbone's pooled features (what k-NN and the fast probes evaluate)."""
    variables = {"params": params["encoder"]}
    stats = state.get("batch_stats", {}).get("encoder") if state else None
    if stats is not None:
      variables["batch_stats"] = stats
    out = self.encoder.apply(variables, self.eval_inputs(images), train=False)
    return out["pooled"].astype(jnp.float32)

  def logits(self, params, state, images):
    """[B, num_classes] class scores of the trained head, in inference mode."""
    features, _ = self._encode(params, state, self.eval_inputs(images), train=False)
    features, _ = self._project(params, state, features, train=False)
    logits, _ = self._classify(params, state, features, train=False)
    return logits
