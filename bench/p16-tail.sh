#!/usr/bin/env bash
# The pipelined SET's tail, two logkvd builds side by side: each run starts a
# fresh server (empty data directory, --fsync=interval, one loop thread) and
# runs logkv-bench -c 50 -n N -d 100 -r 100000 -t set -P 16 against it; the
# builds alternate, and every second pair runs B first, so that neither
# always follows the other.
#
#   LOGKVD_A=/tmp/logkvd-before LOGKVD_B=build-release/bin/logkvd bench/p16-tail.sh
#
# Environment: LOGKVD_A, LOGKVD_B (the builds; B defaults to
# build-release/bin/logkvd, A to B), PAIRS (runs of each, default 3), N
# (requests a run, default 800000), SEGMENT_BYTES (--segment_bytes, default
# the server's 64 MiB), LOGKV_BENCH (the load tool).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=p16-tail
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
logkvd_b=${LOGKVD_B:-$root/build-release/bin/logkvd}
logkvd_a=${LOGKVD_A:-$logkvd_b}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
pairs=${PAIRS:-3}
requests=${N:-800000}
segment_args=()
[[ -n ${SEGMENT_BYTES:-} ]] && segment_args=("--segment_bytes=$SEGMENT_BYTES")
[[ $pairs =~ ^[1-9][0-9]*$ ]] || die "PAIRS must be a positive integer, not '$pairs'"
[[ $requests =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '$requests'"
command -v ss >/dev/null || die "ss not found (apt-get install iproute2)"
ensure_release_binaries "$logkvd_b" "$bench"
[[ -x $logkvd_a ]] || die "no logkvd at $logkvd_a"

start_scratch p16-tail

# One run of build $2 (named $1): prints "name rps p50 p99 p99.9 max".
run_one() {
  local name=$1 binary=$2 port
  port=$(free_port)
  rm -rf "$work/data"
  "$binary" --listen="127.0.0.1:$port" --http= --data_dir="$work/data" --fsync=interval \
    --threads=1 "${segment_args[@]}" >"$work/log" 2>&1 &
  server_pid=$!
  wait_ready "$server_pid" "grep -q 'listening on' '$work/log'" "$work/log"
  "$bench" -h 127.0.0.1 -p "$port" -c 50 -n "$requests" -d 100 -r 100000 -t set -P 16 \
    --csv --csv-p999 2>/dev/null |
    awk -F, -v name="$name" '/^"SET"/ { gsub(/"/, ""); printf "%-2s %9.0f %7s %7s %7s %7s\n", name, $2, $5, $7, $9, $8 }'
  stop_pid "$server_pid"
  server_pid=""
}

echo "p16-tail: A=$logkvd_a B=$logkvd_b, -c 50 -n $requests -d 100 -r 100000 -t set -P 16"
echo "build       rps     p50     p99   p99.9     max   (ms)"
for pair in $(seq "$pairs"); do
  if ((pair % 2 == 1)); then
    run_one A "$logkvd_a"
    run_one B "$logkvd_b"
  else
    run_one B "$logkvd_b"
    run_one A "$logkvd_a"
  fi
done
