#!/usr/bin/env bash
# Issue 13's CIFAR-10 table on one accelerator: every method's `cifar10` preset for 200 epochs in
# bfloat16 on the 10k train split of ../shared/data, its own k-NN and fast linear probe at the end,
# against the same encoder untrained (`ssl_jax.evaluate --init random`) and the raw pixels
# (`--init raw`, once), then one markdown table with training images/s (`ssl_jax.report`).
#
#   bash bench/cifar10_accelerator.sh [--smoke] [ROOT=/tmp/cifar10_accelerator] [METHOD ...]
#
# METHOD defaults to every config with a `cifar10` preset. EPOCHS (200) and PROTOCOLS
# (knn,linear) override; PYTHON picks the interpreter (.venv if present, else python3).
# --smoke: the `smoke` preset (digits, no download) of simclr and mae for 4 steps in bfloat16,
# k-NN only: the whole chain on CPU in a minute (tests/test_accelerator_suite.py).
# Output: ROOT/<method>/ (run workdirs), ROOT/wall_times.jsonl, ROOT/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
ROOT="${1:-/tmp/cifar10_accelerator}"
shift || true
METHODS=("$@")

if [ "$SMOKE" = 1 ]; then
  PRESET=smoke
  PROTOCOLS="${PROTOCOLS:-knn}"
  LENGTH=(--config.total_steps=4 --config.checkpoint_every=4)
  [ ${#METHODS[@]} -eq 0 ] && METHODS=(simclr mae)
else
  PRESET=cifar10
  PROTOCOLS="${PROTOCOLS:-knn,linear}"
  LENGTH=(--config.epochs="${EPOCHS:-200}")
  DATA="${SSL_JAX_DATA:-$(cd .. && pwd)/shared/data}"
  if [ ! -f "$DATA/cifar10_train.npz" ]; then
    echo "cifar10_accelerator: $DATA/cifar10_train.npz not found; put ../shared/data beside" \
         "the clone or set SSL_JAX_DATA (or run --smoke)." >&2
    exit 2
  fi
  if [ ${#METHODS[@]} -eq 0 ]; then
    # Every config whose get_config accepts the preset (common.py is not a method).
    mapfile -t METHODS < <(PYTHONPATH=. "$PY" - <<'PYEOF'
import pathlib
from ssl_jax import config_lib
for path in sorted(pathlib.Path("configs").glob("*.py")):
  if path.stem == "common":
    continue
  try:
    config_lib.load_config(f"{path}:cifar10")
  except ValueError:  # UnknownPresetError: no cifar10 preset.
    continue
  print(path.stem)
PYEOF
)
  fi
fi

mkdir -p "$ROOT"
WORKDIRS=()
for method in "${METHODS[@]}"; do
  workdir="$ROOT/$method"
  WORKDIRS+=("$workdir")
  start=$(date +%s)
  "$PY" -m ssl_jax.train --config "configs/$method.py:$PRESET" --workdir "$workdir" \
    --config.model.dtype=bfloat16 --config.eval.protocols="$PROTOCOLS" \
    --config.export_at_end=False --config.visualize=False "${LENGTH[@]}"
  echo "{\"method\": \"$method\", \"train_wall_s\": $(( $(date +%s) - start ))}" \
    >> "$ROOT/wall_times.jsonl"
  "$PY" -m ssl_jax.evaluate --workdir "$workdir" --init random --protocols "$PROTOCOLS"
done
# Raw pixels do not depend on the method: one evaluation, shown under the first run.
"$PY" -m ssl_jax.evaluate --workdir "${WORKDIRS[0]}" --init raw --protocols "$PROTOCOLS"
"$PY" -m ssl_jax.report --throughput "${WORKDIRS[@]}" | tee "$ROOT/table.md"
