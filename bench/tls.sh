#!/usr/bin/env bash
# What TLS costs logkvd, beside what it costs redis-server, in one run on this machine:
# each server plaintext and over TLS 1.3 (the same EC P-256 certificate, made here by
# tools/make-certs.sh), under the same load from its own tool with identical parameters.
#
#   bench/tls.sh               # 300,000 requests per test, 1,500,000 per pipelined test
#   N=20000 bench/tls.sh       # a quick run
# Pipelined tests run N_P16 requests (default 5 x N): at 16 in flight they are several
# times faster, and a run of a second or two measures mostly the machine's moment.
#
# Workloads, each as SET then GET, 50 connections, 100-byte values, 100,000 random keys:
#   P1   no pipelining          P16  16 requests in flight per connection
# logkv-bench against logkvd, redis-benchmark against redis-server (appendfsync everysec
# vs --fsync=interval); and logkv-bench --resp against redis-server over TLS (restarted empty
# for it), so that the last two columns compare the servers under one client (the two tools
# differ in speed, and a slower tool keeps fewer requests at its server). With wrk
# installed, also HTTP GET of one key over HTTP and HTTPS (wrk -c 50 for WRK_SECONDS,
# default 10).
# Each server starts with an empty data directory, listens on a free loopback port and is
# stopped before the next one runs. Both run one event-loop thread, as in vs-redis.sh.
#
# Environment: N, N_P16, WRK_SECONDS, LOGKVD, LOGKV_BENCH (default build-release/bin/, built when
# missing), LOGKVD_ARGS (default "--threads=1").
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=tls
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
requests=${N:-300000}
pipelined_requests=${N_P16:-$((requests * 5))}
wrk_seconds=${WRK_SECONDS:-10}
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS---threads=1}"
clients=50
value_bytes=100
keyspace=100000

