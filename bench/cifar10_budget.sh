#!/usr/bin/env bash
# Every method at the same fixed CPU budget on CIFAR-10 (configs/<method>.py:cifar10,cpu:
# a 128-wide 4-block ViT, batch 256, 200 steps), then the same encoder untrained, then a table.
#
#   bash bench/cifar10_budget.sh [ROOT=/tmp/cifar10_budget] [METHOD ...]
#
# PROTOCOLS=knn,linear,fewshot adds protocols to the random-init evaluation.
# Needs ../shared/data (or $SSL_JAX_DATA) with cifar10_{train,test}.npz. Each method takes about
# 10 minutes on a 2-core CPU. Rows: W/metrics.jsonl (the run's own k-NN and fast linear probe)
# and W/eval/random.json (`python -m ssl_jax.evaluate --init random`), via `ssl_jax.report`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
ROOT="${1:-/tmp/cifar10_budget}"
shift || true
METHODS=("$@")
if [ ${#METHODS[@]} -eq 0 ]; then
  METHODS=(simclr moco_v2 moco_v3 byol simsiam swav dino)
fi
mkdir -p "$ROOT"
for method in "${METHODS[@]}"; do
  workdir="$ROOT/$method"
  start=$(date +%s)
  "$PY" -m ssl_jax.train --config "configs/$method.py:cifar10,cpu" --workdir "$workdir"
  echo "{\"method\": \"$method\", \"train_wall_s\": $(( $(date +%s) - start ))}" \
    >> "$ROOT/wall_times.jsonl"
  "$PY" -m ssl_jax.evaluate --workdir "$workdir" --init random --protocols "${PROTOCOLS:-knn,linear}"
done
"$PY" -m ssl_jax.report "${METHODS[@]/#/$ROOT/}"
