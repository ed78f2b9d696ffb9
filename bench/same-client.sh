#!/usr/bin/env bash
# logkvd and redis-server under one client: logkv-bench drives both (redis-server with
# --resp, the same SET and GET commands in Redis's protocol), the servers up side by side and
# measured in alternating rounds, so that the machine's drift falls on both alike.
#
#   bench/same-client.sh                          # P16 GET, P16 SET, P1 GET, P1 SET; 5 rounds
#   ROUNDS=8 TESTS="16:get" bench/same-client.sh
#   LOGKVD_REF=/tmp/logkvd-before bench/same-client.sh   # a third server: another logkvd build
#
# Why one client: redis-benchmark and logkv-bench differ in speed, so at -c 50 they keep
# different numbers of requests at their servers (by Little's law, throughput times mean
# latency), and a server's latency follows that number. With one client the rows compare the
# servers.
#
# Servers: redis-server --appendonly yes --appendfsync everysec (no RDB); logkvd
# --fsync=interval --threads=1 (Redis executes commands on one thread); each loaded first with
# 200,000 SETs over the keyspace. Each round runs every test against each server in turn
# (the order alternates by round), -c 50 -d 100 -r 100000. Printed: every round's figures, then
# per test and server the medians over the rounds of throughput, p50, p99, p99.9 and the
# server's CPU per request (user + system time from /proc over the run, in microseconds: the
# client's CPU is not in it), and the ratios logkvd / Redis (and logkvd / LOGKVD_REF).
#
# Environment: ROUNDS (default 5), TESTS (default "16:get 16:set 1:get 1:set", pipeline:test),
# N_P1 (requests a P1 run, default 400000), N_P16 (default 1000000), LOGKVD, LOGKV_BENCH
# (default build-release/bin/, built when missing), LOGKVD_REF, LOGKVD_ARGS (extra logkvd flags).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=same-client
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
logkvd_ref=${LOGKVD_REF:-}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS-}"
rounds=${ROUNDS:-5}
tests=${TESTS:-16:get 16:set 1:get 1:set}
n_p1=${N_P1:-400000}
n_p16=${N_P16:-1000000}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
for n in "$n_p1" "$n_p16"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "N_P1 and N_P16 must be positive integers, not '$n'"
done
for t in $tests; do
  [[ $t =~ ^[1-9][0-9]*:(get|set)$ ]] || die "TESTS takes pipeline:test pairs (16:get), not '$t'"
done
for tool in redis-server redis-cli ss; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install redis-server redis-tools iproute2)"
done
ensure_release_binaries "$logkvd" "$bench"
[[ -z $logkvd_ref || -x $logkvd_ref ]] || die "no logkvd at LOGKVD_REF=$logkvd_ref"

