"""Backbone names -> Flax modules.

Names: 'vit_{ti,s,b,l,h}{4,8,14,16}' (e.g. 'vit_s16' = ViT-S/16), 'resnet18', 'resnet50',
'wrn_<depth>_<width>' (Wide ResNets, e.g. 'wrn_28_2' = FixMatch's WRN-28-2).
"""
import logging
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.models import resnet
from ssl_jax.models import vit
from ssl_jax.models import wide_resnet

# Widths, depths and heads of Touvron et al. (DeiT: ti, s) and Dosovitskiy et al. (b, l, h).
VIT_VARIANTS = {
    "ti": dict(hidden_size=192, depth=12, num_heads=3),
    "s": dict(hidden_size=384, depth=12, num_heads=6),
    "b": dict(hidden_size=768, depth=12, num_heads=12),
    "l": dict(hidden_size=1024, depth=24, num_heads=16),
    "h": dict(hidden_size=1280, depth=32, num_heads=16),
}
VIT_PATCH_SIZES = (4, 8, 14, 16)
RESNET_NAMES = {"resnet18": 18, "resnet50": 50}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

_VIT_NAME = re.compile(r"vit_(ti|s|b|l|h)(\d+)")
_WIDE_RESNET_NAME = re.compile(r"wrn_(\d+)_(\d+)")
# FixMatch's CIFAR-10 and CIFAR-100 backbones; any wrn_<6n+4>_<width> is accepted.
WIDE_RESNET_EXAMPLES = ("wrn_28_2", "wrn_28_8")


def valid_names() -> list[str]:
  """Every accepted backbone name."""
  vits = [f"vit_{variant}{patch}" for variant in VIT_VARIANTS for patch in VIT_PATCH_SIZES]
  return vits + sorted(RESNET_NAMES) + list(WIDE_RESNET_EXAMPLES)


def is_valid_name(name: str) -> bool:
  """A name `build_encoder` accepts: one of `valid_names()` or any wrn_<6n+4>_<width>."""
  wide = _WIDE_RESNET_NAME.fullmatch(name)
  if wide is not None:
    depth, width = int(wide.group(1)), int(wide.group(2))
    return depth >= 10 and (depth - 4) % 6 == 0 and width >= 1
  return name in valid_names()


def _unknown_name_error(name: str) -> ValueError:
  return ValueError(f"Unknown model name {name!r}; valid names are: {', '.join(valid_names())}.")


def parse_vit_name(name: str) -> tuple[dict[str, int], int]:
  """'vit_s16' -> ({'hidden_size': 384, 'depth': 12, 'num_heads': 6}, 16)."""
  match = _VIT_NAME.fullmatch(name)
  if match is None or int(match.group(2)) not in VIT_PATCH_SIZES:
    raise _unknown_name_error(name)
  return dict(VIT_VARIANTS[match.group(1)]), int(match.group(2))


def _dtype(model_config) -> Any:
  name = model_config.get("dtype", "float32")
  if name not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}.")
  return DTYPES[name]


def vit_speed_options(model_config) -> dict[str, Any]:
  """The ViT speed levers of `model_config` (same params and math, other speed): attention_impl
  ('plain'), remat ('none'), scan_blocks (False), token_gather ('take'), as `VisionTransformer`
  / `vit.run_blocks` keyword arguments. Values are checked by `config_lib.validate` and again
  by the modules."""
  attention_impl = model_config.get("attention_impl", "plain")
  if attention_impl == "cudnn" and _dtype(model_config) != jnp.bfloat16:
    # cuDNN's fused attention has bf16/fp16 kernels only; jax would fail inside the trace.
    logging.warning("model.attention_impl='cudnn' needs model.dtype=bfloat16; with %s using "
                    "'xla' (the same attention, fused by XLA).",
                    model_config.get("dtype", "float32"))
    attention_impl = "xla"
  if attention_impl == "cudnn" and jax.default_backend() != "gpu":
    # Same math as 'xla': a GPU run's checkpoint still evaluates and exports on CPU or TPU.
    logging.warning("model.attention_impl='cudnn' needs an NVIDIA GPU; on %s using 'xla' "
                    "(the same attention, fused by XLA).", jax.default_backend())
    attention_impl = "xla"
  if attention_impl == "splash" and jax.default_backend() != "tpu":
    # Pallas would run the TPU kernel in its (slow) interpreter; same math as 'xla'.
    logging.warning("model.attention_impl='splash' needs a TPU; on %s using 'xla' "
                    "(the same attention, fused by XLA).", jax.default_backend())
    attention_impl = "xla"
  return dict(attention_impl=attention_impl, remat=model_config.get("remat", "none"),
              scan_blocks=bool(model_config.get("scan_blocks", False)),
              token_gather=model_config.get("token_gather", "take"))


