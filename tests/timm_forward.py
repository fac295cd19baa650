"""Runs timm on ssl_jax's timm export; a helper of tests/test_interop_timm.py, run by an
interpreter that has torch and timm (ssl_jax's own venv need not):

    python tests/timm_forward.py EXPORT_DIR INPUTS.npy OUTPUTS.npy

Loads EXPORT_DIR (model.safetensors + config.json) three ways, each strict: `local-dir:`, the
architecture + model_args + pretrained_cfg_overlay(file=...) form, and load_state_dict(strict=True)
into a fresh model; checks that the three agree and writes the model's output on INPUTS
([B, C, H, W] float32) to OUTPUTS.
"""
import json
import pathlib
import sys

import numpy as np
import safetensors.torch
import timm
import torch


def main(export_dir, inputs_path, outputs_path):
  export_dir = pathlib.Path(export_dir)
  config = json.loads((export_dir / "config.json").read_text())
  weights = export_dir / "model.safetensors"
  from_dir = timm.create_model(f"local-dir:{export_dir}", pretrained=True)
  from_overlay = timm.create_model(
      config["architecture"], pretrained=True, **config["model_args"],
      pretrained_cfg_overlay=dict(config["pretrained_cfg"], file=str(weights)))
  fresh = timm.create_model(config["architecture"], pretrained=False, **config["model_args"])
  fresh.load_state_dict(safetensors.torch.load_file(weights), strict=True)
  inputs = torch.from_numpy(np.load(inputs_path))
  with torch.no_grad():
    outputs = [model.eval()(inputs).numpy() for model in (from_dir, from_overlay, fresh)]
  for other in outputs[1:]:
    np.testing.assert_array_equal(outputs[0], other)
  np.save(outputs_path, outputs[0])


if __name__ == "__main__":
  main(*sys.argv[1:])
