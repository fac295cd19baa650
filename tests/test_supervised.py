"""The supervised method: learning, init_from, frozen backbone, layer decay, features, subsets."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import config_lib, optim, runs, subtrees, train
from ssl_jax.data import sources, subsets
from ssl_jax.methods import build_method
from ssl_jax.models import vit

REPO = pathlib.Path(__file__).resolve().parents[1]


def load(spec, **overrides):
  config = config_lib.load_config(f"{REPO}/{spec}")
  config.lock()
  config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
  return config


def sample_batch(size=8):
  images = np.random.default_rng(0).integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
  return {"image": images, "label": np.arange(size, dtype=np.int32) % 10}


def init(method, seed=0):
  return jax.jit(method.init)(jax.random.PRNGKey(seed), sample_batch())


def random_like(tree, seed=0):
  """Random float32 arrays shaped like a (possibly abstract) tree: params without compiling."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), tree)


def abstract_init(method):
  return jax.eval_shape(method.init, jax.random.PRNGKey(0), sample_batch())


def mae_params(**overrides):
  """Params shaped like the MAE smoke model's (values random: only the loading is tested)."""
  method = build_method(load("configs/mae.py:smoke", **overrides))
  return random_like(abstract_init(method)[0])


def test_smoke_run_learns_the_labels(tmp_path):
  train.train_and_evaluate(load("configs/supervised.py:smoke"), str(tmp_path))
  records = runs.read_metrics(tmp_path)
  train_records = [r for r in records if "train/cross_entropy" in r]
  assert train_records[-1]["train/cross_entropy"] < 0.9 * train_records[0]["train/cross_entropy"]
  assert train_records[-1]["train/accuracy"] > 0.25  # 10 classes: chance is 0.1
  knn = [r["eval/knn_top1"] for r in records if "eval/knn_top1" in r]
  assert knn[-1] > 0.3, knn
  exported = np.load(tmp_path / "export" / "params.npz")
  assert "head/kernel" in exported.files and "encoder/blocks_0/attn/qkv/kernel" in exported.files


def test_init_from_takes_the_mae_encoder_of_an_export(tmp_path):
  params = mae_params()
  ckpt_lib.export_params(params, tmp_path / "mae_run" / "export")
  for init_from in (tmp_path / "mae_run", tmp_path / "mae_run" / "export"):
    config = load("configs/supervised.py:smoke,finetune_mae", **{"method.init_from": init_from})
    method = build_method(config)
    loaded, state = init(method)
    assert state == {}
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded["encoder"]),
                 params["encoder"])
    assert loaded["head"]["kernel"].shape == (64, 10)
    assert loaded["fc_norm"]["scale"].shape == (64,)
    assert "encoder" in method.pretrained.origin


def test_init_from_finds_a_nested_backbone_in_a_checkpoint(tmp_path):
  encoder = mae_params()["encoder"]
  shifted = jax.tree.map(lambda x: x + 1.0, encoder)
  train_state = {"step": np.int32(3), "opt_state": {},
                 "params": {"student": {"backbone": encoder, "head": {"w": np.ones((64, 8))}}},
                 "method_state": {"teacher": {"backbone": shifted}}}
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "run"))
  checkpointer.save(3, train_state, None, force=True)
  checkpointer.close()
  config = load("configs/supervised.py:smoke,finetune_mae",
                **{"method.init_from": tmp_path / "run"})
  loaded, _ = init(build_method(config))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded["encoder"]), encoder)


def test_backbone_search_prefers_named_non_ema_subtrees_and_explains_mismatches():
  expected = {"a": {"kernel": np.zeros((2, 3))}, "b": np.zeros(3)}
  tree = {"momentum_encoder": expected, "encoder": expected, "other": expected,
          "head": {"w": np.zeros(4)}}
  path, _ = subtrees.find_backbone_subtree(tree, expected)
  assert path == ("encoder",)
  path, _ = subtrees.find_backbone_subtree(tree, expected, subtree="other")
  assert path == ("other",)
  with pytest.raises(ValueError, match="init_subtree='missing' is not a subtree"):
    subtrees.find_backbone_subtree(tree, expected, subtree="missing")
  wrong = {"encoder": {"a": {"kernel": np.zeros((2, 4))}, "c": np.zeros(1)}}
  with pytest.raises(ValueError) as error:
    subtrees.find_backbone_subtree(wrong, expected)
  message = str(error.value)
  assert "'encoder'" in message and "a/kernel: (2, 4) vs (2, 3)" in message
  assert "missing in the checkpoint: b (3,)" in message and "not in this backbone: c" in message
  with pytest.raises(ValueError, match="No subtree"):
    subtrees.find_backbone_subtree({"x": {"y": np.zeros(1)}}, expected)


