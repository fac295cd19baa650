"""Method registry: `method.name` in the config -> a Method class.

Modules are imported on first use, so a run pays only for the method it trains.
"""

from __future__ import annotations

import importlib

import ml_collections

from ssl_jax import config_lib
from ssl_jax.config_lib import ConfigError
from ssl_jax.methods import base

_METHODS: dict[str, str] = {
    "mae": "ssl_jax.methods.mae:MAE",
    "perceptual_mae": "ssl_jax.methods.perceptual_mae:PerceptualMAE",
    "simclr": "ssl_jax.methods.simclr:SimCLR",
    "moco_v2": "ssl_jax.methods.moco:MoCoV2",
    "moco_v3": "ssl_jax.methods.moco:MoCoV3",
    "byol": "ssl_jax.methods.byol:BYOL",
    "simsiam": "ssl_jax.methods.byol:SimSiam",
    "swav": "ssl_jax.methods.swav:SwAV",
    "dino": "ssl_jax.methods.dino:DINO",
    "lejepa": "ssl_jax.methods.lejepa:LeJEPA",
    "supervised": "ssl_jax.methods.supervised:Supervised",
    "rotation": "ssl_jax.methods.rotation:Rotation",
    "jigsaw": "ssl_jax.methods.jigsaw:Jigsaw",
    "context": "ssl_jax.methods.context:Context",
    "colorization": "ssl_jax.methods.colorization:Colorization",
    "inpainting": "ssl_jax.methods.inpainting:Inpainting",
    "paws": "ssl_jax.methods.paws:PAWS",
    "pseudo_label": "ssl_jax.methods.pseudo_label:PseudoLabel",
    "mean_teacher": "ssl_jax.methods.mean_teacher:MeanTeacher",
    "fixmatch": "ssl_jax.methods.fixmatch:FixMatch",
    "distill": "ssl_jax.methods.distill:Distill",
    "noisy_student": "ssl_jax.methods.noisy_student:NoisyStudent",
}


# Each method's `method.*` defaults: every key a config may set for it (checked by
# `config_lib.validate`, so a misspelt key in a config file is an error).
_DEFAULT_CONFIGS: dict[str, str] = {
    "mae": "ssl_jax.methods.mae:default_method_config",
    "perceptual_mae": "ssl_jax.methods.perceptual_mae:default_method_config",
    "simclr": "ssl_jax.methods.simclr:default_method_config",
    "moco_v2": "ssl_jax.methods.moco:default_moco_v2_config",
    "moco_v3": "ssl_jax.methods.moco:default_moco_v3_config",
    "byol": "ssl_jax.methods.byol:default_byol_config",
    "simsiam": "ssl_jax.methods.byol:default_simsiam_config",
    "swav": "ssl_jax.methods.swav:default_method_config",
    "dino": "ssl_jax.methods.dino:default_method_config",
    "lejepa": "ssl_jax.methods.lejepa:default_method_config",
    "paws": "ssl_jax.methods.paws:default_method_config",
    "supervised": "ssl_jax.methods.supervised:default_method_config",
    "rotation": "ssl_jax.methods.rotation:default_method_config",
    "jigsaw": "ssl_jax.methods.jigsaw:default_method_config",
    "context": "ssl_jax.methods.context:default_method_config",
    "colorization": "ssl_jax.methods.colorization:default_method_config",
    "inpainting": "ssl_jax.methods.inpainting:default_method_config",
    "pseudo_label": "ssl_jax.methods.pseudo_label:default_method_config",
    "mean_teacher": "ssl_jax.methods.mean_teacher:default_method_config",
    "fixmatch": "ssl_jax.methods.fixmatch:default_method_config",
    "distill": "ssl_jax.methods.distill:default_method_config",
    "noisy_student": "ssl_jax.methods.noisy_student:default_method_config",
}


def default_method_config(name: str) -> ml_collections.ConfigDict | None:
  """The `method` section method `name` starts from: its keys are all the valid ones.

  None for a method registered without declared defaults (a plug-in or a test's toy method):
  its keys go unchecked. An unknown name raises ValueError.
  """
  if name not in _DEFAULT_CONFIGS:
    method_class(name)  # Raises for an unknown name.
    return None
  module_name, function_name = _DEFAULT_CONFIGS[name].split(":")
  return getattr(importlib.import_module(module_name), function_name)()


def method_class(name: str) -> type[base.Method]:
  if name not in _METHODS:
    raise ConfigError(f"Unknown method.name {name!r}; available: {sorted(_METHODS)}.")
  module_name, class_name = _METHODS[name].split(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name == module_name:
      raise ConfigError(f"method.name {name!r} is registered but {module_name} is not "
                        "installed in this checkout.") from e
    raise
  return getattr(module, class_name)


def build_method(config: ml_collections.ConfigDict, *, total_steps: int = 1,
                 steps_per_epoch: int = 1) -> base.Method:
  config_lib.check_method_values(config)  # Also where the config skipped `validate`.
  return method_class(config.method.name).from_config(
      config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
