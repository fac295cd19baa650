#!/usr/bin/env bash
# Issue 13's accelerator figures on one GPU or TPU host, as JSON lines, in <= 8 minutes:
#
#   bash bench/accelerator_suite.sh [--smoke] [--stages a,b] [--skip c] [--budget_s S]
#
# Stages and figures: bench/accelerator_suite.py (its docstring); how to run it on a lent
# device and what to carry: docs/performance.md, "Accelerator suite". `--smoke` runs every stage
# at toy size on CPU (tests/test_accelerator_suite.py). PYTHON picks the interpreter (default:
# the clone's .venv if there is one, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" bench/accelerator_suite.py "$@"
