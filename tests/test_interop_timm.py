"""timm weights out and in: names and shapes equal timm's own, exact round trips, clear errors,
and (when an interpreter with torch + timm is available) timm's forward equals ours."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, export
from ssl_jax.interop import timm as timm_interop
from ssl_jax.methods import build_method
from ssl_jax.models import registry

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = json.loads((REPO / "tests/fixtures/timm_keys.json").read_text())["models"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Fixture name -> (our model config, classifier classes (0: none), fc_norm).
OURS = {
    "vit_s16_cls": (dict(name="vit_s16", pool="cls"), 0, False),
    "vit_b16_cls": (dict(name="vit_b16", pool="cls"), 0, False),
    "vit_b16_avg": (dict(name="vit_b16", pool="mean"), 0, False),
    "vit_b16_avg_fc_norm_head": (dict(name="vit_b16", pool="cls"), 1000, True),
    "vit_b16_avg_no_cls": (dict(name="vit_b16", pool="mean", class_token=False), 0, False),
    "resnet50": (dict(name="resnet50", stem="imagenet"), 0, False),
}


def _zeros_like(tree):
  """Zero arrays of the tree's shapes that take no memory (broadcast views)."""
  return jax.tree.map(lambda x: np.broadcast_to(np.zeros((), x.dtype), x.shape), tree)


def _random_like(tree, seed):
  """Random float32 values shaped like a (possibly abstract) tree, at the scales of a trained
  network (kernels ~ 1/sqrt(fan_in), norm scales and variances near 1) so that activations
  stay O(1) through every layer, and no value is the trivial init (zero bias, unit scale)."""
  rng = np.random.default_rng(seed)

  def draw(path, x):
    noise = rng.normal(size=x.shape)
    leaf = path[-1].key
    if leaf == "kernel":
      value = noise / np.sqrt(np.prod(x.shape[:-1]))
    elif leaf in ("scale", "var"):
      value = 1.0 + 0.1 * np.abs(noise)
    else:
      value = 0.1 * noise
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, tree)


def _abstract_variables(encoder, image_size):
  return jax.eval_shape(lambda: encoder.init(
      jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3), jnp.float32)))


@pytest.mark.parametrize("name", sorted(OURS))
def test_names_and_shapes_equal_timms_own_state_dict(name):
  model, num_classes, fc_norm = OURS[name]
  model_config = ml_collections.ConfigDict(model)
  encoder = registry.build_encoder(model_config)
  variables = _zeros_like(_abstract_variables(encoder, 224))
  width = encoder.feature_dim
  head = (_zeros_like({"kernel": jax.ShapeDtypeStruct((width, num_classes), np.float32),
                       "bias": jax.ShapeDtypeStruct((num_classes,), np.float32)})
          if num_classes else None)
  norm = (_zeros_like({"scale": jax.ShapeDtypeStruct((width,), np.float32),
                       "bias": jax.ShapeDtypeStruct((width,), np.float32)}) if fc_norm else None)
  state_dict = timm_interop.to_state_dict(encoder, variables, image_size=224, head=head,
                                          fc_norm=norm)
  ours = {key: [list(value.shape), str(value.dtype)] for key, value in state_dict.items()}
  assert ours == FIXTURE[name]["state_dict"]
  config = timm_interop.timm_config(model_config, encoder, variables["params"], image_size=224,
                                    mean=MEAN, std=STD, num_classes=num_classes, fc_norm=fc_norm)
  assert config["architecture"] == FIXTURE[name]["architecture"]
  for key, value in FIXTURE[name]["kwargs"].items():
    assert config["model_args"][key] == value, key


