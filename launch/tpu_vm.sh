#!/usr/bin/env bash
# Cloud TPU VM lifecycle for ssl_jax (docs/tpu.md walks through a whole ImageNet run).
#
#   export TPU_NAME=ssl-jax TPU_ZONE=us-central2-b TPU_TYPE=v4-32 [TPU_PROJECT=my-project]
#   bash launch/tpu_vm.sh create [--spot] [--queued]   # on-demand, spot, or a queued resource
#   bash launch/tpu_vm.sh status [--queued]            # VM (or queued-resource) state
#   bash launch/tpu_vm.sh setup                        # this commit + `pip install .[tpu,tf]`
#   bash launch/tpu_vm.sh run CONFIG WORKDIR [--config.key=value ...]
#   bash launch/tpu_vm.sh logs [WORKER]                # follow a worker's log (default 0)
#   bash launch/tpu_vm.sh ssh [WORKER] [COMMAND ...]   # a shell (or one command) on a worker
#   bash launch/tpu_vm.sh stop                         # SIGTERM to the recorded supervisors
#   bash launch/tpu_vm.sh delete [--queued]
#
# Any command takes --dry-run: print every gcloud command instead of running it.
# `run` starts the same command on every worker (--worker=all) under launch/supervise.sh, which
# restarts it after a crash or preemption until the run reaches its last step (each start
# resumes from the latest checkpoint). JAX discovers the pod's hosts itself. Each worker logs
# to ~/ssl_jax_run/train.log and records the supervisor's pid in ~/ssl_jax_run/supervisor.pid;
# `stop` signals exactly that pid, and the run saves a checkpoint before exiting. For a pod the
# workdir must be on GCS (gs://...): every worker writes its shards of each checkpoint there.
# Other settings: TPU_VERSION (default tpu-ubuntu2204-base), REMOTE_DIR (default ssl_jax, under
# the worker's home).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry_run=0
args=()
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then dry_run=1; else args+=("$arg"); fi
done
set -- "${args[@]+"${args[@]}"}"

usage() {
  # The comment block at the top of this file, whatever its length.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  -h|--help|help|"") usage 0 ;;
  create|status|setup|run|logs|ssh|stop|delete) ;;
  *) echo "Unknown command: $cmd" >&2; usage 2 ;;
esac

TPU_NAME="${TPU_NAME:?set TPU_NAME (the TPU VM name), e.g. export TPU_NAME=ssl-jax}"
TPU_ZONE="${TPU_ZONE:?set TPU_ZONE, e.g. export TPU_ZONE=us-central2-b}"
TPU_TYPE="${TPU_TYPE:-v4-8}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-ssl_jax}"
RUN_DIR="ssl_jax_run"      # under each worker's home: train.log, supervisor.pid
location=(--zone "$TPU_ZONE")
if [ -n "${TPU_PROJECT:-}" ]; then
  location+=(--project "$TPU_PROJECT")
fi

# quote, run_cmd
# shellcheck source=launch/dry_run.sh
source "$repo/launch/dry_run.sh"

tpu() { run_cmd gcloud compute tpus tpu-vm "$@"; }
queued() { run_cmd gcloud compute tpus queued-resources "$@"; }
# Runs a shell command line on every worker (or on worker $2).
on_workers() { tpu ssh "$TPU_NAME" "${location[@]}" --worker="${2:-all}" --command "$1"; }

options() {   # Parses --spot / --queued for create, status and delete.
  spot=0 use_queue=0
  for option in "$@"; do
    case "$option" in
      --spot) spot=1 ;;
      --queued) use_queue=1 ;;
      *) echo "Unknown option for $cmd: $option" >&2; exit 2 ;;
    esac
  done
}

case "$cmd" in
  create)
    options "$@"
    capacity=()
    [ "$spot" = 1 ] && capacity+=(--spot)
    if [ "$use_queue" = 1 ]; then
      # A queued resource waits for capacity instead of failing; `status --queued` shows it.
      queued create "$TPU_NAME" --node-id "$TPU_NAME" "${location[@]}" \
        --accelerator-type "$TPU_TYPE" --runtime-version "$TPU_VERSION" "${capacity[@]}"
    else
      tpu create "$TPU_NAME" "${location[@]}" --accelerator-type "$TPU_TYPE" \
        --version "$TPU_VERSION" "${capacity[@]}"
    fi
    ;;
  status)
    options "$@"
    if [ "$use_queue" = 1 ]; then
      queued describe "$TPU_NAME" "${location[@]}" --format "value(state.state)"
    else
      tpu describe "$TPU_NAME" "${location[@]}" --format "value(state)"
    fi
    ;;
  setup)
    # This commit (not uncommitted edits) goes to every worker, which installs the pinned
    # requirements and then the package with the TPU and TFDS extras.
    tarball="${TMPDIR:-/tmp}/ssl_jax_$TPU_NAME.tar.gz"
    run_cmd git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
    tpu scp "$tarball" "$TPU_NAME:ssl_jax.tar.gz" "${location[@]}" --worker=all
    on_workers "set -e; rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && \
tar -xzf ~/ssl_jax.tar.gz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && python3 -m venv .venv && \
.venv/bin/pip install -q -U pip && .venv/bin/pip install -q -r requirements.txt && \
.venv/bin/pip install -q '.[tpu,tf]' && .venv/bin/python -c 'import ssl_jax, jax; print(jax.devices())'"
    ;;
  run)
    if [ $# -lt 2 ]; then
      echo "usage: tpu_vm.sh run CONFIG WORKDIR [--config.key=value ...]" >&2
      exit 2
    fi
    train=(.venv/bin/python -m ssl_jax.train --config "$1" --workdir "$2" "${@:3}")
    on_workers "mkdir -p ~/$RUN_DIR && cd ~/$REMOTE_DIR && nohup bash launch/supervise.sh \
--log ~/$RUN_DIR/train.log --pid-file ~/$RUN_DIR/supervisor.pid -- $(quote "${train[@]}") \
> /dev/null 2>&1 < /dev/null &"
    if [ "$dry_run" = 0 ]; then
      echo "Started on every worker; follow with: bash launch/tpu_vm.sh logs [WORKER]"
    fi
    ;;
  logs)
    on_workers "tail -n 100 -F ~/$RUN_DIR/train.log" "${1:-0}"
    ;;
  ssh)
    worker="${1:-0}"
    if [ $# -gt 1 ]; then
      on_workers "${*:2}" "$worker"
    else
      tpu ssh "$TPU_NAME" "${location[@]}" --worker="$worker"
    fi
    ;;
  stop)
    # Signals the recorded supervisor on each worker; it passes SIGTERM on to the run, which
    # saves a checkpoint and exits, and does not restart it.
    on_workers "pid_file=~/$RUN_DIR/supervisor.pid; if [ -f \$pid_file ]; then \
kill -TERM \$(cat \$pid_file) && echo \"stopping supervisor \$(cat \$pid_file)\"; \
rm -f \$pid_file; else echo 'no supervisor recorded'; fi"
    ;;
  delete)
    options "$@"
    if [ "$use_queue" = 1 ]; then
      queued delete "$TPU_NAME" "${location[@]}" --force --quiet   # the VM with it
    else
      tpu delete "$TPU_NAME" "${location[@]}" --quiet
    fi
    ;;
  *)
    echo "Unknown command: $cmd" >&2
    usage 2
    ;;
esac
