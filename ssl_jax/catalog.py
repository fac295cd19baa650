"""`python -m ssl_jax.train --list`: every method config and the presets it knows."""

from __future__ import annotations

import importlib.util

from ssl_jax import config_lib

_ASK = "?"   # Not a preset name: the config answers with the ones it knows.


def presets(path) -> tuple[str, ...]:
  """The presets of one config file (its `common.parse_presets(..., known=...)`)."""
  spec = importlib.util.spec_from_file_location(f"_ssl_jax_catalog_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    module.get_config(_ASK)
  except ValueError as error:     # configs/common.py's UnknownPresetError
    if hasattr(error, "known"):
      return tuple(error.known)
    raise
  raise ValueError(f"{path} accepted the preset {_ASK!r}; its get_config must reject unknown "
                   "presets with common.parse_presets.")


def describe() -> str:
  """One line per config: `configs/<name>.py  <what it is>` and its presets."""
  directory = config_lib.configs_dir()
  if directory is None:
    raise FileNotFoundError("No configs/ found beside or inside the ssl_jax package.")
  lines = ["Configs (--config configs/<name>.py:<preset>[,<preset>...]):"]
  for path in sorted(directory.glob("*.py")):
    if path.name in ("common.py", "__init__.py"):
      continue
    summary = (path.read_text().split('"""')[1].strip().splitlines() or [""])[0]
    lines.append(f"  configs/{path.name:20s} {summary}")
    lines.append(f"  {'':28s} presets: {', '.join(presets(path))}")
  return "\n".join(lines)
