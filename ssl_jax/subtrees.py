"""Finding a backbone inside another model's params: the subtree whose names and shapes match.

Methods nest their backbone differently (MAE: `encoder`; Perceptual MAE: `generator/encoder`;
joint-embedding methods: `student/backbone`, `online/...`), so code that reuses a trained
backbone (supervised `init_from`, the Perceptual MAE frozen feature extractor, `viz compare`)
searches for it by layout: the subtree whose flattened leaf names and shapes equal those of the
backbone it builds. A mismatch is an error listing the differing paths of the closest subtree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging
from flax import traverse_util

# Subtree names that hold the backbone, in the methods' own vocabulary; names of EMA copies rank
# last (teachers live in method state, but a run may keep one in params).
_BACKBONE_NAMES = ("encoder", "backbone", "student", "online")
_EMA_NAMES = ("teacher", "momentum", "target", "ema")


def flat_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{('blocks_0', 'attn', 'qkv', 'kernel'): (64, 192), ...} of a nested dict of arrays."""
  return {path: tuple(np.shape(leaf))
          for path, leaf in traverse_util.flatten_dict(_as_dict(tree)).items()}


def _as_dict(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {str(k): _as_dict(v) for k, v in tree.items()}
  return tree


def _subtrees(tree: Any, prefix: tuple[str, ...] = ()):
  """(prefix, node) for every dict node of a nested dict, the root included."""
  if isinstance(tree, Mapping):
    yield prefix, tree
    for key, value in tree.items():
      yield from _subtrees(value, prefix + (str(key),))


def get_path(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _rank(prefix: tuple[str, ...]) -> tuple:
  is_ema = any(any(name in part.lower() for name in _EMA_NAMES) for part in prefix)
  is_backbone = any(part in _BACKBONE_NAMES for part in prefix)
  return (is_ema, not is_backbone, len(prefix), prefix)


def describe_mismatch(found: Mapping, expected: Mapping, limit: int = 8) -> str:
  """Missing, unexpected and differently shaped paths between two shape dicts."""
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  reshaped = sorted(p for p in set(found) & set(expected) if found[p] != expected[p])
  lines = []
  for title, paths, show in (
      ("missing in the checkpoint", missing, lambda p: f"{'/'.join(p)} {expected[p]}"),
      ("not in this backbone", unexpected, lambda p: f"{'/'.join(p)} {found[p]}"),
      ("shape differs (checkpoint vs backbone)", reshaped,
       lambda p: f"{'/'.join(p)}: {found[p]} vs {expected[p]}")):
    if paths:
      shown = ", ".join(show(p) for p in paths[:limit])
      more = f" (+{len(paths) - limit} more)" if len(paths) > limit else ""
      lines.append(f"  {title}: {shown}{more}")
  return "\n".join(lines)


def find_backbone_subtree(tree: Mapping, expected: Any, *, subtree: str = "",
                          subtree_key: str = "method.init_subtree",
                          what: str = "params") -> tuple[tuple[str, ...], Any]:
  """The (path, subtree) of `tree` whose leaf names and shapes equal `expected`'s.

  Several matches rank by: not an EMA copy, under a backbone name, shortest path, then name.

  Args:
    tree: nested dict of arrays (another run's params or method state).
    expected: the backbone's variables (arrays or ShapeDtypeStructs).
    subtree: '/'-path to use instead of searching.
    subtree_key: the config key that sets `subtree`, named in the messages.
    what: 'params' or 'batch_stats', for the messages.

  Raises:
    ValueError: naming the mismatched paths of the closest subtree, and how to fix it.
  """
  expected_shapes = flat_shapes(expected)
  if subtree:
    path = tuple(p for p in subtree.split("/") if p)
    node = get_path(tree, path)
    if not isinstance(node, Mapping):
      raise ValueError(f"{subtree_key}={subtree!r} is not a subtree of the checkpoint's "
                       f"{what}; its top-level keys are {sorted(map(str, tree))}.")
    candidates = [(path, node)]
  else:
    candidates = list(_subtrees(tree))
  exact = [(p, n) for p, n in candidates if flat_shapes(n) == expected_shapes]
  if exact:
    exact.sort(key=lambda item: _rank(item[0]))
    if len(exact) > 1:
      logging.warning("%d subtrees of the checkpoint's %s match the backbone (%s); using %s. "
                      "Set %s to choose another.", len(exact), what,
                      ", ".join("/".join(p) or "<root>" for p, _ in exact),
                      "/".join(exact[0][0]) or "<root>", subtree_key)
    return exact[0]
  # No exact match: explain the difference from the subtree sharing the most leaf names.
  def overlap(item):
    return len(set(flat_shapes(item[1])) & set(expected_shapes)), -len(item[0])
  best_path, best = max(candidates, key=overlap)
  if overlap((best_path, best))[0] == 0 and subtree:
    raise ValueError(
        f"{subtree_key}={subtree!r} names a subtree of the checkpoint's {what} with none of "
        f"this backbone's parameter names (e.g. {'/'.join(next(iter(expected_shapes)))}); "
        f"its top-level keys are {sorted(map(str, tree))}.")
  if overlap((best_path, best))[0] == 0:
    raise ValueError(
        f"No subtree of the checkpoint's {what} has this backbone's parameter names (e.g. "
        f"{'/'.join(next(iter(expected_shapes)))}); its top-level keys are "
        f"{sorted(map(str, tree))}. Check model.name, or set {subtree_key}.")
  raise ValueError(
      f"The checkpoint's {what} subtree {'/'.join(best_path) or '<root>'!r} (the closest to "
      f"this backbone) does not match it:\n{describe_mismatch(flat_shapes(best), expected_shapes)}"
      "\nSet model.* (name, hidden_size, depth, num_heads, pos_embed) to the pretrained run's "
      f"values (its config.json), or {subtree_key} to the right subtree.")