@pytest.mark.parametrize("model", [
    dict(name="vit_ti4", hidden_size=32, depth=2, num_heads=2, pos_embed="learn", pool="mean"),
    dict(name="vit_ti4", hidden_size=32, depth=2, num_heads=2, pos_embed="sincos"),
    dict(name="vit_ti4", hidden_size=32, depth=2, num_heads=2, pool="mean", class_token=False),
    dict(name="vit_ti4", hidden_size=32, depth=2, num_heads=2, pos_embed="sincos", pool="mean",
         class_token=False),
    dict(name="resnet18", stem="imagenet"),
])
def test_safetensors_round_trip_is_exact(tmp_path, model):
  encoder = registry.build_encoder(ml_collections.ConfigDict(model))
  abstract = _abstract_variables(encoder, 16)
  variables = _random_like(abstract, seed=1)
  state_dict = timm_interop.to_state_dict(encoder, variables, image_size=16)
  config = timm_interop.timm_config(ml_collections.ConfigDict(model), encoder,
                                    variables["params"], image_size=16, mean=MEAN, std=STD)
  paths = timm_interop.save(tmp_path, state_dict, config)
  assert json.loads(pathlib.Path(paths["config"]).read_text())["pretrained_cfg"]["input_size"] \
      == [3, 16, 16]
  restored = timm_interop.from_state_dict(timm_interop.load_state_dict(tmp_path), encoder,
                                          abstract, origin=str(tmp_path))
  assert jax.tree.structure(restored) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, restored, variables)


def test_import_names_every_missing_unexpected_and_reshaped_key(tmp_path):
  model = ml_collections.ConfigDict(dict(name="vit_ti4", hidden_size=32, depth=2, num_heads=2))
  encoder = registry.build_encoder(model)
  abstract = _abstract_variables(encoder, 16)
  state_dict = timm_interop.to_state_dict(encoder, _random_like(abstract, 0), image_size=16)
  state_dict = dict(state_dict)
  del state_dict["blocks.1.mlp.fc2.bias"], state_dict["norm.weight"]
  state_dict["blocks.2.norm1.weight"] = np.ones(32, np.float32)
  state_dict["cls_token"] = np.zeros((1, 1, 48), np.float32)
  state_dict["head.weight"] = np.zeros((10, 32), np.float32)   # a classifier: skipped
  with pytest.raises(ValueError) as error:
    timm_interop.from_state_dict(state_dict, encoder, abstract, origin="f.safetensors")
  message = str(error.value)
  for expected in ("missing: blocks.1.mlp.fc2.bias [32], norm.weight [32]",
                   "unexpected: blocks.2.norm1.weight [32]",
                   "shape differs (file vs backbone): cls_token [1, 1, 48] vs [1, 1, 32]"):
    assert expected in message, message
  assert "head.weight" not in message


def test_sincos_backbone_refuses_a_learned_table_and_cifar_stem_has_no_timm_layout():
  model = dict(name="vit_ti4", hidden_size=32, depth=2, num_heads=2)
  learned = registry.build_encoder(ml_collections.ConfigDict(model))
  sincos = registry.build_encoder(ml_collections.ConfigDict(dict(model, pos_embed="sincos")))
  abstract = _abstract_variables(learned, 16)
  state_dict = timm_interop.to_state_dict(learned, _random_like(abstract, 0), image_size=16)
  with pytest.raises(ValueError, match="set model.pos_embed=learn"):
    timm_interop.from_state_dict(state_dict, sincos, _abstract_variables(sincos, 16), origin="f")
  cifar = registry.build_encoder(ml_collections.ConfigDict(dict(name="resnet18", stem="cifar")))
  with pytest.raises(ValueError, match="only model.stem='imagenet'"):
    timm_interop.to_state_dict(cifar, _random_like(_abstract_variables(cifar, 16), 0),
                               image_size=16)


def test_unknown_export_format_is_a_clear_error():
  with pytest.raises(ValueError, match="orbax, npz, timm; got onnx"):
    export.parse_formats(["onnx"])


# A run written by hand (config.json + one checkpoint of random params): what the CLI reads.

RUNS = {
    "vit_cls_head": ("configs/supervised.py:smoke", {}),
    "vit_sincos_fc_norm_head": ("configs/supervised.py:smoke,finetune_mae", {}),
    "vit_avg_no_cls_head": ("configs/supervised.py:smoke", {"model.class_token": False,
                                                            "model.pool": "mean"}),
    "resnet_head": ("configs/supervised.py:smoke", {"model.name": "resnet18",
                                                    "model.stem": "imagenet"}),
}


def _make_run(workdir, spec, overrides):
  config = config_lib.load_config(f"{REPO}/{spec}")
  config.lock()
  config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
  method = build_method(config)
  batch = {"image": np.zeros((2, 32, 32, 3), np.uint8), "label": np.zeros(2, np.int32)}
  params, state = _random_like(jax.eval_shape(method.init, jax.random.PRNGKey(0), batch), 2)
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(config_lib.to_json(config))
  checkpointer = ckpt_lib.Checkpointer(str(workdir), async_save=False)
  checkpointer.save(5, {"step": np.int32(5), "params": params, "opt_state": {},
                        "method_state": state}, None, force=True)
  checkpointer.close()
  return config, method, params, state


