#!/usr/bin/env bash
# logkvd against redis-server on this machine, under the same load: redis-benchmark
# and logkv-bench run with identical parameters, and one table compares them.
#
#   bench/vs-redis.sh              # 1,000,000 requests per test (the figures of record)
#   N=20000 bench/vs-redis.sh      # a quick run
#
# Workloads, each as SET then GET, 50 connections, 100-byte values, 100,000 random keys:
#   P1  interval   no pipelining; redis --appendfsync everysec, logkvd --fsync=interval
#   P16 interval   16 requests in flight per connection; same durability
#   P1  always     no pipelining; redis --appendfsync always, logkvd --fsync=always
# Redis is also driven by logkv-bench itself (--resp: the same commands in Redis's protocol),
# and a second table compares the two servers under that one client: the two tools differ in
# speed, so at -c 50 they keep different numbers of requests at their servers, and a server's
# latency follows that number.
# Each server starts with an empty data directory in a temporary folder, listens on a free
# loopback port and is stopped before the other one runs, so they never share the CPU.
#
# Environment: N (requests per test), LOGKVD (server binary, default build-release/bin/logkvd),
# LOGKV_BENCH (load tool, default build-release/bin/logkv-bench), LOGKVD_ARGS (server flags,
# default "--threads=1"). Missing default binaries are built (Release, build-release/).
#
# Both servers run one event-loop thread (Redis executes commands on one thread), and the
# load generator has the other core of a 2-core machine. Giving logkvd a loop per core here
# would put three busy threads on two cores; its tail latency then measures the scheduler.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=vs-redis
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
requests=${N:-1000000}
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS---threads=1}"
clients=50
value_bytes=100
keyspace=100000