def test_init_from_mismatch_and_bad_path_are_clear_errors(tmp_path):
  ckpt_lib.export_params(mae_params(**{"model.hidden_size": 32}), tmp_path / "narrow" / "export")
  config = load("configs/supervised.py:smoke,finetune_mae",
                **{"method.init_from": tmp_path / "narrow"})
  with pytest.raises(ValueError, match=r"blocks_0/attn/qkv/kernel: \(32, 96\) vs \(64, 192\)"):
    init(build_method(config))
  # The smoke preset alone learns its position embedding; MAE's are fixed sin-cos.
  ckpt_lib.export_params(mae_params(), tmp_path / "mae" / "export")
  config = load("configs/supervised.py:smoke", **{"method.init_from": tmp_path / "mae"})
  with pytest.raises(ValueError, match="missing in the checkpoint: pos_embed"):
    init(build_method(config))
  config = load("configs/supervised.py:smoke", **{"method.init_from": tmp_path / "nowhere"})
  with pytest.raises(runs.RunError, match="does not exist"):
    init(build_method(config))


def test_layerwise_decay_scales_each_blocks_update():
  config = load("configs/supervised.py:smoke", **{
      "optim.layer_decay": 0.5, "optim.name": "sgd", "optim.momentum": 0.0,
      "optim.weight_decay": 0.0, "optim.lr": 1.0, "optim.lr_scaling": "none",
      "optim.schedule": "constant", "optim.warmup_steps": 0})
  method = build_method(config)
  params = random_like(abstract_init(method)[0])
  tx, _ = optim.build_optimizer(config, params, total_steps=10, steps_per_epoch=10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Depth 2: layers 0 (embeddings), 1-2 (blocks), 3 (final norm, head); multiplier 0.5^(3 - l).
  expected = {"patch_embed": 0.125, "pos_embed": 0.125, "cls_token": 0.125, "blocks_0": 0.25,
              "blocks_1": 0.5, "norm": 1.0}
  for name, multiplier in expected.items():
    for leaf in jax.tree.leaves(updates["encoder"][name]):
      np.testing.assert_allclose(leaf, -multiplier)
  np.testing.assert_allclose(updates["head"]["kernel"], -1.0)


def test_frozen_backbone_trains_only_the_head():
  config = load("configs/supervised.py:smoke,linear_mae")
  method = build_method(config)
  params, state = init(method)
  batch = sample_batch()
  grad_fn = jax.jit(jax.grad(method.loss, has_aux=True))
  grads, (metrics, new_state) = grad_fn(params, state, batch, jax.random.PRNGKey(1), 0)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["encoder"]))
  assert float(jnp.abs(grads["head"]["kernel"]).max()) > 0.0
  assert {"cross_entropy", "accuracy"} <= set(metrics)
  # BatchNorm without affine: no params, running statistics move toward the batch's.
  assert set(params) == {"encoder", "head"}
  assert float(jnp.abs(new_state["batch_stats"]["head_norm"]["mean"]).max()) > 0.0
  config.optim.schedule, config.optim.warmup_steps = "constant", 0  # A non-zero lr at step 0.
  tx, _ = optim.build_optimizer(config, params, total_steps=10, steps_per_epoch=10)
  opt_state = tx.init(params)
  updates, _ = tx.update(grads, opt_state, params)
  assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates["encoder"]))
  assert float(jnp.abs(updates["head"]["kernel"]).max()) > 0.0
  head_size = sum(x.size for x in jax.tree.leaves(params["head"]))
  assert sum(x.size for x in jax.tree.leaves(opt_state)) <= 2 * head_size + 8


def test_last_blocks_cls_features_are_the_normed_cls_tokens_of_each_block():
  config = load("configs/supervised.py:smoke,linear_dino")
  assert config.method.num_last_blocks == 2
  method = build_method(config)
  params, state = init(method)
  images = method.eval_inputs(sample_batch(4)["image"])
  features, _ = method._encode(params, state, images, train=False)
  assert features.shape == (4, 128)
  encoder = params["encoder"]
  full = method.encoder.apply({"params": encoder}, images)
  # The last block's normed CLS is the encoder's own CLS output.
  np.testing.assert_allclose(features[:, 64:], full["cls"], rtol=1e-5, atol=1e-5)
  # A one-block ViT with the same weights and final norm gives the first block's normed CLS.
  one_block = vit.VisionTransformer(patch_size=4, hidden_size=64, depth=1, num_heads=4)
  first = one_block.apply({"params": {k: v for k, v in encoder.items() if k != "blocks_1"}},
                          images)
  np.testing.assert_allclose(features[:, :64], first["cls"], rtol=1e-5, atol=1e-5)


