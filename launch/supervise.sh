#!/usr/bin/env bash
# Runs a training command until it finishes, restarting it after a crash or a preemption.
#
#   bash launch/supervise.sh --log FILE [--pid-file FILE] [--max-restarts N] [--delay S]
#        [--min-seconds S] -- COMMAND [ARGS ...]
#
# Every start resumes from the run's latest checkpoint (ssl_jax.train does that itself). The run
# is finished when COMMAND exits 0 and its output lacks "Preempted: checkpoint saved at step",
# the line ssl_jax.train logs when a SIGTERM made it save and exit before the last step. Any
# other end restarts it after --delay seconds (default 30), at most --max-restarts times
# (default 20); three failures in a row that each lasted under --min-seconds (default 300) stop
# the supervisor, since a bad config or install fails the same way every time.
#
# COMMAND's output is appended to the --log file. The supervisor writes its own pid to
# --pid-file; a SIGTERM or SIGINT to it (launch/tpu_vm.sh stop) is passed on to COMMAND, which
# saves a checkpoint, and the supervisor exits without restarting.
set -uo pipefail

log="" pid_file="" max_restarts=20 delay=30 min_seconds=300
while [ $# -gt 0 ]; do
  case "$1" in
    --log) log="${2:?--log needs a file}"; shift 2 ;;
    --pid-file) pid_file="${2:?--pid-file needs a file}"; shift 2 ;;
    --max-restarts) max_restarts="${2:?--max-restarts needs a number}"; shift 2 ;;
    --delay) delay="${2:?--delay needs seconds}"; shift 2 ;;
    --min-seconds) min_seconds="${2:?--min-seconds needs seconds}"; shift 2 ;;
    --) shift; break ;;
    *) echo "supervise.sh: unknown option $1 (COMMAND goes after --)" >&2; exit 2 ;;
  esac
done
if [ -z "$log" ] || [ $# -eq 0 ]; then
  echo "usage: supervise.sh --log FILE [options] -- COMMAND [ARGS ...]" >&2
  exit 2
fi
readonly PREEMPTED_LINE="Preempted: checkpoint saved at step"

say() { echo "[supervise $(date -u +%FT%TZ)] $*" >> "$log"; }

[ -n "$pid_file" ] && echo "$$" > "$pid_file"
stopping=0 child=""
forward() {
  stopping=1
  if [ -n "$child" ]; then
    kill -TERM "$child" 2>/dev/null
  fi
}
trap forward TERM INT

restarts=0 quick_failures=0
while true; do
  start_bytes="$(stat -c %s "$log" 2>/dev/null || echo 0)"
  start_time="$(date +%s)"
  say "start (restart $restarts of at most $max_restarts): $*"
  "$@" >> "$log" 2>&1 &
  child=$!
  wait "$child"
  status=$?
  # A trapped signal interrupts `wait`; wait again until the command has really exited.
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    status=$?
  done
  child=""
  if [ "$stopping" = 1 ]; then
    say "stopped by signal; command exited with $status"
    exit "$status"
  fi
  preempted=0
  if tail -c "+$((start_bytes + 1))" "$log" | grep -qF "$PREEMPTED_LINE"; then
    preempted=1
  fi
  if [ "$status" = 0 ] && [ "$preempted" = 0 ]; then
    say "finished"
    exit 0
  fi
  if [ "$status" != 0 ] && [ $(($(date +%s) - start_time)) -lt "$min_seconds" ]; then
    quick_failures=$((quick_failures + 1))
  else
    quick_failures=0
  fi
  if [ "$quick_failures" -ge 3 ]; then
    say "giving up: 3 failures in a row, each under ${min_seconds}s (last exit $status)"
    exit "$status"
  fi
  if [ "$restarts" -ge "$max_restarts" ]; then
    say "giving up after $restarts restarts (last exit $status)"
    exit 1
  fi
  restarts=$((restarts + 1))
  say "exit $status$([ "$preempted" = 1 ] && echo ', preempted'); restarting in ${delay}s"
  sleep "$delay" &
  wait $! || true
  if [ "$stopping" = 1 ]; then
    say "stopped by signal while waiting to restart"
    exit 0
  fi
done
