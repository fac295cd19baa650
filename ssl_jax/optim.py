"""Optimizers built from declarative parameter groups: the one home of every optax transform.

`build_optimizer(config, params, total_steps=..., steps_per_epoch=...)` reads `config.optim`:
its keys set the optimizer of every parameter, and `config.optim.groups` names groups of
parameters that differ (big_vision's `schedule` / `lr_mults`):

    config.optim.groups.predictor = ml_collections.ConfigDict(dict(
        pattern="predictor/.*", schedule="constant", warmup_steps=0, warmup_epochs=0.0))

A group's `pattern` is a regular expression that must match the whole '/'-joined param path
(`encoder/blocks_3/attn/qkv/kernel`); its other keys replace the base `optim` keys of the same
name for its parameters (`group_keys` lists every key a group may set). A parameter in no group
follows the base keys; `pattern=''` disables a group. A parameter matched by two groups, a group
that matches nothing and an unknown group key are config errors: groups live in a ConfigDict, whose keys have no order
(the run's config.json sorts them), so "first match wins" would depend on the spelling.

Recipes (papers and official codes): AdamW (MAE, DINO, MoCo v3), LARS (SimCLR, BYOL, MAE linear
probe), LAMB, SGD with momentum (MoCo v2, SimSiam, linear probes), SGD in apex's LARC (SwAV);
linear warm-up then half-cosine decay to `end_lr`, or constant; the base lr scaled linearly
with the batch (lr = base_lr * batch_size / 256, Goyal et al. 2017); no weight decay (and no
LARS adaptation) on biases, normalization parameters, position embeddings and special tokens.

Per group: its own optimizer and hyper-parameters, `lr_mult`, schedule, weight decay and a cosine
weight-decay schedule (DINO), `lars_adaptation`, per-tensor or global-norm clipping, layer-wise
lr decay (`ssl_jax.lr_decay`), `frozen` for the whole run (linear probes, MoCo v3's patch
embedding), frozen for the first `freeze_steps` / `freeze_epochs` (DINO's last layer, SwAV's
prototypes), updated every `update_every` steps (Perceptual MAE's discriminator) and projected
back onto unit columns after each update (`project='unit_columns'`, SwAV's prototypes).

The online probe (`ssl_jax.methods.online_probe`) wraps any method; its parameters,
`params['online_probe']`, always form their own group: Adam at a constant lr, nothing else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from ssl_jax import config_lib, lr_decay, steps
from ssl_jax.losses import schedules
from ssl_jax.methods.online_probe import PROBE_KEY

Schedule = Callable[[jax.Array], jax.Array]

OPTIMIZERS = ("adamw", "lars", "lamb", "sgd", "larc_sgd")
SCHEDULES = ("cosine", "constant", "fixmatch_cosine")
PROJECTIONS = ("", "unit_columns")

# Keys only a group has, with the value a parameter outside every group gets.
GROUP_ONLY_DEFAULTS = {
    "pattern": "",            # Regex, full match of the '/'-joined path; '' disables the group.
    "frozen": False,          # Never updated (no optimizer state, no weight decay).
    "lr_mult": 1.0,           # Multiplies the group's updates (weight-decay term included).
    "freeze_steps": 0,        # Not updated at all during the first N steps (or epochs) ...
    "freeze_epochs": 0.0,     # ... its schedules still read at the global step.
    "update_every": 1,        # Updates applied on steps 0, k, 2k, ... only.
    "lars_adaptation": True,  # LARS / LARC trust ratio (where the parameter is not exempt).
    "project": "",            # '' | 'unit_columns': every kernel column back to unit L2 norm.
}
# The base `optim` keys that are not per-group settings.
_RUN_KEYS = ("groups", "grad_accum_steps")

# The online probe's group (params[PROBE_KEY]): Adam at the constant `eval.online_probe_lr`, no
# weight decay, no clipping.
PROBE_GROUP = dict(name="adamw", lr_scaling="none", schedule="constant",
                   warmup_steps=0, warmup_epochs=0.0, warmup_start_lr=0.0, end_lr=0.0,
                   weight_decay=0.0, weight_decay_schedule="constant", b1=0.9, b2=0.999,
                   grad_clip_norm=0.0, clip_per_tensor=0.0, layer_decay=1.0)


def group_keys(optim_config) -> tuple[str, ...]:
  """Every key a group may set: the base optimizer keys and the group-only ones."""
  base = [k for k in optim_config.keys() if k not in _RUN_KEYS]
  return tuple(sorted(set(base) | set(GROUP_ONLY_DEFAULTS)))


def check_groups(optim_config) -> None:
  """Unknown group keys (typos in a config file) are config errors naming the closest keys."""
  reference = ml_collections.ConfigDict({k: 0 for k in group_keys(optim_config)})
  for name, group in optim_config.get("groups", {}).items():
    if not isinstance(group, (Mapping, ml_collections.ConfigDict)):
      raise config_lib.ConfigError(f"optim.groups.{name} must be a ConfigDict of group keys, "
                                   f"got {group!r}.")
    if "pattern" not in group:
      raise config_lib.ConfigError(f"optim.groups.{name} has no 'pattern' (a regex matching "
                                   "the whole '/'-joined param path, e.g. 'predictor/.*').")
    for key in group.keys():
      if key not in reference:
        close = [f"optim.groups.{name}.{k}" for k in config_lib.closest_keys(reference, key)]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise config_lib.ConfigError(f"Unknown key 'optim.groups.{name}.{key}'.{hint}")


# ---------------------------------------------------------------------------------------------
# Schedules.


def peak_learning_rate(settings: Mapping[str, Any], batch_size: int) -> float:
  if settings["lr_scaling"] == "linear":
    return settings["lr"] * batch_size / 256
  if settings["lr_scaling"] == "none":
    return settings["lr"]
  raise config_lib.ConfigError(f"optim.lr_scaling must be 'linear' or 'none', got "
                               f"{settings['lr_scaling']!r}.")


def warmup_cosine(*, peak: float, total_steps: int, warmup_steps: int, end_value: float = 0.0,
                  start_value: float = 0.0, linspace: bool = False,
                  decay: str = "cosine") -> Schedule:
  """Linear warm-up from `start_value`, then half-cosine to `end_value` (or constant).

  Warm-up, step s < W:
    linspace=False:  start + (peak - start) * s / W        peak reached at step W (MAE's
                     util/lr_sched.py with a fractional epoch per iteration, BYOL, optax);
    linspace=True:   np.linspace(start, peak, W)[s]         peak reached at step W - 1 (DINO's
                     utils.cosine_scheduler, SwAV's main_swav.py; W = 1 gives `start`).
  Then, for W <= s <= T (T = total_steps), cosine over the remaining T - W steps:
    end + (peak - end) * (1 + cos(pi * (s - W) / (T - W))) / 2,
  held at `end` after T; with decay='constant', `peak` from W on; with decay='fixmatch_cosine'
  (FixMatch, Sohn et al. 2020, Sec. 4: lr cos(7 pi k / 16 K)), peak * cos(7 pi p / 16) for the
  same progress p, ending at ~0.2 of the peak rather than at `end`.
  """
  if decay not in SCHEDULES:
    raise config_lib.ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {decay!r}.")
  warmup = min(int(warmup_steps), int(total_steps))
  decay_steps = max(int(total_steps) - warmup, 1)
  ramp = max(warmup - 1, 1) if linspace else max(warmup, 1)

  def schedule(count):
    s = jnp.asarray(count, jnp.float32)
    # (start - peak) * (1 - s / ramp) + peak: optax.linear_schedule's float32 arithmetic, so the
    # presets that kept their schedule keep it to the last bit.
    warming = (start_value - peak) * (1.0 - s / ramp) + peak
    if linspace and warmup == 1:
      warming = jnp.full_like(s, start_value)
    progress = jnp.clip(s - warmup, 0, decay_steps) / decay_steps
    if decay == "constant":
      after = jnp.full_like(s, peak)
    elif decay == "fixmatch_cosine":
      after = peak * jnp.cos(7.0 * math.pi * progress / 16.0)
    else:
      after = end_value + (peak - end_value) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(s < warmup, warming, after)

  return schedule


def learning_rate_schedule(settings: Mapping[str, Any], *, batch_size: int, total_steps: int,
                           steps_per_epoch: int) -> Schedule:
  """The lr of a group (or of `config.optim`) at each global step."""
  return warmup_cosine(
      peak=peak_learning_rate(settings, batch_size), total_steps=total_steps,
      warmup_steps=steps.steps(settings, "warmup", steps_per_epoch=steps_per_epoch),
      end_value=settings["end_lr"], start_value=settings["warmup_start_lr"],
      linspace=settings["warmup_linspace"], decay=settings["schedule"])


def weight_decay_schedule(settings: Mapping[str, Any], *, total_steps: int) -> float | Schedule:
  """`weight_decay`, or DINO's cosine from it to `weight_decay_end` over the run (per step,
  no warm-up: dino `cosine_scheduler(weight_decay, weight_decay_end, epochs, niter)`)."""
  rule = settings["weight_decay_schedule"]
  if rule == "constant":
    return float(settings["weight_decay"])
  if rule == "cosine":
    start, end = float(settings["weight_decay"]), float(settings["weight_decay_end"])
    return lambda count: schedules.cosine_schedule(count, total_steps, start, end)
  raise config_lib.ConfigError(f"optim.weight_decay_schedule must be 'constant' or 'cosine', "
                               f"got {rule!r}.")


def _shifted(schedule, offset: int):
  """schedule(count + offset): a group released at step `offset` reads the run's schedule at
  the global step (torch sets one lr per iteration for every group)."""
  if offset == 0 or not callable(schedule):
    return schedule
  return lambda count: schedule(count + offset)


# ---------------------------------------------------------------------------------------------
# Transforms that optax lacks.


def clip_each_by_norm(max_norm: float) -> optax.GradientTransformation:
  """Clips every parameter's gradient tensor to L2 norm `max_norm` on its own.

  dino `utils.clip_gradients`: g *= clip / (||g|| + 1e-6) where that factor is below 1. Unlike
  `optax.clip_by_global_norm`, one large tensor does not shrink the others.
  """
  if max_norm <= 0:
    raise ValueError(f"clip_each_by_norm needs max_norm > 0, got {max_norm}.")

  def update_fn(updates, state, params=None):
    del params

    def clip(g):
      factor = max_norm / (jnp.linalg.norm(g.astype(jnp.float32)) + 1e-6)
      return (g * jnp.minimum(factor, 1.0)).astype(g.dtype)

    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def scale_by_larc(trust_coefficient: float, weight_decay: float, adapt: Callable,
                  eps: float = 1e-8) -> optax.GradientTransformation:
  """apex `LARC(clip=False)` around SGD's weight decay (SwAV).

  Per tensor where `adapt(path, p)` and ||p|| > 0 and ||g|| > 0:
    g <- (g + wd p) * trust * ||p|| / (||g|| + wd ||p|| + eps),
  and g unchanged otherwise. Follow with `optax.trace(momentum)` and `scale_by_learning_rate`
  for torch SGD (buf = m buf + g; p -= lr buf).
  """

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_larc needs the params: call tx.update(g, s, params).")

    def scale(path, g, p):
      if not adapt(_names(path), p):
        return g
      param_norm = jnp.linalg.norm(p.astype(jnp.float32))
      grad_norm = jnp.linalg.norm(g.astype(jnp.float32))
      ratio = trust_coefficient * param_norm / (grad_norm + param_norm * weight_decay + eps)
      adapted = (g + weight_decay * p) * ratio
      return jnp.where((param_norm > 0) & (grad_norm > 0), adapted, g).astype(g.dtype)

    return jax.tree_util.tree_map_with_path(scale, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class SkipFirstStepsState(NamedTuple):
  count: jax.Array
  inner_state: Any


def skip_first_steps(inner: optax.GradientTransformation,
                     num_steps: int) -> optax.GradientTransformation:
  """`inner`, except that during the first `num_steps` updates it is not run at all.

  While skipped, the update is zero and `inner`'s state (moments, step counts) stays as it was,
  which is what torch does for a parameter whose `.grad` is None (dino
  `cancel_gradients_last_layer`, swav's frozen prototypes): no moment decay, no weight decay, and
  AdamW's bias correction later starts from that parameter's own first step.
  """

  def init_fn(params):
    return SkipFirstStepsState(count=jnp.zeros((), jnp.int32), inner_state=inner.init(params))

  def update_fn(updates, state, params=None):
    new_updates, new_inner = inner.update(updates, state.inner_state, params)
    skipped = state.count < num_steps
    new_updates = jax.tree.map(lambda u: jnp.where(skipped, jnp.zeros_like(u), u), new_updates)
    new_inner = jax.tree.map(lambda new, old: jnp.where(skipped, old, new), new_inner,
                             state.inner_state)
    return new_updates, SkipFirstStepsState(count=optax.safe_int32_increment(state.count),
                                            inner_state=new_inner)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_tree(multipliers: Callable[[tuple[str, ...]], float]) -> optax.GradientTransformation:
  """Multiplies each update by `multipliers(path)` (lr multipliers, layer-wise lr decay)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * multipliers(_names(path)), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def project_unit_columns() -> optax.GradientTransformation:
  """Changes each 2-D parameter's update so that every column lands on the unit sphere.

  SwAV normalises its prototypes (the columns of the Flax [dim, K] kernel) in place before each
  forward pass (`w = normalize(prototypes.weight)` under no_grad). Done here, last in the
  group's chain, the stored weights are always unit: params + update = normalize(params + raw
  update). It lives in the optimizer because it is part of the update rule (a projected step),
  and the Method contract gives a method no hook that writes its params.
  """

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("project_unit_columns needs the params: call tx.update(g, s, params).")

    def project(u, p):
      if p.ndim != 2:
        raise ValueError(f"project='unit_columns' needs 2-D kernels, got shape {p.shape}.")
      stepped = p + u
      norm = jnp.sqrt(jnp.sum(jnp.square(stepped.astype(jnp.float32)), axis=0, keepdims=True))
      return (stepped / jnp.maximum(norm, 1e-12)).astype(p.dtype) - p

    return jax.tree.map(project, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# ---------------------------------------------------------------------------------------------
# Groups.


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def group_settings(optim_config) -> dict[str, dict[str, Any]]:
  """{'base': the base keys, group name: base keys overridden by the group's} (+ defaults)."""
  check_groups(optim_config)
  base = {k: v for k, v in optim_config.items() if k not in _RUN_KEYS}
  base = {**GROUP_ONLY_DEFAULTS, **base}
  settings = {"base": base}
  for name, group in optim_config.get("groups", {}).items():
    if name in ("base", PROBE_KEY):
      raise config_lib.ConfigError(f"optim.groups.{name}: the group name {name!r} is reserved.")
    settings[name] = {**base, **dict(group.items())}
  return settings


def assign_groups(params: Any, settings: Mapping[str, Mapping[str, Any]]) -> dict:
  """{path tuple: group name} for every param leaf, from the groups' patterns."""
  patterns = {}
  for name, s in settings.items():
    if name in ("base", PROBE_KEY) or not s["pattern"]:
      continue
    try:
      patterns[name] = re.compile(s["pattern"])
    except re.error as e:
      raise config_lib.ConfigError(f"optim.groups.{name}.pattern={s['pattern']!r} is not a "
                                   f"regular expression: {e}.") from None
  labels, used = {}, set()
  for path in traverse_util.flatten_dict(params):
    joined = "/".join(path)
    if path[0] == PROBE_KEY and PROBE_KEY in settings:
      labels[path] = PROBE_KEY
      continue
    hits = [name for name, pattern in patterns.items() if pattern.fullmatch(joined)]
    if len(hits) > 1:
      raise config_lib.ConfigError(f"Parameter {joined} matches optim.groups {hits}; make the "
                                   "patterns disjoint (a group's keys cannot be merged).")
    labels[path] = hits[0] if hits else "base"
    used.update(hits)
  unused = sorted(set(patterns) - used)
  if unused:
    example = "/".join(next(iter(traverse_util.flatten_dict(params))))
    raise config_lib.ConfigError(
        f"optim.groups {unused} match no parameter (pattern "
        f"{settings[unused[0]]['pattern']!r}); patterns must match the whole '/'-joined path, "
        f"e.g. {example!r}; --config.optim.groups.{unused[0]}.pattern='' disables the group.")
  return labels


def _exempt(settings: Mapping[str, Any]) -> Callable[[tuple[str, ...], Any], bool]:
  """Parameters without weight decay or LARS adaptation: rank <= 1 (biases, norms) if
  `no_decay_1d`, and any whose path has a component in `no_decay_names`."""
  names = tuple(settings["no_decay_names"])
  return lambda path, leaf: ((settings["no_decay_1d"] and leaf.ndim <= 1)
                             or any(n in names for n in path))


def _path_mask(predicate) -> Callable[[Any], Any]:
  return lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, leaf: predicate(_names(path), leaf), tree)


def _base_optimizer(settings: Mapping[str, Any], learning_rate, weight_decay,
                    ) -> optax.GradientTransformation:
  name = settings["name"]
  exempt = _exempt(settings)
  decays = _path_mask(lambda path, leaf: not exempt(path, leaf))
  adapts = _path_mask(lambda path, leaf: settings["lars_adaptation"] and not exempt(path, leaf))
  decay = optax.masked(optax.add_decayed_weights(weight_decay), decays)
  if name == "adamw":
    # Decoupled decay before the lr, as torch AdamW (p -= lr * wd * p).
    return optax.chain(optax.scale_by_adam(b1=settings["b1"], b2=settings["b2"]), decay,
                       optax.scale_by_learning_rate(learning_rate))
  if name == "lars":
    return optax.chain(decay, optax.masked(optax.scale_by_trust_ratio(
        trust_coefficient=settings["trust_coefficient"], eps=0.0), adapts),
                       optax.scale_by_learning_rate(learning_rate),
                       optax.trace(decay=settings["momentum"]))
  if name == "lamb":
    return optax.chain(optax.scale_by_adam(b1=settings["b1"], b2=settings["b2"], eps=1e-6),
                       decay, optax.scale_by_trust_ratio(),
                       optax.scale_by_learning_rate(learning_rate))
  if name == "sgd":
    return optax.chain(decay, optax.sgd(learning_rate, momentum=settings["momentum"],
                                        nesterov=settings["nesterov"]))
  if name == "larc_sgd":
    if callable(weight_decay):
      raise config_lib.ConfigError("optim.name='larc_sgd' takes a constant weight decay; set "
                                   "optim.weight_decay_schedule='constant'.")
    return optax.chain(
        scale_by_larc(settings["trust_coefficient"], weight_decay,
                      lambda path, leaf: settings["lars_adaptation"] and not exempt(path, leaf)),
        optax.trace(decay=settings["momentum"]), optax.scale_by_learning_rate(learning_rate))
  raise config_lib.ConfigError(f"optim.name must be one of {OPTIMIZERS}; got {name!r}.")


def group_transform(settings: Mapping[str, Any], *, batch_size: int, total_steps: int,
                    steps_per_epoch: int, layer_depth: int) -> optax.GradientTransformation:
  """One group's chain: clipping, optimizer (held for the first freeze steps, applied every k
  steps), lr multipliers and layer-wise decay, projection."""
  if settings["frozen"]:
    return optax.set_to_zero()
  learning_rate = learning_rate_schedule(settings, batch_size=batch_size,
                                         total_steps=total_steps,
                                         steps_per_epoch=steps_per_epoch)
  weight_decay = weight_decay_schedule(settings, total_steps=total_steps)
  freeze = steps.steps(settings, "freeze", steps_per_epoch=steps_per_epoch)
  tx = _base_optimizer(settings, _shifted(learning_rate, freeze), _shifted(weight_decay, freeze))
  if freeze > 0:
    tx = skip_first_steps(tx, freeze)
  every = int(settings["update_every"])
  if every < 1:
    raise config_lib.ConfigError(f"update_every must be >= 1, got {every}.")
  if every > 1:
    tx = optax.transforms.conditionally_mask(tx, lambda count: count % every == 0)
  parts = []
  if settings["clip_per_tensor"]:
    parts.append(clip_each_by_norm(float(settings["clip_per_tensor"])))
  if settings["grad_clip_norm"]:
    parts.append(optax.clip_by_global_norm(float(settings["grad_clip_norm"])))
  parts.append(tx)
  layer_decay = float(settings["layer_decay"])
  if not 0.0 < layer_decay <= 1.0:
    raise config_lib.ConfigError(f"optim.layer_decay must lie in (0, 1], got {layer_decay}; "
                                 "MAE fine-tuning uses 0.65 (ViT-B) / 0.75 (ViT-L/H).")
  lr_mult = float(settings["lr_mult"])
  if layer_decay < 1.0 or lr_mult != 1.0:
    def multiplier(path):
      scale = lr_mult
      if layer_decay < 1.0:
        scale *= layer_decay ** (layer_depth + 1 - lr_decay.vit_layer_id(path, layer_depth))
      return scale
    parts.append(scale_by_tree(multiplier))
  if settings["project"] not in PROJECTIONS:
    raise config_lib.ConfigError(f"project must be one of {PROJECTIONS}, got "
                                 f"{settings['project']!r}.")
  if settings["project"] == "unit_columns":
    parts.append(project_unit_columns())
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


def build_optimizer(config, params: Any, *, total_steps: int, steps_per_epoch: int,
                    ) -> tuple[optax.GradientTransformation, Schedule]:
  """The run's optimizer over `params` (arrays or shapes) and the base group's lr schedule
  (what the loop logs as train/lr)."""
  settings = group_settings(config.optim)
  if isinstance(params, Mapping) and PROBE_KEY in params:
    settings[PROBE_KEY] = {**settings["base"], **GROUP_ONLY_DEFAULTS, **PROBE_GROUP,
                           "lr": float(config.eval.online_probe_lr),
                           "pattern": f"{PROBE_KEY}/.*"}
  labels = assign_groups(params, settings)
  depth = _vit_depth(params) if any(s["layer_decay"] < 1.0 for s in settings.values()) else 0
  used = sorted(set(labels.values()))
  transforms = {name: group_transform(settings[name], batch_size=config.batch_size,
                                      total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                      layer_depth=depth) for name in used}
  schedule = learning_rate_schedule(settings["base"], batch_size=config.batch_size,
                                    total_steps=total_steps, steps_per_epoch=steps_per_epoch)
  if len(used) == 1:
    return transforms[used[0]], schedule
  return optax.multi_transform(transforms, traverse_util.unflatten_dict(labels)), schedule


def _vit_depth(params: Any) -> int:
  """L for layer-wise lr decay: the number of `blocks_<i>` in the params (validated by
  `lr_decay.layerwise_lr_multipliers`: contiguous from 0, timm names)."""
  blocks = {int(m.group(1)) for path in traverse_util.flatten_dict(params) for name in path
            if (m := re.fullmatch(r"blocks_(\d+)", name))}
  if not blocks:
    raise config_lib.ConfigError("optim.layer_decay < 1 needs a ViT with timm block names "
                                 "(blocks_0 ...); set optim.layer_decay=1.0.")
  depth = max(blocks) + 1
  lr_decay.layerwise_lr_multipliers(params, depth, 0.5)  # Raises on gaps or foreign names.
  return depth