def test_finetune_recipe_loss_with_randaugment_mixup_and_drop_path():
  config = load("configs/supervised.py:smoke,finetune_mae")
  assert config.model.drop_path_rate == 0.1 and config.method.randaugment_layers == 2
  config.method.randaugment_layers = 1  # Compiles in half the time; two layers are the same op.
  method = build_method(config)
  params, state = init(method)
  loss_fn = jax.jit(jax.value_and_grad(method.loss, has_aux=True))
  (loss, (metrics, _)), grads = loss_fn(params, state, sample_batch(), jax.random.PRNGKey(2), 0)
  # The head starts at std 2e-5: near-uniform predictions cost log(10) whatever the soft
  # (smoothed, mixed) targets are.
  assert float(loss) == pytest.approx(math.log(10), abs=1e-3)
  assert float(metrics["cross_entropy"]) == float(loss)
  assert float(jnp.abs(grads["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]).max()) > 0
  logits = jax.jit(method.logits)(params, state, sample_batch()["image"])
  assert logits.shape == (8, 10)


def test_bad_method_settings_are_rejected():
  with pytest.raises(ValueError, match="method.feature"):
    build_method(load("configs/supervised.py:smoke", **{"method.feature": "cls"}))
  with pytest.raises(ValueError, match="freeze_backbone trains only the head"):
    build_method(load("configs/supervised.py:smoke,linear_mae", **{"optim.layer_decay": 0.7}))
  with pytest.raises(ValueError, match="defined for ViT"):
    build_method(load("configs/supervised.py:smoke", **{"model.name": "resnet18",
                                                        "optim.layer_decay": 0.7}))


def test_presets_combine_in_a_fixed_order():
  a = load("configs/supervised.py:cifar10,finetune_mae")
  b = load("configs/supervised.py:finetune_mae,cifar10")
  assert config_lib.to_json(a) == config_lib.to_json(b)
  imagenet = load("configs/supervised.py:linear_mae,vit_b16,imagenet")
  assert (imagenet.batch_size, imagenet.epochs, imagenet.optim.name) == (16384, 90, "lars")
  large = load("configs/supervised.py:finetune_mae,vit_l16,imagenet")
  assert (large.optim.layer_decay, large.model.drop_path_rate, large.epochs) == (0.75, 0.2, 50)
  semi = load("configs/supervised.py:semi_1pct,digits")
  assert semi.data.train_subset == "fraction:0.01" and semi.batch_size == 16
  with pytest.raises(ValueError, match="one dataset"):
    load("configs/supervised.py:digits,cifar10")


def test_label_subsets_are_balanced_nested_and_deterministic():
  source = sources.get_source("digits", "train", image_size=8)
  labels = subsets.source_labels(source)
  ten_percent = subsets.apply_subset(source, "fraction:0.1", seed=0)
  one_percent = subsets.apply_subset(source, "fraction:0.01", seed=0)
  per_class = subsets.apply_subset(source, "per_class:5", seed=3)
  assert subsets.apply_subset(source, "", seed=0) is source
  counts = np.bincount(labels[per_class.indices], minlength=10)
  np.testing.assert_array_equal(counts, 5)
  assert set(one_percent.indices) <= set(ten_percent.indices)
  class_sizes = np.bincount(labels, minlength=10)
  assert len(one_percent) == sum(max(1, int(0.01 * n + 0.5)) for n in class_sizes)
  assert len(ten_percent) == sum(int(0.1 * n + 0.5) for n in class_sizes)
  np.testing.assert_array_equal(
      ten_percent.indices, subsets.apply_subset(source, "fraction:0.1", seed=0).indices)
  assert not np.array_equal(
      ten_percent.indices, subsets.apply_subset(source, "fraction:0.1", seed=1).indices)
  record = ten_percent[0]
  np.testing.assert_array_equal(record["image"], source[int(ten_percent.indices[0])]["image"])
  assert ten_percent.num_classes == 10 and "fraction:0.1, seed=0" in repr(ten_percent)
  with pytest.raises(ValueError, match="Bad data.train_subset"):
    subsets.apply_subset(source, "percent:10", seed=0)
  unlabelled = sources.ArraySource(np.zeros((4, 8, 8, 3), np.uint8), None, image_size=8,
                                   num_classes=None, description="unlabelled")
  with pytest.raises(ValueError, match="unlabelled records"):
    subsets.apply_subset(unlabelled, "per_class:1", seed=0)