for tool in redis-server redis-benchmark redis-cli ss; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install redis-server redis-tools iproute2)"
done
[[ $requests =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '$requests'"

ensure_release_binaries "$logkvd" "$bench"

work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-vs-redis.XXXXXX")
server_pid=""

stop_server() {
  # Both servers flush and sync on SIGTERM.
  stop_pid "$server_pid"
  server_pid=""
}

cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
# Turn an interrupt into a normal exit so the EXIT trap stops the servers.
trap 'exit 130' INT TERM

start_redis() {  # $1: appendfsync policy, $2: a name for a second, empty, directory
  local dir=$work/redis-$1${2:+-$2}
  mkdir -p "$dir"
  port=$(free_port) || exit 1
  redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes --save '' \
    --appendonly yes --appendfsync "$1" --dir "$dir" --daemonize no \
    --logfile "$dir/redis.log" &
  server_pid=$!
  wait_ready "$server_pid" "[[ \$(redis-cli -h 127.0.0.1 -p $port ping 2>/dev/null) == PONG ]]" "$dir/redis.log"
}

start_logkvd() {  # $1: fsync mode
  local dir=$work/logkvd-$1
  mkdir -p "$dir/data"
  port=$(free_port) || exit 1
  "$logkvd" --listen="127.0.0.1:$port" --http= --data_dir="$dir/data" --fsync="$1" \
    "${logkvd_extra_args[@]}" 2>"$dir/logkvd.log" &
  server_pid=$!
  wait_ready "$server_pid" "grep -q 'listening on' '$dir/logkvd.log'" "$dir/logkvd.log"
}

# Appends "mode,system,test,rps,p50,p99,p999" rows to $work/results.csv; failures become a row
# of "failed" so the table still shows everything else.
failures=0
run() {  # $1: mode label, $2: system (redis|redis-lb|logkv), $3: pipeline, $4: fsync label
  local mode=$1 system=$2 pipeline=$3 out=$work/$2-${1// /_}
  local args=(-h 127.0.0.1 -p "$port" -c "$clients" -n "$requests" -d "$value_bytes"
    -r "$keyspace" -t set,get -P "$pipeline")
  echo "vs-redis: $system, $mode ..." >&2
  local rc=0
  if [[ $system == redis ]]; then
    redis-benchmark "${args[@]}" >"$out.txt" 2>"$out.err" || rc=$?
    redis_benchmark_rows <"$out.txt" >"$out.csv"
  else
    [[ $system == redis-lb ]] && args+=(--resp)
    "$bench" "${args[@]}" --csv --csv-p999 --fsync-mode "$4" >"$out.txt" 2>"$out.err" || rc=$?
    logkv_bench_rows <"$out.txt" >"$out.csv"
  fi
  if [[ $rc -ne 0 ]] || ! grep -q '^SET,' "$out.csv" || ! grep -q '^GET,' "$out.csv"; then
    echo "vs-redis: $system ($mode) failed with status $rc:" >&2
    cat "$out.err" >&2
    failures=$((failures + 1))
    printf '%s,%s,SET,failed,-,-,-\n%s,%s,GET,failed,-,-,-\n' "$mode" "$system" "$mode" \
      "$system" >>"$work/results.csv"
    return 0
  fi
  awk -v prefix="$mode,$system," '{ print prefix $0 }' "$out.csv" >>"$work/results.csv"
}

: >"$work/results.csv"

start_redis everysec
run "P1 interval" redis 1
run "P16 interval" redis 16
stop_server
# Started again, empty, as logkvd is for its runs.
start_redis everysec lb
run "P1 interval" redis-lb 1 everysec
run "P16 interval" redis-lb 16 everysec
stop_server
start_logkvd interval
run "P1 interval" logkv 1 interval
run "P16 interval" logkv 16 interval
stop_server

start_redis always
run "P1 always" redis 1
stop_server
start_redis always lb
run "P1 always" redis-lb 1 always
stop_server
start_logkvd always
run "P1 always" logkv 1 always
stop_server

echo
echo "logkvd vs redis-server: -c $clients -n $requests -d $value_bytes -r $keyspace -t set,get," \
  "$(nproc) cores, $(redis-server --version | awk '{print $3}')"
echo "interval = redis appendfsync everysec / logkvd --fsync=interval;" \
  "always = appendfsync always / --fsync=always; latencies in ms (Redis's p99.9: the first" \
  "row of its percentile distribution at or above 99.9%)"
# Prints the table of logkv's rows against those of system $1 (redis: redis-benchmark's runs;
# redis-lb: logkv-bench --resp's).
print_table() {
  awk -F, -v ref="$1" '
    { key = $1 SUBSEP $3
      if (!(key in seen)) { seen[key] = 1; order[++rows] = key; mode[key] = $1; test[key] = $3 }
      rps[key, $2] = $4; p50[key, $2] = $5; p99[key, $2] = $6; p999[key, $2] = $7 }
    END {
      printf "%-13s %-4s %11s %11s %11s %9s %9s %9s %9s %9s %9s\n", "mode", "test", "redis rps",
             "logkv rps", "logkv/redis", "redis p50", "redis p99", "redis p99.9", "logkv p50",
             "logkv p99", "logkv p99.9"
      for (i = 1; i <= rows; i++) {
        k = order[i]
        r = rps[k, ref]; l = rps[k, "logkv"]
        ratio = (r + 0 > 0 && l + 0 > 0) ? sprintf("%.2f", l / r) : "-"
        printf "%-13s %-4s %11s %11s %11s %9s %9s %9s %9s %9s %9s\n", mode[k], test[k], r, l, ratio,
               p50[k, ref], p99[k, ref], p999[k, ref], p50[k, "logkv"], p99[k, "logkv"],
               p999[k, "logkv"]
      }
    }' "$work/results.csv"
}

echo
print_table redis
echo
echo "The same client for both: logkv-bench against logkvd, and logkv-bench --resp against" \
  "redis-server (same servers' settings as above)"
echo
print_table redis-lb

[[ $failures -eq 0 ]] || die "$failures run(s) failed (see above)"
