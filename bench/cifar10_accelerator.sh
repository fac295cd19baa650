#!/usr/bin/env bash
# Issue 13's CIFAR-10 table on one accelerator: every method's `cifar10` preset for 200 epochs in
# bfloat16 on the 10k train split of ../shared/data, its own k-NN and fast linear probe at the end,
# against the same encoder untrained (`ssl_jax.evaluate --init random`) and the raw pixels
# (`--init raw`, once), then one markdown table with training images/s (`ssl_jax.report`).
#
#   bash bench/cifar10_accelerator.sh [--smoke] [ROOT=/tmp/cifar10_accelerator] [METHOD ...]
#
# METHOD defaults to every config with a `cifar10` preset that trains from scratch, heaviest run
# first: distill and noisy_student start from a teacher's run, so their rows come from
# bench/label_budget.sh.
# EPOCHS (200) and PROTOCOLS (knn,linear) override; PYTHON picks the interpreter (.venv if
# present, else python3). Every run is EPOCHS long (total_steps=0: the semi-supervised presets
# state their length in steps).
#
# JOBS=N (default 1) trains N methods at once on the one device: a CIFAR-size step leaves an
# H100 mostly idle between kernels, and start-up, compilation and evaluation run on the host, so
# N runs overlap those with each other's steps. Each run may take 1/N of the device memory
# (XLA_PYTHON_CLIENT_MEM_FRACTION). A run that fails is listed in ROOT/failed.txt and left out of
# the table; the script then exits 1 after printing the table of the others.
#
# --smoke: the `smoke` preset (digits, no download) of simclr and mae for 4 steps in bfloat16,
# k-NN only: the whole chain on CPU in a minute (tests/test_accelerator_suite.py).
# Output: ROOT/<method>/ (run workdirs), ROOT/<method>.log (each run's output),
# ROOT/wall_times.jsonl, ROOT/table.md.
set -euo pipefail  # bash >= 5.1 (`wait -n -p`)
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
JOBS="${JOBS:-1}"
if ! [[ "$JOBS" =~ ^[1-9][0-9]*$ ]]; then
  echo "cifar10_accelerator: JOBS=$JOBS is not a positive integer." >&2
  exit 2
fi

if [ "$SMOKE" = 1 ]; then
  PRESET=smoke
  PROTOCOLS="${PROTOCOLS:-knn}"
  LENGTH=(--config.total_steps=4 --config.epochs=0 --config.checkpoint_every=4)
  [ ${#METHODS[@]} -eq 0 ] && METHODS=(simclr mae)
else
  PRESET=cifar10
  PROTOCOLS="${PROTOCOLS:-knn,linear}"
  LENGTH=(--config.epochs="${EPOCHS:-200}" --config.total_steps=0)
  DATA="${SSL_JAX_DATA:-$(cd .. && pwd)/shared/data}"
  if [ ! -f "$DATA/cifar10_train.npz" ]; then
    echo "cifar10_accelerator: $DATA/cifar10_train.npz not found; put ../shared/data beside" \
         "the clone or set SSL_JAX_DATA (or run --smoke)." >&2
    exit 2
  fi
  if [ ${#METHODS[@]} -eq 0 ]; then
    # Every config with the preset but the two that need a teacher run first, heaviest run
    # first: with JOBS > 1 the long runs start at once and the short ones fill in.
    mapfile -t METHODS < <(PYTHONPATH=. "$PY" bench/cifar10_flops.py --list)
    if [ ${#METHODS[@]} -eq 0 ]; then
      echo "cifar10_accelerator: listing the methods failed (python bench/cifar10_flops.py" \
           "--list); name them on the command line." >&2
      exit 2
    fi
  fi
fi

mkdir -p "$ROOT"
rm -f "$ROOT/failed.txt"
if [ "$JOBS" -gt 1 ]; then
  # Each run's share of the device; the default (75% to the first process) would starve the rest.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-$(
    "$PY" -c "print(round(0.9 / $JOBS, 3))")}"
fi

run_method() {  # run_method METHOD: train, evaluate untrained; its output goes to ROOT/METHOD.log
  local method=$1 workdir="$ROOT/$1" start
  start=$(date +%s)
  "$PY" -m ssl_jax.train --config "configs/$method.py:$PRESET" --workdir "$workdir" \
    --config.model.dtype=bfloat16 --config.eval.protocols="$PROTOCOLS" \
    --config.export_at_end=False --config.visualize=False "${LENGTH[@]}"
  echo "{\"method\": \"$method\", \"train_wall_s\": $(( $(date +%s) - start ))}" \
    >> "$ROOT/wall_times.jsonl"
  "$PY" -m ssl_jax.evaluate --workdir "$workdir" --init random --protocols "$PROTOCOLS"
}

declare -A RUNNING=()  # pid -> method
finish_one() {  # Waits for whichever run ends first; a failure is recorded, not fatal.
  local pid status=0
  wait -n -p pid "${!RUNNING[@]}" || status=$?
  if [ "$status" != 0 ]; then
    echo "${RUNNING[$pid]}" >> "$ROOT/failed.txt"
    echo "cifar10_accelerator: ${RUNNING[$pid]} failed; see $ROOT/${RUNNING[$pid]}.log" >&2
  fi
  unset "RUNNING[$pid]"
}

for method in "${METHODS[@]}"; do
  while [ ${#RUNNING[@]} -ge "$JOBS" ]; do finish_one; done
  echo "cifar10_accelerator: $method" >&2
  run_method "$method" > "$ROOT/$method.log" 2>&1 &
  RUNNING[$!]=$method
done
while [ ${#RUNNING[@]} -gt 0 ]; do finish_one; done

WORKDIRS=()
for method in "${METHODS[@]}"; do
  if ! grep -qx "$method" "$ROOT/failed.txt" 2>/dev/null; then
    WORKDIRS+=("$ROOT/$method")
  fi
done
if [ ${#WORKDIRS[@]} -eq 0 ]; then
  echo "cifar10_accelerator: every run failed; see $ROOT/*.log" >&2
  exit 1
fi
# Raw pixels do not depend on the method: one evaluation, shown under the first run.
"$PY" -m ssl_jax.evaluate --workdir "${WORKDIRS[0]}" --init raw --protocols "$PROTOCOLS"
"$PY" -m ssl_jax.report --throughput "${WORKDIRS[@]}" | tee "$ROOT/table.md"
[ ! -s "$ROOT/failed.txt" ]
