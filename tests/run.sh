#!/usr/bin/env bash
# Runs the test suite (CPU) in the project's .venv, creating it first if needed.
#   bash tests/run.sh                 # the suite, in 2 worker processes (pytest-xdist)
#   bash tests/run.sh -k dino         # any pytest arguments
#   SSL_JAX_TEST_WORKERS=0 bash tests/run.sh   # one process (pdb, -s, profiling)
# Two workers keep both cores busy while the other compiles (XLA compiles on one thread);
# `--dist loadfile` keeps each file in one worker, so a module's shared training run is made once.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/launch/setup_env.sh"
cd "$repo"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
workers="${SSL_JAX_TEST_WORKERS:-2}"
parallel=()
if [ "$workers" != "0" ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
exec "$SSL_JAX_PYTHON" -m pytest "${parallel[@]}" "$@"
