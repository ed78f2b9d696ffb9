#!/usr/bin/env bash
# CPU time per request of logkvd beside redis-server, and of their load generators, split into
# user and system time, with the servers' minor page faults per request:
#
#   bench/cpu-per-request.sh                  # SET and GET, plaintext and TLS, -P 16
#   TESTS=set TRANSPORTS=tls ROUNDS=3 bench/cpu-per-request.sh
#
# Each server runs alone, its load generator (logkv-bench, redis-benchmark) on the other core:
# `-c 50 -d 100 -r 100000 -P $P`, a fill of 300,000 SETs first, then N requests of each test
# (default 1,500,000). The server's user and system time and minor faults come from
# /proc/PID/stat before and after the run, the load generator's from /usr/bin/time. Redis
# 7.0 runs with `appendonly yes`, `appendfsync everysec`; logkvd with `--threads=1
# --fsync=interval` (LOGKVD_ARGS replaces the first). TLS 1.3 with one certificate, as in
# bench/tls.sh. ROUNDS repeats everything, the two servers in alternation.
#
# Requests per second are printed too, but CPU time per request is the figure: the machine's
# other work moves it far less. Environment: N, P (default 16), TESTS (default "set get"),
# TRANSPORTS (default "plain tls"), SYSTEMS (default "redis logkv"), ROUNDS (default 1),
# LOGKVD, LOGKV_BENCH (default build-release/bin/, built when missing), LOGKVD_ARGS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=cpu-per-request
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS---threads=1}"
requests=${N:-1500000}
pipeline=${P:-16}
rounds=${ROUNDS:-1}
read -r -a tests <<<"${TESTS:-set get}"
read -r -a transports <<<"${TRANSPORTS:-plain tls}"
read -r -a systems <<<"${SYSTEMS:-redis logkv}"
[[ $requests =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '$requests'"
[[ $pipeline =~ ^[1-9][0-9]*$ ]] || die "P must be a positive integer, not '$pipeline'"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
for tool in redis-server redis-benchmark redis-cli curl openssl ss; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (apt-get install time)"
ensure_release_binaries "$logkvd" "$bench"

work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-cpu.XXXXXX")
server_pid=""
cleanup() {
  stop_pid "$server_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
certs=$work/certs
"$root/tools/make-certs.sh" "$certs" ca >/dev/null
"$root/tools/make-certs.sh" "$certs" server node localhost 127.0.0.1 >/dev/null
ticks=$(getconf CLK_TCK)

start() {  # $1: system, $2: transport; sets server_pid, port, client
  local system=$1 transport=$2 dir=$work/$1-$2
  rm -rf "$dir"
  if [[ $system == redis ]]; then
    start_redis_server "$dir" "$transport" "$certs"
    client=(redis-benchmark)
  else
    local http_port tls=() health
    mkdir -p "$dir/data"
    port=$(free_port)
    http_port=$(free_port)
    health="curl -fs http://127.0.0.1:$http_port/health >/dev/null"
    if [[ $transport == tls ]]; then
      tls=(--tls-cert="$certs/node.pem" --tls-key="$certs/node.key")
      health="curl -fs --cacert '$certs/ca.pem' https://127.0.0.1:$http_port/health >/dev/null"
    fi
    "$logkvd" --listen="127.0.0.1:$port" --http="127.0.0.1:$http_port" --data_dir="$dir/data" \
      --fsync=interval "${tls[@]}" "${logkvd_extra_args[@]}" 2>"$dir/server.log" &
    server_pid=$!
    wait_ready "$server_pid" "$health" "$dir/server.log"
    client=("$bench")
  fi
}

# user ticks, system ticks, minor faults of the server
server_stat() { awk '{ print $14, $15, $10 }' "/proc/$server_pid/stat"; }

printf '%-6s %-5s %-4s %10s | %-26s | %-15s\n' system tls test rps \
  "server us/req: user sys faults" "client: user sys"
for round in $(seq "$rounds"); do
  order=("${systems[@]}")
  if ((round % 2 == 0)); then
    order=()
    for ((i = ${#systems[@]} - 1; i >= 0; i--)); do order+=("${systems[i]}"); done
  fi
  for system in "${order[@]}"; do
    for transport in "${transports[@]}"; do
      start "$system" "$transport"
      args=(-h 127.0.0.1 -p "$port" -c 50 -d 100 -r 100000)
      [[ $transport == tls ]] && args+=(--tls --cacert "$certs/ca.pem")
      "${client[@]}" "${args[@]}" -q -n 300000 -P 16 -t set >/dev/null 2>&1 ||
        die "$system $transport: the fill failed"
      for test in "${tests[@]}"; do
        read -r u0 s0 f0 < <(server_stat)
        /usr/bin/time -f "%U %S" -o "$work/time" "${client[@]}" "${args[@]}" --csv \
          -n "$requests" -P "$pipeline" -t "$test" >"$work/out.csv" 2>"$work/out.err" ||
          die "$system $transport $test failed: $(cat "$work/out.err")"
        read -r u1 s1 f1 < <(server_stat)
        read -r cu cs <"$work/time"
        rps=$(tr -d '"' <"$work/out.csv" | awk -F, 'NR > 1 { print $2; exit }')
        awk -v n="$requests" -v t="$ticks" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
          -v f=$((f1 - f0)) -v cu="$cu" -v cs="$cs" -v rps="$rps" -v sys="$system" \
          -v tr="$transport" -v test="$test" 'BEGIN {
            printf "%-6s %-5s %-4s %10.0f | %8.3f %8.3f %8.4f | %7.3f %7.3f\n", sys, tr, test, rps,
              u / t / n * 1e6, s / t / n * 1e6, f / n, cu / n * 1e6, cs / n * 1e6 }'
      done
      stop_pid "$server_pid"
      server_pid=""
    done
  done
done