for tool in redis-server redis-benchmark redis-cli ss openssl; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install redis-server redis-tools iproute2 openssl)"
done
[[ $requests =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '$requests'"
[[ $pipelined_requests =~ ^[1-9][0-9]*$ ]] ||
  die "N_P16 must be a positive integer, not '$pipelined_requests'"
ensure_release_binaries "$logkvd" "$bench"

work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-tls.XXXXXX")
server_pid=""
stop_server() {
  stop_pid "$server_pid"
  server_pid=""
}
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

certs=$work/certs
"$root/tools/make-certs.sh" "$certs" ca
"$root/tools/make-certs.sh" "$certs" server node localhost 127.0.0.1

start_redis() {  # $1: plain | tls, $2: a name for a second, empty, directory
  start_redis_server "$work/redis-$1${2:+-$2}" "$1" "$certs"
}

start_logkvd() {  # $1: plain | tls
  local dir=$work/logkvd-$1
  mkdir -p "$dir/data"
  port=$(free_port) || exit 1
  http_port=$(free_port) || exit 1
  local tls=()
  [[ $1 == tls ]] && tls=(--tls-cert="$certs/node.pem" --tls-key="$certs/node.key")
  "$logkvd" --listen="127.0.0.1:$port" --http="127.0.0.1:$http_port" --data_dir="$dir/data" \
    --fsync=interval "${tls[@]}" "${logkvd_extra_args[@]}" 2>"$dir/logkvd.log" &
  server_pid=$!
  wait_ready "$server_pid" "grep -q 'listening on .*HTTP' '$dir/logkvd.log'" "$dir/logkvd.log"
}

# Appends "system,transport,mode,test,rps,p50,p99" rows to $work/results.csv.
failures=0
run() {  # $1: system (redis|redis-lb|logkv), $2: transport (plain|tls), $3: pipeline
  local system=$1 transport=$2 pipeline=$3 out=$work/$1-$2-P$3
  local n=$requests
  [[ $pipeline == 1 ]] || n=$pipelined_requests
  local args=(-h 127.0.0.1 -p "$port" -c "$clients" -n "$n" -d "$value_bytes"
    -r "$keyspace" -t set,get -P "$pipeline" --csv)
  [[ $transport == tls ]] && args+=(--tls --cacert "$certs/ca.pem")
  echo "tls: $system $transport P$pipeline ..." >&2
  local rc=0
  if [[ $system == redis ]]; then
    redis-benchmark "${args[@]}" >"$out.csv" 2>"$out.err" || rc=$?
  else
    [[ $system == redis-lb ]] && args+=(--resp)
    "$bench" "${args[@]}" >"$out.csv" 2>"$out.err" || rc=$?
  fi
  if [[ $rc -ne 0 ]] || ! grep -q '^"SET"' "$out.csv" || ! grep -q '^"GET"' "$out.csv"; then
    echo "tls: $system $transport P$pipeline failed with status $rc:" >&2
    cat "$out.err" >&2
    failures=$((failures + 1))
    return 0
  fi
  tr -d '"' <"$out.csv" | awk -F, -v s="$system" -v t="$transport" -v m="P$pipeline" \
    'NR > 1 && NF >= 8 { print s "," t "," m "," $1 "," $2 "," $5 "," $7 }' >>"$work/results.csv"
}

run_wrk() {  # $1: transport
  command -v wrk >/dev/null || return 0
  local scheme=http
  [[ $1 == tls ]] && scheme=https
  local url="$scheme://127.0.0.1:$http_port/kv/wrk"
  curl -sS -k -X PUT -d '"value"' "$url" >/dev/null
  echo "tls: logkv $1 wrk GET ..." >&2
  local rps
  rps=$(wrk -t1 -c "$clients" -d "${wrk_seconds}s" "$url" | awk '/Requests\/sec/ { print $2 }')
  [[ -n $rps ]] || { failures=$((failures + 1)); return 0; }
  echo "logkv,$1,wrk,HTTP GET,$rps,-,-" >>"$work/results.csv"
}

: >"$work/results.csv"
for transport in plain tls; do
  start_redis "$transport"
  run redis "$transport" 1
  run redis "$transport" 16
  stop_server
  if [[ $transport == tls ]]; then
    # Started again, empty, as logkvd is for its runs.
    start_redis "$transport" lb
    run redis-lb "$transport" 1
    run redis-lb "$transport" 16
    stop_server
  fi
  start_logkvd "$transport"
  run logkv "$transport" 1
  run logkv "$transport" 16
  run_wrk "$transport"
  stop_server
done

echo
echo "TLS 1.3 vs plaintext: -c $clients -n $requests (P16: $pipelined_requests) -d $value_bytes" \
  "-r $keyspace, $(nproc) cores," \
  "$(redis-server --version | awk '{print $3}'), $(openssl version | awk '{print $1, $2}')"
echo
awk -F, '
  { key = $3 SUBSEP $4
    if (!(key in seen)) { seen[key] = 1; order[++rows] = key }
    rps[key, $1, $2] = $5 }
  function ratio(a, b) { return (a + 0 > 0 && b + 0 > 0) ? sprintf("%.2f", a / b) : "-" }
  END {
    printf "%-4s %-8s %10s %10s %10s %10s %12s %12s %13s %13s\n", "mode", "test", "redis",
           "redis TLS", "logkv", "logkv TLS", "TLS/redisTLS", "TLS/plain", "redisTLS(lb)",
           "TLS/redisTLS"
    for (i = 1; i <= rows; i++) {
      k = order[i]; split(k, part, SUBSEP)
      rp = rps[k, "redis", "plain"]; rt = rps[k, "redis", "tls"]
      lp = rps[k, "logkv", "plain"]; lt = rps[k, "logkv", "tls"]
      bt = rps[k, "redis-lb", "tls"]
      printf "%-4s %-8s %10s %10s %10s %10s %12s %12s %13s %13s\n", part[1], part[2],
             rp == "" ? "-" : rp, rt == "" ? "-" : rt, lp, lt, ratio(lt, rt), ratio(lt, lp),
             bt == "" ? "-" : bt, ratio(lt, bt)
    }
    print ""
    print "redisTLS(lb): redis-server over TLS under logkv-bench --resp, the client logkvd has;"
    print "the last column is logkv TLS against it."
  }' "$work/results.csv"

[[ $failures -eq 0 ]] || die "$failures run(s) failed (see above)"
