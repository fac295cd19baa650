"""Config loading, overriding and validation.

Every method config is built on `configs/common.py:base_config()`, so all share the same top-level
keys (`seed`, `batch_size`, `total_steps`, `epochs`, `log_every`, `eval_every`, `checkpoint_every`,
`mesh.*`, `data.*`, `model.*`, `method.*`, `optim.*`, `eval.*`). Configs are locked before
overrides are applied: a misspelt key is an error that names the closest valid keys instead of a
silently ignored setting that costs a whole run.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import pathlib
import re
import traceback
from typing import Any, Iterable

import ml_collections

from ssl_jax import errors
from ssl_jax.data import streams, subsets

REQUIRED_TOP_LEVEL = (
    "seed", "batch_size", "total_steps", "epochs", "log_every", "eval_every",
    "checkpoint_every", "mesh", "data", "model", "method", "optim", "eval")


class ConfigError(errors.UserError, ValueError):
  """A config is malformed: unknown key, bad value, or missing section."""


def _all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    keys.append(path)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(_all_keys(value, path + "."))
  return keys


def closest_keys(config: ml_collections.ConfigDict, key: str, n: int = 3) -> list[str]:
  """The valid dotted keys that look most like `key` (for 'did you mean' messages)."""
  candidates = _all_keys(config)
  close = difflib.get_close_matches(key, candidates, n=n, cutoff=0.5)
  if not close:  # Compare on the last component too: `optim.lrate` ~ `optim.lr`.
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
    close = [by_leaf[k] for k in difflib.get_close_matches(leaf, list(by_leaf), n=n, cutoff=0.5)]
  return close


def configs_dir() -> pathlib.Path | None:
  """The method configs: the clone's configs/ beside the package (a clone, `pip install -e .`),
  else the copy `pip install .` ships as `ssl_jax.configs` (pyproject.toml)."""
  package_dir = pathlib.Path(__file__).resolve().parent
  for candidate in (package_dir.parent / "configs", package_dir / "configs"):
    if (candidate / "common.py").is_file():
      return candidate
  return None


def _packaged_config(path: str) -> pathlib.Path | None:
  """`configs/X.py` of `configs_dir()`, so the README's `--config configs/mae.py:smoke` works
  from any directory."""
  parts = pathlib.PurePath(path).parts
  directory = configs_dir()
  if len(parts) < 2 or parts[0] != "configs" or directory is None:
    return None
  candidate = directory.joinpath(*parts[1:])
  return candidate if candidate.is_file() else None


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    file = _packaged_config(path) or file
  if not file.is_file():
    raise ConfigError(f"Config file {path!r} does not exist. Use e.g. "
                      "--config configs/mae.py:smoke")
  module_spec = importlib.util.spec_from_file_location(f"_ssl_jax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as error:  # pylint: disable=broad-except
    raise _config_code_error(spec, file, error) from error
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config(arg) function.")
  try:
    return module.get_config(arg) if arg else module.get_config()
  except ConfigError:
    raise
  except ValueError as error:  # e.g. configs/common.py's UnknownPresetError: a bad `:arg`.
    raise ConfigError(f"{spec}: {error}") from error
  except Exception as error:  # pylint: disable=broad-except
    raise _config_code_error(spec, file, error) from error


def _config_code_error(spec: str, file: pathlib.Path, error: Exception) -> ConfigError:
  """A config file's own bug (a NameError, a SyntaxError, ...) as one line naming its line in
  that file; `--debug` still shows the whole traceback."""
  where = ""
  if isinstance(error, SyntaxError) and error.lineno:
    where = f" (line {error.lineno})"
  for frame in reversed(traceback.extract_tb(error.__traceback__)):
    if pathlib.Path(frame.filename).resolve() == file.resolve():
      where = f" (line {frame.lineno}: {frame.line})"
      break
  return ConfigError(f"{spec}: the config file raised {type(error).__name__}: {error}{where}. "
                     "Fix the file; --debug shows the traceback.")


def _parse_value(text: str, current: Any) -> Any:
  """Parses a command-line value with the type of the value it replaces."""
  if isinstance(current, bool):
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise ConfigError(f"Expected a boolean, got {text!r}.")
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise ConfigError(f"Could not parse {text!r} as a {type(current).__name__}.") from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  return value


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies `key.path=value` overrides; unknown keys raise with the closest valid keys."""
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"Override {item!r} must look like key.path=value.")
    key, text = item.split("=", 1)
    key = key.strip()
    if key.startswith("--"):
      key = key[2:]
    if key.startswith("config."):
      key = key[len("config."):]
    parent = config
    parts = key.split(".")
    for part in parts[:-1]:
      child = parent.get(part) if isinstance(parent, ml_collections.ConfigDict) else None
      if not isinstance(child, ml_collections.ConfigDict):
        parent = None
        break
      parent = child
    if parent is None or parts[-1] not in parent:
      suggestion = closest_keys(config, key)
      hint = f" Did you mean: {', '.join(suggestion)}?" if suggestion else ""
      raise ConfigError(f"Unknown config key {key!r}.{hint}")
    current = parent[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
      raise ConfigError(f"{key!r} is a section; override one of its keys instead: "
                        f"{', '.join(sorted(current.keys()))}.")
    value = _parse_value(text, current)
    try:
      with parent.unlocked():
        parent[parts[-1]] = value
    except TypeError:  # ml_collections keeps a field's type (an int field refuses 2.5).
      raise ConfigError(f"{key} must be of type {type(current).__name__} (now {current!r}); "
                        f"got {text!r}.") from None
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the shared top-level contract and value ranges, before any work starts."""
  missing = [k for k in REQUIRED_TOP_LEVEL if k not in config]
  if missing:
    raise ConfigError(f"Config is missing top-level keys {missing}; build configs on "
                      "configs/common.py:base_config().")
  if config.batch_size <= 0:
    raise ConfigError(f"batch_size must be positive, got {config.batch_size}.")
  if config.total_steps <= 0 and (config.epochs is None or config.epochs <= 0):
    raise ConfigError("Set either total_steps > 0 or epochs > 0.")
  for key in ("log_every", "eval_every", "checkpoint_every"):
    if config[key] < 0:
      raise ConfigError(f"{key} must be >= 0 (0 disables it), got {config[key]}.")
  _check_known_keys(config)
  try:
    streams.parse_streams(config)
  except streams.StreamConfigError as e:
    raise ConfigError(str(e)) from None
  from ssl_jax import optim  # Imports this module.
  optim.check_groups(config.optim)
  from ssl_jax import profiler  # Imports this module.
  profiler.parse_window(config.get("profile_steps", ""))
  method_reference = _method_reference(config)
  if method_reference is not None:
    _check_method_keys(config, method_reference)
    _check_method_sizes(config, method_reference)
  _check_ranges(config)
  try:
    subsets.parse_spec(config.data.train_subset)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  accum = config.optim.grad_accum_steps
  if accum < 1 or config.batch_size % accum:
    raise ConfigError(f"optim.grad_accum_steps={accum} must be >= 1 and divide "
                      f"batch_size={config.batch_size}.")


def _check_known_keys(config: ml_collections.ConfigDict) -> None:
  """Keys a config file added outside `method` must exist in base_config (typos in files).

  `method.*` belongs to each method and is checked by locking at override time instead;
  `data.streams.*` is named by each config and checked by `streams.parse_streams`;
  `optim.groups.*` by `optim.check_groups`. `method.*` belongs to each method:
  `_check_method_keys` checks it against the method's own defaults.
  """
  reference = base_config()
  known = set(_all_keys(reference))
  for key in _all_keys(config):
    if (key.split(".", 1)[0] == "method" or key.startswith(("data.streams.", "optim.groups."))
        or key in known):
      continue
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    if parent and parent not in known:
      continue  # Reported at its parent already.
    suggestion = closest_keys(reference, key)
    hint = f" Did you mean: {', '.join(suggestion)}?" if suggestion else ""
    raise ConfigError(f"Unknown config key {key!r} (not in config_lib.base_config()).{hint}")


def _method_reference(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """`{'method': <the method's defaults>}` (`methods.default_method_config`), or None where no
  method is chosen yet (base_config() alone) or the method has no defaults."""
  from ssl_jax import methods  # pylint: disable=g-import-not-at-top  (jax, only when needed)

  name = config.method.get("name", "")
  if not name:
    return None
  try:
    defaults = methods.default_method_config(name)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  return None if defaults is None else ml_collections.ConfigDict({"method": defaults})


def _check_method_keys(config: ml_collections.ConfigDict,
                       reference: ml_collections.ConfigDict) -> None:
  """Every `method.*` key must exist in the method's defaults (`reference`).

  A config file writes `method.*` freely (it builds the section itself), so a misspelt key there
  would otherwise be a silently ignored setting; the command line is locked, but against the
  file's section, which may itself hold the typo.
  """
  known = set(_all_keys(reference))
  for key in _all_keys(ml_collections.ConfigDict({"method": config.method})):
    if key in known:
      continue
    parent = key.rsplit(".", 1)[0]
    if parent != "method" and parent not in known:
      continue  # Reported at its parent already.
    suggestion = closest_keys(reference, key)
    hint = f" Did you mean: {', '.join(suggestion)}?" if suggestion else ""
    raise ConfigError(f"Unknown config key {key!r} (not a key of method "
                      f"{config.method.name!r}'s defaults).{hint}")


# Layer widths, head and layer counts of the methods' networks: 0 makes a layer with no units,
# which fails deep inside initialisation (a division by a zero fan) rather than as a config
# error, and a negative one fails in a reshape. >= 1 where the default is positive; >= 0 where
# the default is 0, a documented setting (e.g. rotation's head_hidden_dim: a linear head).
# (RandAugment's layer count is not one: 0 turns RandAugment off in every method.)
_METHOD_SIZE_KEY = re.compile(r"(_dim|_heads|_depth|(?<!randaugment)_layers|^hidden_mlp|"
                              r"^nmb_prototypes|^num_permutations|^num_slices|^num_knots|"
                              r"^num_last_blocks|^output_stride|kernel_size|^soft_neighbours)$")
_PROBABILITY = (0, False, 1, False, "a probability")
_FRACTION = (0, False, 1, False, "")
_NON_NEGATIVE = (0, False, None, False, "")
_POSITIVE = (0, True, None, False, "")
# `method.*` leaves, in any method and at any depth, by their last name: what the paper's
# quantity allows (key: (low, low_open, high, high_open, why), as `_RANGES`).
_METHOD_LEAF_RANGES = {
    "flip_prob": _PROBABILITY, "mix_prob": _PROBABILITY, "mix_switch_prob": _PROBABILITY,
    "randaugment_prob": _PROBABILITY,
    "center_momentum": (0, False, 1, False, "an EMA rate"),
    "attention_keep_mass": (0, True, 1, False, "the share of attention mass kept"),
    "rebalance_mix": (0, False, 1, False, "lambda, the mix of the prior with uniform"),
    "temperature": (0, True, None, False, "it divides the logits"),
    "sharpen": (0, True, None, False, "PAWS's sharpening temperature T; it divides"),
    "prior_sigma": _POSITIVE, "soft_sigma": _POSITIVE,
    "unlabeled_weight": (0, False, None, False, "a negative weight ascends that loss"),
    "consistency_weight": (0, False, None, False, "a negative weight ascends that loss"),
    "feature_extractor_perceptual_weight": (0, False, None, False,
                                            "a negative weight ascends that loss"),
    "feature_extractor_style_weight": (0, False, None, False,
                                       "a negative weight ascends that loss"),
    "input_noise": _NON_NEGATIVE, "rampup_steps": _NON_NEGATIVE,
    "rampup_start_epochs": _NON_NEGATIVE, "rampup_end_epochs": _NON_NEGATIVE,
    "epoch_queue_starts": (0, False, None, False, "0: from the first step"),
    "mixup_alpha": (0, False, None, False, "0 disables it"),
    "cutmix_alpha": (0, False, None, False, "0 disables it"),
    "head_init_std": _NON_NEGATIVE, "randaugment_magnitude": _NON_NEGATIVE,
    "randaugment_magnitude_std": _NON_NEGATIVE, "label_smoothing": (0, False, 1, True, ""),
    "threshold": _FRACTION, "cutout_fraction": _FRACTION,
}


def check_method_values(config: ml_collections.ConfigDict) -> None:
  """The `method.*` widths, counts and paper quantities of `_check_method_sizes`, for a config
  that may not have been through `validate` (`methods.build_method` calls it: one home for
  these checks on every path that builds a method)."""
  method_reference = _method_reference(config)
  if method_reference is not None:
    _check_method_sizes(config, method_reference)


def _check_method_sizes(config: ml_collections.ConfigDict,
                        reference: ml_collections.ConfigDict) -> None:
  """`method.*` widths and counts (`_METHOD_SIZE_KEY`) must be ints >= 1 where their default in
  `reference` is positive, >= 0 where it is 0 (0: that layer is off); the leaves named in
  `_METHOD_LEAF_RANGES` must lie in their range."""
  for key in _all_keys(reference):
    default_present, default = _lookup(reference, key)
    present, value = _lookup(config, key)
    if not (present and default_present and _is_number(default)):
      continue
    leaf = key.rsplit(".", 1)[-1]
    if _METHOD_SIZE_KEY.search(leaf) and default >= 0:
      low = 1 if default > 0 else 0
      if not (_is_number(value) and float(value).is_integer() and value >= low):
        what = "a layer width or count" + ("" if low else ", 0 for none")
        raise ConfigError(f"{key} must be an integer >= {low} ({what}; default {default}); got "
                          f"{value!r}.")
    if leaf in _METHOD_LEAF_RANGES:
      _check_number(key, value, *_METHOD_LEAF_RANGES[leaf])


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# Allowed values of the shared keys. Ranges are (low, high, what the message says); None is
# unbounded; `low_open`/`high_open` exclude the bound. Keys absent from a config are skipped.
_CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.pool": ("cls", "mean"),
    "model.pos_embed": ("learn", "sincos"),
    "model.stem": ("imagenet", "cifar"),
    "model.attention_impl": ("plain", "xla", "cudnn", "splash"),  # vit.ATTENTION_IMPLS
    "model.remat": ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"),
    "model.token_gather": ("take", "onehot"),  # masking.TOKEN_GATHERS
    "optim.name": ("adamw", "lars", "lamb", "sgd", "larc_sgd"),  # optim.OPTIMIZERS
    "optim.lr_scaling": ("linear", "none"),
    "optim.schedule": ("cosine", "constant", "fixmatch_cosine"),
    "wandb.mode": ("online", "offline", "disabled"),
}
_INTEGERS = ("seed", "batch_size", "total_steps", "log_every", "eval_every", "checkpoint_every",
             "keep_checkpoints", "mesh.data", "mesh.fsdp", "data.image_size",
             "data.worker_count", "data.prefetch", "model.hidden_size", "model.depth",
             "model.num_heads", "optim.warmup_steps", "optim.grad_accum_steps", "eval.knn_k",
             "eval.batch_size", "eval.num_vis_images")
# key: (low, low_open, high, high_open, why)
_RANGES = {
    "seed": (0, False, 2**32, True, "grain's shuffle seed"),
    "total_steps": (0, False, None, False, "0: derived from epochs"),
    "epochs": (0, False, None, False, ""),
    "keep_checkpoints": (1, False, None, False,
                         "0 would delete every checkpoint, including the one just saved"),
    "mesh.fsdp": (1, False, None, False, ""),
    "data.image_size": (1, False, None, False, "the canvas side in pixels"),
    "data.worker_count": (0, False, None, False, "0: read in the trainer process"),
    "data.prefetch": (0, False, None, False, ""),
    "model.hidden_size": (0, False, None, False, "0: the named variant's size"),
    "model.depth": (0, False, None, False, "0: the named variant's size"),
    "model.num_heads": (0, False, None, False, "0: the named variant's size"),
    "model.drop_path_rate": (0, False, 1, True, "a probability"),
    "optim.lr": (0, True, None, False, "a learning rate <= 0 stands still or ascends the loss"),
    "optim.warmup_steps": (0, False, None, False, ""),
    "optim.warmup_epochs": (0, False, None, False, ""),
    "optim.end_lr": (0, False, None, False, ""),
    "optim.weight_decay": (0, False, None, False, ""),
    "optim.b1": (0, False, 1, True, "an Adam decay rate"),
    "optim.b2": (0, False, 1, True, "an Adam decay rate"),
    "optim.momentum": (0, False, 1, True, ""),
    "optim.trust_coefficient": (0, True, None, False, ""),
    "optim.grad_clip_norm": (0, False, None, False, "0 disables clipping"),
    "optim.clip_per_tensor": (0, False, None, False, "0 disables clipping"),
    "optim.warmup_start_lr": (0, False, None, False, ""),
    "optim.weight_decay_end": (0, False, None, False, ""),
    "eval.knn_k": (1, False, None, False, ""),
    "eval.knn_temperature": (0, True, None, False, ""),
    "eval.softnn_temperature": (0, True, None, False, ""),
    "eval.online_probe_lr": (0, True, None, False, ""),
    "eval.batch_size": (1, False, None, False, ""),
    "eval.num_vis_images": (0, False, None, False, ""),
    "collapse.min_std": (0, False, None, False, "0 disables the warning"),
    "collapse.min_teacher_entropy": (0, False, 1, False, "H / log K; 0 disables the warning"),
}


def _lookup(config: ml_collections.ConfigDict, key: str) -> tuple[bool, Any]:
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _range_text(low, low_open, high, high_open) -> str:
  parts = []
  if low is not None:
    parts.append(f"{'>' if low_open else '>='} {low}")
  if high is not None:
    parts.append(f"{'<' if high_open else '<='} {high}")
  return " and ".join(parts)


def _check_number(key: str, value: Any, low, low_open: bool, high, high_open: bool,
                  why: str) -> None:
  """`value` of `key` is a number within the bounds, or a ConfigError saying which."""
  if not _is_number(value):
    raise ConfigError(f"{key} must be a number {_range_text(low, low_open, high, high_open)}; "
                      f"got {value!r}.")
  too_low = low is not None and (value <= low if low_open else value < low)
  too_high = high is not None and (value >= high if high_open else value > high)
  if too_low or too_high:
    reason = f" ({why})" if why else ""
    raise ConfigError(f"{key} must be {_range_text(low, low_open, high, high_open)}{reason}; "
                      f"got {value!r}.")


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  """Every shared key's type, range or allowed values, with the valid ones in the message."""
  for key, choices in _CHOICES.items():
    present, value = _lookup(config, key)
    if present and value not in choices:
      raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
  present, name = _lookup(config, "model.name")
  if present:
    from ssl_jax.models import registry  # pylint: disable=g-import-not-at-top

    if not registry.is_valid_name(name):
      raise ConfigError(f"model.name must be one of {', '.join(registry.valid_names())} (or any "
                        f"wrn_<6n+4>_<width>); got {name!r}.")
  for key in _INTEGERS:
    present, value = _lookup(config, key)
    if present and not (_is_number(value) and float(value).is_integer()):
      raise ConfigError(f"{key} must be an integer; got {value!r}.")
  for key, bounds in _RANGES.items():
    present, value = _lookup(config, key)
    if present:
      _check_number(key, value, *bounds)
  present, data_axis = _lookup(config, "mesh.data")
  if present and data_axis != -1 and data_axis < 1:
    raise ConfigError(f"mesh.data must be -1 (every device not used by fsdp) or >= 1; got "
                      f"{data_axis!r}.")
  present, protocols = _lookup(config, "eval.protocols")
  if present:
    from ssl_jax.evaluators import runner  # pylint: disable=g-import-not-at-top

    names = [p.strip() for p in str(protocols).split(",") if p.strip()]
    unknown = [p for p in names if p not in runner.PROTOCOLS]
    if unknown:
      raise ConfigError(f"eval.protocols has unknown protocol(s) {unknown}; choose from "
                        f"{', '.join(runner.PROTOCOLS)}, comma-separated, or '' for none.")


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
  """Inverse of `to_json` for the values configs hold (tuples come back as lists)."""
  return ml_collections.ConfigDict(json.loads(text))


def base_config() -> ml_collections.ConfigDict:
  """The keys every method config shares; method configs fill `model` and `method`.

  Defaults are the CPU-friendly digits run; presets in `configs/<method>.py` change them.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 256            # Global, across all devices and hosts.
  c.total_steps = 0             # 0: derived from `epochs` and the train split size.
  c.epochs = 0.0
  c.log_every = 50
  c.eval_every = 500            # k-NN (and other evaluators) every N steps; 0 = only at the end.
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.export_at_end = True
  c.visualize = True            # Reconstructions / attention maps at eval time.
  # jax.profiler trace of steps START..STOP-1 ("START:STOP", e.g. "10:15") into
  # W/tensorboard/plugins/profile (TensorBoard's Profile tab), process 0; "" = none.
  c.profile_steps = ""
  # XLA's persistent compilation cache (ssl_jax/compile_cache.py): a resumed or restarted run
  # loads its compiled steps instead of compiling them again. A relative path lives in the
  # workdir, an absolute path or gs:// URL may be shared by runs; "" = off.
  c.compilation_cache_dir = ""

  # One warning line when a collapse metric falls below its threshold (ssl_jax/collapse.py,
  # docs/methods.md "Collapse metrics"); 0 disables a check.
  c.collapse = ml_collections.ConfigDict()
  c.collapse.min_std = 0.1               # train/collapse_std: ~1 spread, 0 collapsed.
  c.collapse.min_teacher_entropy = 0.02  # train/collapse_teacher_entropy (DINO): H / log K.

  # Weights & Biases (`pip install ssl-jax[wandb]`); off while `project` is "". Process 0 logs
  # the same scalars as metrics.jsonl (ssl_jax/wandb_writer.py).
  c.wandb = ml_collections.ConfigDict()
  c.wandb.project = ""
  c.wandb.entity = ""           # Team or user; "" = wandb's default.
  c.wandb.name = ""             # Run name; "" = the workdir's name.
  c.wandb.mode = "online"       # online | offline | disabled (wandb.init's `mode`).

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1              # -1: all devices not used by `fsdp`.
  c.mesh.fsdp = 1               # > 1: params and optimizer state sharded over this many devices.

  c.data = ml_collections.ConfigDict()
  c.data.source = "digits"      # digits | npz:PATH | imagefolder:DIR | tfds:NAME
  c.data.train_split = "train"
  c.data.train_subset = ""      # Labelled subset to train on: "" | fraction:0.01 | per_class:10.
  c.data.eval_source = ""       # Source for evaluation; "" = same as `source`.
  c.data.eval_train_split = "train"
  c.data.eval_test_split = "test"
  c.data.data_dir = ""          # TFDS data_dir (may be gs://).
  c.data.image_size = 32        # Host canvas: every image is decoded to this square size.
  # grain worker processes decoding files (imagefolder, tfds); 0 for in-memory sources, which
  # read whole batches in the main process. Sizing: docs/performance.md.
  c.data.worker_count = 0
  c.data.prefetch = 2           # Global batches built on the device ahead of the step (0: none).
  # Named inputs of one step ({name: {'image', 'label'}}), e.g. labeled + unlabeled; empty: the
  # single batch {'image', 'label'}. Keys and kinds: ssl_jax/data/streams.py.
  c.data.streams = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.name = "vit_ti4"
  # 0 = the named variant's published size; > 0 overrides it (small CPU models).
  c.model.hidden_size = 0
  c.model.depth = 0
  c.model.num_heads = 0
  c.model.dtype = "float32"     # Compute dtype; bfloat16 on accelerators. Params stay float32.
  c.model.pool = "cls"
  # False: no CLS token, pooled = fc_norm(mean of patch tokens) (timm global_pool='avg').
  c.model.class_token = True
  c.model.pos_embed = "learn"
  c.model.drop_path_rate = 0.0
  c.model.stem = "cifar"
  c.model.batch_norm_momentum = 0.999  # Wide ResNets (wrn_*): FixMatch's; ResNets keep 0.9.
  # ViT speed levers (docs/performance.md): same params and math, other speed or memory.
  c.model.attention_impl = "plain"  # plain | xla | cudnn (GPU) | splash (TPU): vit.Attention
  c.model.remat = "none"        # none | full | dots_saveable | dots_with_no_batch_dims_saveable
  c.model.scan_blocks = False   # One lax.scan over the blocks: compile time.
  c.model.token_gather = "take"  # take | onehot: MAE's visible-patch gather as a matmul.

  c.method = ml_collections.ConfigDict()
  c.method.name = ""

  # The optimizer of every parameter; `optim.groups.<name>` (ssl_jax/optim.py) change any of
  # these keys for the parameters whose path matches the group's `pattern`.
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"        # adamw | lars | lamb | sgd | larc_sgd (SwAV)
  c.optim.lr = 1.5e-4           # Base lr at batch 256; scaled by batch_size/256 if lr_scaling.
  c.optim.lr_scaling = "linear"  # linear | none
  c.optim.schedule = "cosine"   # cosine | constant | fixmatch_cosine (lr cos(7 pi k / 16 K))
  c.optim.warmup_steps = 0      # Or warmup_epochs; not both.
  c.optim.warmup_epochs = 0.0
  c.optim.warmup_start_lr = 0.0  # The lr at step 0 (absolute, not scaled).
  # False: the peak is reached at warm-up step W (MAE, BYOL); True: np.linspace(start, peak, W),
  # the peak at step W - 1 (DINO's cosine_scheduler, SwAV).
  c.optim.warmup_linspace = False
  c.optim.end_lr = 0.0
  c.optim.weight_decay = 0.05
  c.optim.weight_decay_schedule = "constant"  # constant | cosine (to weight_decay_end: DINO)
  c.optim.weight_decay_end = 0.0
  # No weight decay nor LARS adaptation on rank <= 1 params (biases, norms) and on these names.
  c.optim.no_decay_1d = True
  c.optim.no_decay_names = ("pos_embed", "cls_token", "mask_token", "dist_token",
                            "decoder_pos_embed")
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.momentum = 0.9        # sgd / lars / larc_sgd
  c.optim.nesterov = False      # sgd: Nesterov momentum (FixMatch).
  c.optim.trust_coefficient = 0.001  # lars / larc_sgd
  c.optim.grad_clip_norm = 0.0  # Global-norm clipping; 0 disables.
  c.optim.clip_per_tensor = 0.0  # Each tensor's gradient clipped to this norm (DINO); 0 disables.
  c.optim.layer_decay = 1.0     # Layer-wise lr decay of a ViT (BEiT/MAE fine-tuning); 1 = off.
  c.optim.groups = ml_collections.ConfigDict()
  c.optim.grad_accum_steps = 1

  c.eval = ml_collections.ConfigDict()
  # Frozen-feature evaluators run every eval_every steps and at the end ("" = none):
  # any of knn, linear (fast logistic-regression probe), fewshot (ridge, 1/5/10/25 shots),
  # softnn (PAWS: soft nearest neighbours of `Method.embeddings` over the labelled
  # data.train_subset, evaluators/softnn.py).
  c.eval.protocols = "knn"
  c.eval.knn_k = 20
  c.eval.knn_temperature = 0.07
  c.eval.softnn_temperature = 0.1
  c.eval.batch_size = 256
  c.eval.num_vis_images = 8
  c.eval.online_probe = False   # Linear head on stop-gradient features, trained alongside.
  c.eval.online_probe_lr = 1e-3  # Its Adam's constant lr (ssl_jax/optim.py, group online_probe).
  return c