work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-same-client.XXXXXX")
pids=()
cleanup() {
  local pid
  # server_pid: a redis-server that died waiting for its start (not in pids yet).
  for pid in "${pids[@]}" "${server_pid:-}"; do stop_pid "$pid"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A port_of pid_of
servers=(redis logkvd)
[[ -n $logkvd_ref ]] && servers+=(ref)

start_redis_server "$work/redis" plain
pid_of[redis]=$server_pid port_of[redis]=$port pids+=("$server_pid")

start_logkvd() {  # $1: name, $2: binary
  local dir=$work/$1
  mkdir -p "$dir/data"
  port=$(free_port) || exit 1
  "$2" --listen="127.0.0.1:$port" --http= --data_dir="$dir/data" --fsync=interval --threads=1 \
    "${logkvd_extra_args[@]}" 2>"$dir/logkvd.log" &
  pid_of[$1]=$!
  port_of[$1]=$port
  pids+=("$!")
  wait_ready "$!" "grep -q 'listening on' '$dir/logkvd.log'" "$dir/logkvd.log"
}
start_logkvd logkvd "$logkvd"
[[ -n $logkvd_ref ]] && start_logkvd ref "$logkvd_ref"

resp_flag() { [[ $1 == redis ]] && echo --resp || true; }
for s in "${servers[@]}"; do
  # shellcheck disable=SC2046
  "$bench" -p "${port_of[$s]}" $(resp_flag "$s") -c 50 -n 200000 -d 100 -r 100000 -t set -q \
    >/dev/null || die "loading $s failed"
done

# User and system time, the process's and its reaped children's (Redis's AOF rewrites run in a
# child).
cpu_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
echo "round,test,server,rps,p50_ms,p99_ms,p999_ms,server_cpu_us_per_request" >"$work/rows.csv"
echo "same-client: $rounds rounds of: $tests (-c 50 -d 100 -r 100000; P1 -n $n_p1, P16 -n $n_p16)" >&2
for round in $(seq "$rounds"); do
  # The order rotates by round: over as many rounds as servers, each server runs in each place.
  order=()
  for ((i = 0; i < ${#servers[@]}; i++)); do
    order+=("${servers[(i + round - 1) % ${#servers[@]}]}")
  done
  for t in $tests; do
    pipeline=${t%%:*} test=${t##*:}
    n=$n_p1
    ((pipeline > 1)) && n=$n_p16
    for s in "${order[@]}"; do
      before=$(cpu_ticks "${pid_of[$s]}")
      # shellcheck disable=SC2046
      out=$("$bench" -p "${port_of[$s]}" $(resp_flag "$s") -c 50 -n "$n" -d 100 -r 100000 \
        -P "$pipeline" -t "$test" --csv --csv-p999) || die "$s P$pipeline $test failed"
      after=$(cpu_ticks "${pid_of[$s]}")
      row=$(logkv_bench_rows <<<"$out")  # test,rps,p50,p99,p999
      cpu=$(awk -v a="$before" -v b="$after" -v n="$n" -v hz="$hz" \
        'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
      echo "$round,P$pipeline ${row%%,*},$s,${row#*,},$cpu" | tee -a "$work/rows.csv" >&2
    done
  done
done

echo
echo "logkvd$([[ -n $logkvd_ref ]] && echo ", LOGKVD_REF") and redis-server $(redis-server --version |
  awk '{print $3}') under one client (logkv-bench; --resp for Redis), $rounds rounds," \
  "$(nproc) cores; medians over the rounds"
echo
awk -F, -v servers="${servers[*]}" '
  function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  NR == 1 { next }
  { key = $2 SUBSEP $3
    if (!(($2) in seen)) { seen[$2] = 1; order[++tests] = $2 }
    for (c = 4; c <= 8; c++) values[key, c] = values[key, c] " " $c }
  END {
    ns = split(servers, s, " ")
    printf "%-8s %-7s %11s %8s %8s %8s %8s\n", "test", "server", "rps", "p50", "p99", "p99.9", "cpu_us"
    for (i = 1; i <= tests; i++) {
      for (j = 1; j <= ns; j++) {
        key = order[i] SUBSEP s[j]
        for (c = 4; c <= 8; c++) m[s[j], c] = median(values[key, c])
        printf "%-8s %-7s %11.0f %8.3f %8.3f %8.3f %8.2f\n", order[i], s[j], m[s[j], 4], m[s[j], 5],
               m[s[j], 6], m[s[j], 7], m[s[j], 8]
      }
      printf "%-8s %-7s %11.2f %8.2f %8.2f %8.2f %8.2f   (logkvd / redis)\n", order[i], "ratio",
             m["logkvd", 4] / m["redis", 4], m["logkvd", 5] / m["redis", 5],
             m["logkvd", 6] / m["redis", 6], m["logkvd", 7] / m["redis", 7],
             m["logkvd", 8] / m["redis", 8]
      if (ns > 2)
        printf "%-8s %-7s %11.2f %8.2f %8.2f %8.2f %8.2f   (logkvd / LOGKVD_REF)\n", order[i], "ratio",
               m["logkvd", 4] / m["ref", 4], m["logkvd", 5] / m["ref", 5],
               m["logkvd", 6] / m["ref", 6], m["logkvd", 7] / m["ref", 7],
               m["logkvd", 8] / m["ref", 8]
    }
  }' "$work/rows.csv"
