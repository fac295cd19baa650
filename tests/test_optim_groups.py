"""Optimizers from declarative parameter groups (ssl_jax/optim.py) and the step resolver.

* Every preset's optimizer updates every parameter exactly as the per-method optimizers it
  replaced did (tests/fixtures/make_optimizer_fixture.py recorded them, leaf by leaf, at steps
  around every warm-up end, freeze window and epoch boundary).
* The warm-up conventions against numpy transcriptions of the official schedules (DINO, SwAV,
  MAE, BYOL); DINO's and SwAV's presets now follow theirs (the one intended change).
* Bad groups are config errors.
"""
import gzip
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import config_lib, optim, steps
from tests.fixtures import make_optimizer_fixture as fixture

REPO = pathlib.Path(__file__).resolve().parents[1]

# Method keys that became optimizer-group keys, as the fixture's overrides spell them now.
RENAMED_OVERRIDES = {
    "method.fix_predictor_lr=False": "optim.groups.predictor.schedule=cosine",
    "method.freeze_patch_embed=False": "optim.groups.patch_embed.frozen=False",
    "method.freeze_prototypes_epochs=0.5": "optim.groups.prototypes.freeze_epochs=0.5",
}
# The fixture holds the warm-up the DINO and SwAV presets had before: from 0, the peak at step W.
OLD_WARMUP = ["optim.warmup_linspace=False", "optim.warmup_start_lr=0.0"]


def _entries():
  with gzip.open(fixture.FIXTURE, "rt") as f:
    return json.load(f)["entries"]


ENTRIES = _entries()


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_every_preset_updates_every_parameter_as_before(entry):
  overrides = [RENAMED_OVERRIDES.get(o, o) for o in entry["overrides"]]
  if entry["config"] in ("dino", "swav"):
    overrides += OLD_WARMUP
  config = fixture.load(entry["config"], entry["preset"], overrides, entry["probe"])
  params, grads, weights = fixture.synthetic_tree(entry["shapes"])
  tx, _ = optim.build_optimizer(config, params, total_steps=entry["total_steps"],
                                steps_per_epoch=entry["steps_per_epoch"])
  got = np.asarray(fixture.fingerprints(tx, params, grads, weights, entry["steps"]))
  want = np.asarray(entry["fingerprints"])
  paths = sorted(weights)
  for i, step in enumerate(entry["steps"]):
    scale = max(np.abs(want[i]).max(), 1e-30)
    bad = ~np.isclose(got[i], want[i], rtol=1e-5, atol=1e-6 * scale).all(axis=-1)
    assert not bad.any(), (f"step {step}: " + "; ".join(
        f"{paths[j]} got {got[i, j]} want {want[i, j]}" for j in np.flatnonzero(bad)[:5]))
