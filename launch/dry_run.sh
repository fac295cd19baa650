# shellcheck shell=bash
# Sourced by the launchers (tpu_vm.sh, gpu_multinode.sh): run a command, or with dry_run=1 print
# it as a shell line that could be pasted and run.

# Shell-quotes each argument (bare when safe, else in single quotes), space-separated. `~` stays
# bare so that a remote shell expands it in the worker's home.
quote() {
  local out=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+~-]+$ ]]; then
      out+=("$arg")
    else
      out+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# Prints the command (dry_run=1), or runs it.
run_cmd() {
  if [ "${dry_run:-0}" = 1 ]; then
    quote "$@"
  else
    "$@"
  fi
}
