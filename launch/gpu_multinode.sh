#!/usr/bin/env bash
# Multi-node GPU training: one process per node, each driving all of its node's GPUs.
#
#   bash launch/gpu_multinode.sh sbatch [--dry-run] --nodes N [--gpus-per-node G]
#        [--partition P] [--account A] [--time HH:MM:SS] CONFIG WORKDIR [--config.key=value ...]
#       Submits a SLURM job (one srun task per node); ssl_jax reads SLURM's variables and joins
#       the N-process job itself. SLURM sends SIGTERM 120 s before the time limit, so the run
#       saves a checkpoint; submitting the same job again resumes it.
#   bash launch/gpu_multinode.sh run [--dry-run] --nnodes N --node-rank R --coordinator HOST:PORT
#        CONFIG WORKDIR [--config.key=value ...]
#       Starts process R of N on this node (torchrun's --nnodes/--node_rank/--master_addr:port);
#       run it on every node with the same --coordinator (node 0 and a free port).
#   bash launch/gpu_multinode.sh hosts [--dry-run] --hosts H0,H1,... [--port P]
#        CONFIG WORKDIR [--config.key=value ...]
#       Runs `run` on every host over ssh (H0 coordinates), logs to WORKDIR_LOGS/H.log
#       (default ./multinode_logs), and waits for all of them.
#
# --dry-run prints every command (and the sbatch script) instead of running it. WORKDIR must be
# shared by all nodes (NFS, or gs://). Python: $SSL_JAX_PYTHON (default: python3 with ssl_jax
# installed, e.g. `pip install '.[cuda]'`); on remote hosts the clone is at $REMOTE_DIR
# (default: this clone's path).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_bin="${SSL_JAX_PYTHON:-python3}"
dry_run=0

usage() {
  # The comment block at the top of this file, whatever its length.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

die() {
  echo "gpu_multinode.sh: $*" >&2
  exit 2
}

# quote, run_cmd
# shellcheck source=launch/dry_run.sh
source "$repo/launch/dry_run.sh"

# The training command line shared by every mode: CONFIG WORKDIR [overrides] -> argv.
train_args() {
  [ $# -ge 2 ] || die "CONFIG and WORKDIR are required (see: bash launch/gpu_multinode.sh help)."
  local config="$1" workdir="$2"
  shift 2
  for override in "$@"; do
    case "$override" in
      --config.*) ;;
      *) die "unexpected argument '$override' after CONFIG WORKDIR (only --config.key=value)." ;;
    esac
  done
  train_argv=(-m ssl_jax.train --config "$config" --workdir "$workdir" "$@")
}

cmd_sbatch() {
  local nodes="" gpus=8 partition="" account="" time_limit="24:00:00"
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) dry_run=1; shift ;;
      --nodes) nodes="${2:?--nodes needs a value}"; shift 2 ;;
      --gpus-per-node) gpus="${2:?--gpus-per-node needs a value}"; shift 2 ;;
      --partition) partition="${2:?--partition needs a value}"; shift 2 ;;
      --account) account="${2:?--account needs a value}"; shift 2 ;;
      --time) time_limit="${2:?--time needs a value}"; shift 2 ;;
      *) break ;;
    esac
  done
  [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes N (a positive integer) is required."
  train_args "$@"
  local script
  script="$(
    echo "#!/usr/bin/env bash"
    echo "#SBATCH --job-name=ssl_jax"
    echo "#SBATCH --nodes=$nodes"
    echo "#SBATCH --ntasks-per-node=1"
    echo "#SBATCH --gpus-per-node=$gpus"
    echo "#SBATCH --time=$time_limit"
    echo "#SBATCH --signal=TERM@120"
    echo "#SBATCH --output=slurm-%x-%j.out"
    [ -n "$partition" ] && echo "#SBATCH --partition=$partition"
    [ -n "$account" ] && echo "#SBATCH --account=$account"
    echo "set -euo pipefail"
    echo "cd $(quote "$repo")"
    echo "srun --kill-on-bad-exit=1 $(quote "$python_bin" "${train_argv[@]}")"
  )"
  if [ "$dry_run" = 1 ]; then
    echo "# sbatch script (read from stdin):"
    echo "$script"
    echo "# command:"
    echo "sbatch"
  else
    sbatch <<< "$script"
  fi
}

cmd_run() {
  local nnodes="" rank="" coordinator=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) dry_run=1; shift ;;
      --nnodes) nnodes="${2:?--nnodes needs a value}"; shift 2 ;;
      --node-rank) rank="${2:?--node-rank needs a value}"; shift 2 ;;
      --coordinator) coordinator="${2:?--coordinator needs a value}"; shift 2 ;;
      *) break ;;
    esac
  done
  [[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || die "--nnodes N (a positive integer) is required."
  if ! [[ "$rank" =~ ^[0-9]+$ ]] || [ "$rank" -ge "$nnodes" ]; then
    die "--node-rank R in [0, $nnodes) is required."
  fi
  [[ "$coordinator" == *:* ]] || die "--coordinator HOST:PORT (node 0 and a free port) is required."
  train_args "$@"
  run_cmd "$python_bin" "${train_argv[@]}" --coordinator_address "$coordinator" \
    --num_processes "$nnodes" --process_id "$rank"
}

cmd_hosts() {
  local hosts="" port=12355
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) dry_run=1; shift ;;
      --hosts) hosts="${2:?--hosts needs a value}"; shift 2 ;;
      --port) port="${2:?--port needs a value}"; shift 2 ;;
      *) break ;;
    esac
  done
  [ -n "$hosts" ] || die "--hosts H0,H1,... is required."
  train_args "$@"
  local -a host_list
  IFS=, read -r -a host_list <<< "$hosts"
  local nnodes="${#host_list[@]}" log_dir="${WORKDIR_LOGS:-multinode_logs}"
  local remote_dir="${REMOTE_DIR:-$repo}" pids=() rank=0
  run_cmd mkdir -p "$log_dir"
  for host in "${host_list[@]}"; do
    local remote
    remote="cd $(quote "$remote_dir") && SSL_JAX_PYTHON=$(quote "$python_bin")"
    remote+=" bash launch/gpu_multinode.sh run $(quote --nnodes "$nnodes" --node-rank "$rank" \
      --coordinator "${host_list[0]}:$port" "$@")"
    if [ "$dry_run" = 1 ]; then
      echo "ssh $host $(quote "$remote") > $(quote "$log_dir/$host.log") 2>&1 &"
    else
      # The remote command line is built (and quoted) here, on purpose.
      # shellcheck disable=SC2029
      ssh "$host" "$remote" > "$log_dir/$host.log" 2>&1 &
      pids+=("$!")
      echo "node $rank: $host (log: $log_dir/$host.log)"
    fi
    rank=$((rank + 1))
  done
  local status=0
  for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
  done
  return "$status"
}

command="${1:-}"
shift || true
case "$command" in
  sbatch) cmd_sbatch "$@" ;;
  run) cmd_run "$@" ;;
  hosts) cmd_hosts "$@" ;;
  -h|--help|help|"") usage 0 ;;
  *) echo "Unknown command: $command" >&2; usage 2 ;;
esac
