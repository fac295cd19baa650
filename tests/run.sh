#!/usr/bin/env bash
# Runs the test suite (CPU) in the project's .venv, creating it first if needed.
#   bash tests/run.sh                 # the suite (about 20 minutes on 2 cores)
#   bash tests/run.sh -k dino         # any pytest arguments
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/launch/setup_env.sh"
cd "$repo"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
exec "$SSL_JAX_PYTHON" -m pytest "$@"
