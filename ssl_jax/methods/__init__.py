"""Method registry: `method.name` in the config -> a Method class.

Modules are imported on first use, so a run pays only for the method it trains.
"""

from __future__ import annotations

import importlib

import ml_collections

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
}


def method_class(name: str) -> type[base.Method]:
  if name not in _METHODS:
    raise ValueError(f"Unknown method.name {name!r}; available: {sorted(_METHODS)}.")
  module_name, class_name = _METHODS[name].split(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name == module_name:
      raise ValueError(f"method.name {name!r} is registered but {module_name} is not "
                       "installed in this checkout.") from e
    raise
  return getattr(module, class_name)


def build_method(config: ml_collections.ConfigDict, *, total_steps: int = 1,
                 steps_per_epoch: int = 1) -> base.Method:
  return method_class(config.method.name).from_config(
      config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