def test_export_cli_writes_timm_and_init_from_reads_it_back(tmp_path):
  config, _, params, _ = _make_run(tmp_path / "run", *RUNS["vit_cls_head"])
  paths = export.export_checkpoint(str(tmp_path / "run"), formats=["timm"])
  assert paths["step"] == "5" and set(paths) == {"step", "safetensors", "config"}
  assert not (tmp_path / "run/export/params").exists()       # only the formats asked for
  written = json.loads(pathlib.Path(paths["config"]).read_text())
  assert written["architecture"] == "vit_tiny_patch16_224"
  assert written["model_args"] == dict(
      img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0,
      class_token=True, global_pool="token", fc_norm=False, num_classes=10)
  np.testing.assert_allclose(written["pretrained_cfg"]["mean"], config.method.view.mean,
                             rtol=1e-5)
  np.testing.assert_allclose(written["pretrained_cfg"]["std"], config.method.view.std,
                             rtol=1e-5)
  state_dict = timm_interop.load_state_dict(paths["safetensors"])
  np.testing.assert_array_equal(state_dict["head.weight"], params["head"]["kernel"].T)

  finetune = config.copy_and_resolve_references()
  finetune.method.init_from = f"timm:{paths['safetensors']}"
  pretrained = build_method(finetune).pretrained
  jax.tree.map(np.testing.assert_array_equal, pretrained.params, params["encoder"])


def test_export_of_a_vit_without_class_token_is_timms_avg_pool_with_fc_norm(tmp_path):
  config, _, params, _ = _make_run(tmp_path / "run", *RUNS["vit_avg_no_cls_head"])
  paths = export.export_checkpoint(str(tmp_path / "run"), formats=["timm"])
  args = json.loads(pathlib.Path(paths["config"]).read_text())["model_args"]
  assert (args["class_token"], args["global_pool"], args["fc_norm"]) == (False, "avg", True)
  assert args["img_size"] == 32  # pos_embed [1, 64, D]: no CLS slot
  state_dict = timm_interop.load_state_dict(paths["safetensors"])
  assert "cls_token" not in state_dict and "norm.weight" not in state_dict
  np.testing.assert_array_equal(state_dict["fc_norm.weight"],
                                params["encoder"]["fc_norm"]["scale"])
  finetune = config.copy_and_resolve_references()
  finetune.method.init_from = f"timm:{paths['safetensors']}"
  jax.tree.map(np.testing.assert_array_equal, build_method(finetune).pretrained.params,
               params["encoder"])


def _timm_python():
  """An interpreter with torch and timm: $TIMM_PYTHON, else this one; None if neither has."""
  python = os.environ.get("TIMM_PYTHON", sys.executable)
  if shutil.which(python) is None and not pathlib.Path(python).exists():
    return None
  probe = subprocess.run([python, "-c", "import timm, torch, safetensors"], capture_output=True)
  return python if probe.returncode == 0 else None


@pytest.mark.parametrize("run", sorted(RUNS))
def test_timm_forward_on_exported_weights_equals_ours(tmp_path, run):
  python = _timm_python()
  if python is None:
    pytest.skip("needs torch + timm (set TIMM_PYTHON to an interpreter that has them)")
  config, method, params, state = _make_run(tmp_path / "run", *RUNS[run])
  paths = export.export_checkpoint(str(tmp_path / "run"), formats=["timm"])
  images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  ours = np.asarray(method.logits(params, state, images))
  inputs = np.asarray(method.eval_inputs(images), np.float32).transpose(0, 3, 1, 2)
  np.save(tmp_path / "inputs.npy", inputs)
  subprocess.run([python, str(REPO / "tests/timm_forward.py"),
                  str(pathlib.Path(paths["config"]).parent), str(tmp_path / "inputs.npy"),
                  str(tmp_path / "outputs.npy")], check=True)
  theirs = np.load(tmp_path / "outputs.npy")
  assert theirs.shape == ours.shape == (4, config.method.num_classes)
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
