"""timm (PyTorch Image Models) names and layouts for ssl_jax backbones: weights out and in.

The backbones are built like timm's `VisionTransformer` and torchvision/timm `ResNet`
(ssl_jax/models/vit.py, resnet.py), so one renaming rule and one transpose per array kind move
every variable:

  Flax path (params / batch_stats)            timm state_dict key
  patch_embed/{kernel,bias}                   patch_embed.proj.{weight,bias}
  cls_token, pos_embed                        cls_token, pos_embed
  blocks_3/attn/qkv/kernel                    blocks.3.attn.qkv.weight
  stem/conv/kernel, stem/bn/*                 conv1.weight, bn1.*
  layer2_1/conv_bn3/{conv,bn}/*               layer2.1.conv3.*, layer2.1.bn3.*
  layer2_0/downsample/{conv,bn}/*             layer2.0.downsample.0.*, layer2.0.downsample.1.*
  .../scale (LayerNorm, BatchNorm)            .../weight
  batch_stats .../mean, .../var               .../running_mean, .../running_var, and
                                              .../num_batches_tracked = 0 (torch bookkeeping,
                                              read only by a BatchNorm with momentum=None)
  Dense kernel [in, out]                      Linear weight [out, in]
  Conv kernel [kh, kw, in, out] (HWIO)        Conv2d weight [out, in, kh, kw] (OIHW)

The qkv projection needs no reordering: its output is laid out (3, heads, head_dim) in both.
A ViT with fixed sine-cosine position embeddings (MAE) has no `pos_embed` param; timm's always
has one, so the export writes the fixed table (CLS row zero) there and the import checks that a
file's table is that one.

Pooling, as timm's `VisionTransformer.forward_head` does it:
* model.pool='cls' -> global_pool='token' (final norm, then the CLS token);
* model.pool='mean' -> global_pool='avg', fc_norm=False (final norm, then the mean of the patch
  tokens: our 'mean' averages the normed tokens, which is timm's order when fc_norm is off);
* a supervised run fine-tuned with method.feature='global_pool' (MAE: mean of the last block's
  patch tokens, then a LayerNorm `fc_norm`) -> global_pool='avg', fc_norm=True: timm's final
  `norm` is then the identity and has no weights, so ours is left out;
* model.class_token=False (no CLS token; pooled = fc_norm(mean of the last block's tokens)) ->
  class_token=False, global_pool='avg', fc_norm=True: no `cls_token`, a `pos_embed` without the
  CLS slot ([1, N, D]), no final `norm` (timm's is the identity) and the encoder's own
  `fc_norm` (timm `VisionTransformer.__init__`: `use_fc_norm = global_pool == 'avg'` when
  fc_norm is None, then `norm = Identity`, `fc_norm = LayerNorm`; `num_prefix_tokens = 0`).

Files: `model.safetensors` plus `config.json` in timm's Hugging Face hub layout (`architecture`,
`num_classes`, `model_args`, `pretrained_cfg`), so either of
    timm.create_model('local-dir:DIR', pretrained=True)
    timm.create_model(cfg['architecture'], pretrained=True, **cfg['model_args'],
                      pretrained_cfg_overlay=dict(cfg['pretrained_cfg'], file='DIR/model.safetensors'))
loads the weights strictly (`pretrained_cfg.num_classes` equals the model's, so timm keeps
`strict=True`; `custom_load=False` because these are native timm state dicts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import numpy as np
import safetensors.numpy
from etils import epath
from flax import traverse_util

from ssl_jax import errors
from ssl_jax.models import registry, resnet, vit

PREFIX = "timm:"                  # method.init_from=timm:PATH
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# ssl_jax ViT variant -> timm size word, and the timm architectures (timm 1.0) of that family
# that exist; `model_args` override every shape, so an unregistered patch size (our CPU ViTs use
# 4) falls back to the family's patch-16 (huge: patch-14) architecture.
_VIT_SIZES = {"ti": "tiny", "s": "small", "b": "base", "l": "large", "h": "huge"}
_TIMM_VITS = frozenset({
    "vit_tiny_patch16_224", "vit_small_patch8_224", "vit_small_patch16_224",
    "vit_base_patch8_224", "vit_base_patch16_224", "vit_large_patch14_224",
    "vit_large_patch16_224", "vit_huge_patch14_224"})
_RESNET_ARCHITECTURES = {18: "resnet18", 50: "resnet50"}

# Module renames on the '/'-joined Flax path (see the table in the module docstring).
_MODULE_RULES = tuple((re.compile(pattern), replacement) for pattern, replacement in (
    (r"^patch_embed/", "patch_embed/proj/"),
    (r"^stem/conv/", "conv1/"),
    (r"^stem/bn/", "bn1/"),
    (r"/conv_bn(\d)/conv/", r"/conv\1/"),
    (r"/conv_bn(\d)/bn/", r"/bn\1/"),
    (r"/downsample/conv/", "/downsample/0/"),
    (r"/downsample/bn/", "/downsample/1/"),
    (r"^blocks_(\d+)/", r"blocks/\1/"),
    (r"^layer(\d)_(\d+)/", r"layer\1/\2/"),
))
_LEAF_NAMES = {"params": {"kernel": "weight", "scale": "weight", "bias": "bias"},
               "batch_stats": {"mean": "running_mean", "var": "running_var"}}
# Keys of a timm file that are not backbone weights: the classifier (a new task brings its own)
# and BatchNorm's step counter.
_CLASSIFIER_KEYS = ("head.weight", "head.bias", "fc.weight", "fc.bias")
_BATCHES_TRACKED = "num_batches_tracked"


def timm_key(collection: str, path: Sequence[str]) -> str:
  """The timm state_dict key of a Flax variable ('params' or 'batch_stats', path tuple)."""
  *modules, leaf = path
  leaves = _LEAF_NAMES[collection]
  if leaf in leaves:
    leaf = leaves[leaf]
  elif collection != "params" or modules:
    raise ValueError(f"No timm name for {collection} variable {'/'.join(path)!r}.")
  name = "/".join(modules) + "/" if modules else ""
  for pattern, replacement in _MODULE_RULES:
    name = pattern.sub(replacement, name)
  return (name + leaf).replace("/", ".")


def _to_timm_layout(leaf: str, array: np.ndarray) -> np.ndarray:
  """A transposed view (`save` makes it contiguous)."""
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(3, 2, 0, 1)         # HWIO -> OIHW
  if leaf == "kernel" and array.ndim == 2:
    return array.T                             # [in, out] -> [out, in]
  return array


def _from_timm_layout(leaf: str, array: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and array.ndim == 4:
    array = array.transpose(2, 3, 1, 0)        # OIHW -> HWIO
  elif leaf == "kernel" and array.ndim == 2:
    array = array.T
  return np.ascontiguousarray(array)


def _timm_shape(leaf: str, shape: Sequence[int]) -> tuple[int, ...]:
  shape = tuple(shape)
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "kernel" and len(shape) == 2:
    return shape[::-1]
  return shape


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(_as_dict(tree))


def _as_dict(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {str(k): _as_dict(v) for k, v in tree.items()}
  return tree


def _fixed_pos_embed(encoder: vit.VisionTransformer, image_size: int) -> np.ndarray:
  if image_size % encoder.patch_size:
    raise ValueError(f"image size {image_size} is not a multiple of the patch size "
                     f"{encoder.patch_size}.")
  return vit.sincos_pos_embed_2d(encoder.hidden_size, image_size // encoder.patch_size,
                                 with_cls_token=encoder.class_token)


def _check_backbone(encoder: nn.Module) -> None:
  if isinstance(encoder, resnet.ResNet) and encoder.stem != "imagenet":
    raise ValueError(f"timm's ResNet has no {encoder.stem!r} stem (a 3x3/1 conv without "
                     "max-pool); only model.stem='imagenet' ResNets have timm weights.")
  if not isinstance(encoder, (resnet.ResNet, vit.VisionTransformer)):
    raise ValueError(f"No timm layout for {type(encoder).__name__}; ViTs and ResNets have one.")


def to_state_dict(encoder: nn.Module, variables: Mapping[str, Any], *, image_size: int,
                  head: Mapping[str, Any] | None = None,
                  fc_norm: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """timm state_dict (numpy, timm layouts) of a backbone and optionally its classifier.

  Args:
    encoder: the ssl_jax backbone module (`registry.build_encoder`).
    variables: its {'params': ..., ['batch_stats': ...]}.
    image_size: training resolution; sets the fixed position table of a sincos ViT.
    head: a Dense {'kernel', 'bias'} on the pooled features (timm's `head` / `fc`).
    fc_norm: a LayerNorm {'scale', 'bias'} on the average-pooled patch tokens (MAE
      fine-tuning); replaces the final `norm`, as timm's fc_norm=True does.
  """
  _check_backbone(encoder)
  if fc_norm is not None and isinstance(encoder, vit.VisionTransformer) and \
      not encoder.class_token:
    raise ValueError("A ViT without a class token already ends in its own fc_norm; timm has "
                     "no place for a second one on the classifier.")
  out = {}
  for collection in ("params", "batch_stats"):
    for path, value in _flat(variables.get(collection, {})).items():
      if fc_norm is not None and path[0] == "norm":
        continue
      out[timm_key(collection, path)] = _to_timm_layout(path[-1], np.asarray(value))
      if collection == "batch_stats" and path[-1] == "mean":
        prefix = timm_key(collection, path).rsplit(".", 1)[0]
        out[f"{prefix}.{_BATCHES_TRACKED}"] = np.zeros((), np.int64)
  if isinstance(encoder, vit.VisionTransformer) and encoder.pos_embed == "sincos":
    out["pos_embed"] = _fixed_pos_embed(encoder, image_size)
  extras = {"fc_norm": fc_norm, "head" if isinstance(encoder, vit.VisionTransformer) else "fc":
            head}
  for prefix, module_params in extras.items():
    for path, value in _flat(module_params or {}).items():
      out[timm_key("params", (prefix, *path))] = _to_timm_layout(path[-1], np.asarray(value))
  return out


def architecture(model_config) -> str:
  """The registered timm architecture whose defaults `model_args` start from."""
  name = model_config.name
  if name in registry.RESNET_NAMES:
    return _RESNET_ARCHITECTURES[registry.RESNET_NAMES[name]]
  size = _VIT_SIZES[re.fullmatch(r"vit_([a-z]+)\d+", name).group(1)]
  _, patch_size = registry.parse_vit_name(name)
  candidate = f"vit_{size}_patch{patch_size}_224"
  if candidate in _TIMM_VITS:
    return candidate
  return f"vit_{size}_patch14_224" if size == "huge" else f"vit_{size}_patch16_224"


def _vit_image_size(encoder: vit.VisionTransformer, params: Mapping[str, Any],
                    image_size: int) -> int:
  """The resolution the learned position table was made for (else `image_size`)."""
  if encoder.pos_embed != "learn":
    return image_size
  num_patches = np.shape(params["pos_embed"])[1] - encoder.num_prefix_tokens
  side = int(round(num_patches ** 0.5))
  if side * side != num_patches:
    raise ValueError(f"pos_embed holds {num_patches} patches, not a square grid; timm's "
                     "VisionTransformer needs a square img_size.")
  return side * encoder.patch_size


def timm_config(model_config, encoder: nn.Module, params: Mapping[str, Any], *,
                image_size: int, mean: Sequence[float], std: Sequence[float],
                num_classes: int = 0, fc_norm: bool = False) -> dict[str, Any]:
  """config.json in timm's hub layout for the weights `to_state_dict` gives.

  Args:
    model_config: the run's `config.model`.
    encoder, params: the backbone module and its params (ViT: sets img_size).
    image_size: training resolution; mean, std: the input normalisation it trained with.
    num_classes: classes of an exported classifier; 0 for a backbone (timm returns features).
    fc_norm: the classifier reads fc_norm(mean of patch tokens) (see `to_state_dict`).
  """
  _check_backbone(encoder)
  if isinstance(encoder, vit.VisionTransformer):
    image_size = _vit_image_size(encoder, params, image_size)
    global_pool = "avg" if fc_norm or encoder.pool == "mean" else "token"
    # Without a class token the encoder's own fc_norm is the pooled features' norm.
    fc_norm = fc_norm or not encoder.class_token
    model_args = dict(img_size=image_size, patch_size=encoder.patch_size,
                      embed_dim=encoder.hidden_size, depth=encoder.depth,
                      num_heads=encoder.num_heads, mlp_ratio=encoder.mlp_ratio,
                      class_token=encoder.class_token, global_pool=global_pool,
                      fc_norm=fc_norm, num_classes=num_classes)
    data = dict(classifier="head", first_conv="patch_embed.proj", fixed_input_size=True)
  else:
    if fc_norm:
      raise ValueError("fc_norm is a ViT head; a ResNet classifier reads the pooled features.")
    global_pool = "avg"
    model_args = dict(num_classes=num_classes)
    data = dict(classifier="fc", first_conv="conv1", fixed_input_size=False)
  return {
      "architecture": architecture(model_config),
      "num_classes": num_classes,
      "num_features": int(encoder.feature_dim),
      "global_pool": global_pool,
      "model_args": model_args,
      "pretrained_cfg": dict(
          data, input_size=[3, image_size, image_size], mean=[float(x) for x in mean],
          std=[float(x) for x in std], num_classes=num_classes, custom_load=False,
          interpolation="bicubic", crop_pct=1.0),
  }


def save(out_dir: str | epath.Path, state_dict: Mapping[str, np.ndarray],
         config: Mapping[str, Any]) -> dict[str, str]:
  """Writes `out_dir/model.safetensors` and `out_dir/config.json`; returns both paths."""
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  weights_path, config_path = out_dir / WEIGHTS_NAME, out_dir / CONFIG_NAME
  # safetensors.numpy writes an array's buffer as it lies in memory, whatever its strides, so
  # transposed views are made contiguous first. 'format': 'pt' is the metadata Hugging Face
  # loaders expect of PyTorch weights.
  arrays = {key: np.ascontiguousarray(value) for key, value in state_dict.items()}
  weights_path.write_bytes(safetensors.numpy.save(arrays, metadata={"format": "pt"}))
  config_path.write_text(json.dumps(config, indent=2) + "\n")
  return {"safetensors": str(weights_path), "config": str(config_path)}


class WeightsFileError(errors.UserError, ValueError):
  """A timm weights file that cannot be read (the message says which and why)."""


class WeightsFileNotFoundError(WeightsFileError, FileNotFoundError):
  """No timm weights file where one was named."""


def load_state_dict(path: str | epath.Path) -> dict[str, np.ndarray]:
  """A safetensors file (or a directory holding model.safetensors) as numpy arrays."""
  path = epath.Path(path)
  if path.is_dir():
    path = path / WEIGHTS_NAME
  if not path.exists():
    raise WeightsFileNotFoundError(
        f"{path} does not exist; pass a timm .safetensors file (or its directory), e.g. the "
        "export/timm/ of python -m ssl_jax.export --format timm.")
  try:
    return safetensors.numpy.load(path.read_bytes())
  except Exception as error:  # safetensors raises its own SafetensorError for a bad header.
    raise WeightsFileError(f"{path} is not a readable safetensors file ({error}).") from error


def from_state_dict(state_dict: Mapping[str, np.ndarray], encoder: nn.Module,
                    expected: Mapping[str, Any], *, origin: str) -> dict[str, Any]:
  """Backbone variables {'params', ['batch_stats']} from a timm state_dict.

  Args:
    state_dict: timm key -> array (`load_state_dict`).
    encoder: the backbone to initialise; expected: its variables' shapes (`jax.eval_shape` of
      its init), which fix the names and layouts read.
    origin: the file, for messages.

  The classifier (`head.*`, `fc.*`) and `num_batches_tracked` are not backbone weights and are
  skipped; every other key must be one of the backbone's with its shape.

  Raises:
    ValueError: naming every missing, unexpected and wrongly shaped key.
  """
  _check_backbone(encoder)
  wanted = {}   # timm key -> (collection, path, timm shape)
  for collection in ("params", "batch_stats"):
    for path, leaf in _flat(expected.get(collection, {})).items():
      wanted[timm_key(collection, path)] = (collection, path,
                                            _timm_shape(path[-1], np.shape(leaf)))
  fixed_pos_embed = None
  found = {key: value for key, value in state_dict.items()
           if key not in _CLASSIFIER_KEYS and not key.endswith("." + _BATCHES_TRACKED)}
  if isinstance(encoder, vit.VisionTransformer) and encoder.pos_embed == "sincos":
    fixed_pos_embed = found.pop("pos_embed", None)
  missing = sorted(set(wanted) - set(found))
  unexpected = sorted(set(found) - set(wanted))
  reshaped = sorted(k for k in set(wanted) & set(found)
                    if tuple(np.shape(found[k])) != wanted[k][2])
  if missing or unexpected or reshaped:
    lines = [f"{origin} does not hold the weights of this backbone ({type(encoder).__name__}):"]
    if missing:
      lines.append("  missing: " + ", ".join(f"{k} {list(wanted[k][2])}" for k in missing))
    if unexpected:
      lines.append("  unexpected: " + ", ".join(
          f"{k} {list(np.shape(found[k]))}" for k in unexpected))
    if reshaped:
      lines.append("  shape differs (file vs backbone): " + ", ".join(
          f"{k} {list(np.shape(found[k]))} vs {list(wanted[k][2])}" for k in reshaped))
    lines.append("Set model.* (name, hidden_size, depth, num_heads, pos_embed, pool, stem) and "
                 "the image size to the exported model's (its config.json model_args).")
    raise ValueError("\n".join(lines))
  if fixed_pos_embed is not None:
    _check_fixed_pos_embed(encoder, fixed_pos_embed, origin)
  variables: dict[str, Any] = {}
  for key, (collection, path, _) in wanted.items():
    value = _from_timm_layout(path[-1], np.asarray(found[key]))
    variables.setdefault(collection, {})[path] = value.astype(np.float32)
  return {collection: traverse_util.unflatten_dict(flat) for collection, flat in
          variables.items()}


def _check_fixed_pos_embed(encoder: vit.VisionTransformer, table: np.ndarray,
                           origin: str) -> None:
  """A sincos ViT keeps its fixed table: a file's pos_embed must be that table."""
  num_patches = table.shape[1] - encoder.num_prefix_tokens
  side = int(round(num_patches ** 0.5))
  expected = vit.sincos_pos_embed_2d(encoder.hidden_size, side,
                                     with_cls_token=encoder.class_token)
  if table.shape != expected.shape or not np.allclose(table, expected, atol=1e-6):
    raise ValueError(f"{origin} has a learned pos_embed, but this backbone uses fixed sin-cos "
                     "position embeddings; set model.pos_embed=learn to load it.")
