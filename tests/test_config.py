"""Config loading, overrides and validation: bad keys fail early with a useful message."""

import pathlib

import pytest

from ssl_jax import config_lib, train

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "common.py")


def test_every_config_has_the_shared_top_level_keys_and_a_smoke_preset():
  assert CONFIGS, "no configs found"
  for path in CONFIGS:
    config = config_lib.load_config(f"{path}:smoke")
    config_lib.validate(config)
    for key in config_lib.REQUIRED_TOP_LEVEL:
      assert key in config, (path.name, key)
    assert config.method.name, path.name


def test_unknown_override_names_the_closest_keys():
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  config.lock()
  with pytest.raises(config_lib.ConfigError, match="optim.lr") as e:
    config_lib.apply_overrides(config, ["optim.lrr=1e-3"])
  assert "Unknown config key 'optim.lrr'" in str(e.value)
  with pytest.raises(config_lib.ConfigError, match="batch_size"):
    config_lib.apply_overrides(config, ["--config.batchsize=8"])
  with pytest.raises(config_lib.ConfigError, match="section"):
    config_lib.apply_overrides(config, ["optim=3"])


def test_overrides_keep_types():
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  config.lock()
  config_lib.apply_overrides(config, ["--config.optim.lr=1", "batch_size=32",
                                      "method.norm_pix_loss=false", "data.source=npz:/x.npz",
                                      "method.view.crop_scale=(0.5, 1.0)"])
  assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
  assert config.batch_size == 32
  assert config.method.norm_pix_loss is False
  assert config.data.source == "npz:/x.npz"
  assert tuple(config.method.view.crop_scale) == (0.5, 1.0)
  with pytest.raises(config_lib.ConfigError, match="parse"):
    config_lib.apply_overrides(config, ["batch_size=lots"])


def test_validation_errors():
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  config.optim.grad_accum_steps = 3
  with pytest.raises(config_lib.ConfigError, match="grad_accum_steps"):
    config_lib.validate(config)
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  config.total_steps, config.epochs = 0, 0
  with pytest.raises(config_lib.ConfigError, match="total_steps"):
    config_lib.validate(config)


def test_unknown_preset_and_missing_file():
  # A ConfigError (one line on the command line), naming the presets the config knows.
  with pytest.raises(config_lib.ConfigError, match=r"mae.py:smok: Unknown preset.*'smoke'"):
    config_lib.load_config(f"{REPO}/configs/mae.py:smok")
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    config_lib.load_config("configs/nope.py:smoke")


def test_a_config_file_that_raises_is_a_config_error_naming_its_line(tmp_path):
  (tmp_path / "broken.py").write_text("def get_config(arg='x'):\n  return undefined_name\n")
  with pytest.raises(config_lib.ConfigError,
                     match=r"broken.py:a: the config file raised NameError: .*undefined_name.* "
                           r"\(line 2: return undefined_name\)"):
    config_lib.load_config(f"{tmp_path}/broken.py:a")
  (tmp_path / "syntax.py").write_text("def get_config(arg):\n  return (\n")
  with pytest.raises(config_lib.ConfigError, match=r"raised SyntaxError: .*\(line \d\)"):
    config_lib.load_config(f"{tmp_path}/syntax.py")


def test_command_line_splits_overrides():
  rest, overrides = train.split_config_overrides(
      ["prog", "--config", "configs/mae.py:smoke", "--config.optim.lr=2", "--workdir=/w"])
  assert rest == ["prog", "--config", "configs/mae.py:smoke", "--workdir=/w"]
  assert overrides == ["--config.optim.lr=2"]
  assert train._config_spec(rest) == "configs/mae.py:smoke"


def test_config_round_trips_through_json():
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  again = config_lib.from_json(config_lib.to_json(config))
  assert again.optim.lr == config.optim.lr
  assert again.model.name == config.model.name


def test_a_misspelt_key_written_in_a_config_file_is_an_error():
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  config.optim.warmup_step = 10  # typo for warmup_steps, as a config file might write it
  with pytest.raises(config_lib.ConfigError, match="optim.warmup_steps"):
    config_lib.validate(config)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_preset_the_docs_name_resolves_and_validates(path):
  presets = ["smoke", "cifar10", "imagenet"]
  if path.stem != "supervised":
    presets.append("cifar10,cpu")
  for preset in presets:
    config = config_lib.load_config(f"{path}:{preset}")
    config_lib.validate(config)


