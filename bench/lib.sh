# shellcheck shell=bash
# Helpers shared by the comparison scripts in bench/ (sourced, not run).
# The sourcing script sets bench_name (its name in messages) first.

die() {
  echo "${bench_name:-bench}: $*" >&2
  exit 1
}

# A loopback port that nothing uses at the moment (the server binds it right after;
# a process that takes it in between makes the start fail, and the run says so).
free_port() {
  local port
  for _ in $(seq 100); do
    port=$(shuf -i 20000-60999 -n 1)
    if [[ -z $(ss -Htan "sport = :$port") ]]; then
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# Stops process $1: SIGTERM (servers flush and sync), then SIGKILL after 10 s.
stop_pid() {
  local pid=$1
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