def build_encoder(model_config) -> nn.Module:
  """Builds the backbone named by `model_config.name`; params are always float32.

  Keys read (others ignored, missing ones take the default): name; dtype ('float32');
  ViT: pool ('cls'), class_token (True), pos_embed ('learn'), drop_path_rate (0.0), hidden_size /
  depth / num_heads (0: the variant's own), attention_impl / remat / scan_blocks /
  token_gather (`vit_speed_options`); ResNet: stem ('imagenet'); Wide ResNet:
  batch_norm_momentum (0.999, FixMatch's; short runs need less, or the running statistics stay
  at their init), drop_path_rate (0.0).
  """
  name = model_config.get("name", None)
  if name is None:
    raise ValueError(f"model config has no 'name'; valid names are: {', '.join(valid_names())}.")
  dtype = _dtype(model_config)
  if name in RESNET_NAMES:
    stem = model_config.get("stem", "imagenet")
    if stem not in resnet.RESNET_STEMS:
      raise ValueError(f"model.stem must be one of {resnet.RESNET_STEMS}, got {stem!r}.")
    return resnet.ResNet(depth=RESNET_NAMES[name], stem=stem, dtype=dtype,
                         param_dtype=jnp.float32)
  wide = _WIDE_RESNET_NAME.fullmatch(name)
  if wide is not None:
    depth, width = int(wide.group(1)), int(wide.group(2))
    if depth < 10 or (depth - 4) % 6 or width < 1:
      raise ValueError(f"model.name={name!r}: a Wide ResNet is wrn_<depth>_<width> with depth "
                       f"6n + 4 >= 10 and width >= 1, e.g. 'wrn_28_2'.")
    momentum = float(model_config.get("batch_norm_momentum", wide_resnet.BATCH_NORM_MOMENTUM))
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f"model.batch_norm_momentum must be in [0, 1), got {momentum}.")
    drop_path_rate = float(model_config.get("drop_path_rate", 0.0))
    if not 0.0 <= drop_path_rate < 1.0:
      raise ValueError(f"model.drop_path_rate must be in [0, 1), got {drop_path_rate}.")
    return wide_resnet.WideResNet(depth=depth, width=width, batch_norm_momentum=momentum,
                                  drop_path_rate=drop_path_rate, dtype=dtype,
                                  param_dtype=jnp.float32)
  if not name.startswith("vit_"):
    raise _unknown_name_error(name)
  variant, patch_size = parse_vit_name(name)
  # A positive hidden_size/depth/num_heads overrides the named variant (small CPU models).
  for key in ("hidden_size", "depth", "num_heads"):
    if int(model_config.get(key, 0) or 0) > 0:
      variant[key] = int(model_config.get(key))
  if variant["hidden_size"] % variant["num_heads"]:
    raise ValueError(f"model.hidden_size={variant['hidden_size']} is not divisible by "
                     f"model.num_heads={variant['num_heads']}.")
  pool = model_config.get("pool", "cls")
  if pool not in ("cls", "mean"):
    raise ValueError(f"model.pool must be 'cls' or 'mean', got {pool!r}.")
  class_token = bool(model_config.get("class_token", True))
  if not class_token and pool != "mean":
    raise ValueError("model.class_token=False leaves no CLS token to pool: set "
                     "model.pool='mean' (timm's class_token=False, global_pool='avg').")
  pos_embed = model_config.get("pos_embed", "learn")
  if pos_embed not in ("learn", "sincos"):
    raise ValueError(f"model.pos_embed must be 'learn' or 'sincos', got {pos_embed!r}.")
  drop_path_rate = float(model_config.get("drop_path_rate", 0.0))
  if not 0.0 <= drop_path_rate < 1.0:
    raise ValueError(f"model.drop_path_rate must be in [0, 1), got {drop_path_rate}.")
  return vit.VisionTransformer(
      patch_size=patch_size, pos_embed=pos_embed, pool=pool, class_token=class_token,
      drop_path_rate=drop_path_rate, dtype=dtype, param_dtype=jnp.float32, **variant,
      **vit_speed_options(model_config))


def feature_dim(model_config) -> int:
  """Width of the 'pooled' features of the backbone `model_config` describes."""
  return build_encoder(model_config).feature_dim