def test_cpu_budget_is_one_encoder_batch_and_step_count_for_every_joint_embedding_method():
  """docs/results.md compares methods at `cifar10,cpu`: only objectives, views and heads differ."""
  shared = None
  for name in ("simclr", "moco_v2", "moco_v3", "byol", "simsiam", "swav", "dino"):
    config = config_lib.load_config(f"{REPO}/configs/{name}.py:cifar10,cpu")
    budget = (config.model.name, config.model.hidden_size, config.model.depth,
              config.model.num_heads, config.batch_size, config.total_steps, config.data.source)
    assert shared in (None, budget), (name, budget, shared)
    shared = budget
    # One optimiser for all but SimSiam, which partially collapses under AdamW at this budget
    # and keeps its paper's SGD (configs/simsiam.py).
    expected_optimizer = ("sgd", 0.1) if name == "simsiam" else ("adamw", 1e-3)
    assert (config.optim.name, config.optim.lr) == expected_optimizer, name
  mae = config_lib.load_config(f"{REPO}/configs/mae.py:cifar10,cpu")
  pmae = config_lib.load_config(f"{REPO}/configs/perceptual_mae.py:cifar10,cpu")
  for key in ("model", "optim", "data"):
    # The generator's optimizer: every param outside Perceptual MAE's discriminator group.
    mae_keys, pmae_keys = mae[key].to_dict(), pmae[key].to_dict()
    if key == "optim":
      assert (mae_keys.pop("groups"), set(pmae_keys.pop("groups"))) == ({}, {"discriminator"})
    assert mae_keys == pmae_keys, key
  assert (mae.batch_size, mae.total_steps) == (pmae.batch_size, pmae.total_steps)


def test_cpu_budget_is_one_schedule_for_every_method():
  """The label-budget and pretext tables compare methods at `cifar10,cpu` too: one cosine
  schedule from 0 (no FixMatch cos(7 pi k / 16 K), no constant lr, no LARS warm-up start)."""
  names = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                 if p.stem not in ("common", "supervised"))
  for name in names:
    try:
      config = config_lib.load_config(f"{REPO}/configs/{name}.py:cifar10,cpu")
    except config_lib.ConfigError:
      continue  # No cpu preset.
    optim = config.optim
    assert (optim.schedule, optim.warmup_start_lr, optim.warmup_steps, optim.warmup_epochs,
            optim.end_lr, optim.lr_scaling) == ("cosine", 0.0, 20, 0.0, 0.0, "none"), name


def test_perceptual_mae_cpu_discriminator_decays_with_the_generator():
  """With a constant lr the discriminator won once the generator's cosine reached 0 (results)."""
  config = config_lib.load_config(f"{REPO}/configs/perceptual_mae.py:cifar10,cpu,dcgan")
  disc = config.optim.groups.discriminator
  assert (disc.schedule, disc.end_lr) == (config.optim.schedule, 0.0) == ("cosine", 0.0)
  assert disc.warmup_steps == config.optim.warmup_steps


def _leaf_keys(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from _leaf_keys(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def test_every_config_key_is_read_by_the_code():
  """A key that nothing reads is a setting that silently does nothing.

  Every key of every documented preset must appear in the library as an attribute (`.key`) or a
  string (`"key"`), the only ways the code reads a ConfigDict. (A static check: it catches names
  read nowhere, not a name read only for another section.)
  """
  import re
  library = "\n".join(p.read_text() for p in (REPO / "ssl_jax").rglob("*.py"))
  unread = set()
  for path in CONFIGS:
    presets = ["smoke", "cifar10", "imagenet"] + ([] if path.stem == "supervised" else
                                                   ["cifar10,cpu"])
    for preset in presets:
      for dotted in _leaf_keys(config_lib.load_config(f"{path}:{preset}")):
        name = dotted.rsplit(".", 1)[-1]
        if not re.search(rf"\.{re.escape(name)}\b|[\"']{re.escape(name)}[\"']", library):
          unread.add(f"{path.stem}: {dotted}")
  assert not unread, sorted(unread)
