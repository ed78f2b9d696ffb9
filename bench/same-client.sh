#!/usr/bin/env bash
# logkvd and redis-server under one client: logkv-bench drives both (redis-server with
# --resp, the same SET and GET commands in Redis's protocol), the servers up side by side and
# measured in alternating rounds, so that the machine's drift falls on both alike.
#
#   bench/same-client.sh                          # P16 GET, P16 SET, P1 GET, P1 SET; 5 rounds
#   ROUNDS=8 TESTS="16:get" bench/same-client.sh
#   LOGKVD_REF=/tmp/logkvd-before bench/same-client.sh   # a third server: another logkvd build
#   TLS=1 bench/same-client.sh                    # over TLS, beside logkvd in plaintext
#   TLS=1 TESTS="1:get wrk" LOGKVD_REF=build-release/bin/logkvd \
#     LOGKVD_REF_ARGS=--tls-ciphersuites=TLS_CHACHA20_POLY1305_SHA256 bench/same-client.sh
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
# TLS=1: logkvd, Redis and LOGKVD_REF serve TLS 1.3 only (one EC P-256 certificate made here by
# tools/make-certs.sh; Redis's --tls-port, and each with its own default suite), and a fourth
# server, "plain", is logkvd in plaintext: the ratios add logkvd over TLS / logkvd plaintext.
# The test "wrk" (with wrk installed) is HTTP GET of one key for WRK_SECONDS (default 10), wrk
# -t1 -c 50, over HTTPS with TLS=1; logkvd's servers only (p99.9: none).
#
# Environment: ROUNDS (default 5), TESTS (default "16:get 16:set 1:get 1:set", pipeline:test or
# wrk), N_P1 (requests a P1 run, default 400000), N_P16 (default 1000000), LOGKVD, LOGKV_BENCH
# (default build-release/bin/, built when missing), LOGKVD_REF, LOGKVD_ARGS (extra flags of every
# logkvd), LOGKVD_REF_ARGS (extra flags of LOGKVD_REF's only), TLS, WRK_SECONDS.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=same-client
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
logkvd_ref=${LOGKVD_REF:-}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS-}"
read -r -a logkvd_ref_args <<<"${LOGKVD_REF_ARGS-}"
tls=${TLS:-0}
wrk_seconds=${WRK_SECONDS:-10}
[[ $tls == 0 || $tls == 1 ]] || die "TLS is 0 or 1, not '$tls'"
[[ $wrk_seconds =~ ^[1-9][0-9]*$ ]] || die "WRK_SECONDS must be a positive integer, not '$wrk_seconds'"
rounds=${ROUNDS:-5}
tests=${TESTS:-16:get 16:set 1:get 1:set}
n_p1=${N_P1:-400000}
n_p16=${N_P16:-1000000}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
for n in "$n_p1" "$n_p16"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "N_P1 and N_P16 must be positive integers, not '$n'"
done
with_wrk=0
for t in $tests; do
  [[ $t =~ ^[1-9][0-9]*:(get|set)$ || $t == wrk ]] ||
    die "TESTS takes pipeline:test pairs (16:get) and wrk, not '$t'"
  if [[ $t == wrk ]]; then
    with_wrk=1
    for tool in wrk curl; do
      command -v "$tool" >/dev/null || die "$tool not found (apt-get install $tool)"
    done
  fi
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

declare -A port_of http_port_of pid_of
servers=(redis logkvd)
[[ -n $logkvd_ref ]] && servers+=(ref)
[[ $tls == 1 ]] && servers+=(plain)
transport=plain
certs=$work/certs
if [[ $tls == 1 ]]; then
  transport=tls
  "$root/tools/make-certs.sh" "$certs" ca >/dev/null
  "$root/tools/make-certs.sh" "$certs" server node localhost 127.0.0.1 >/dev/null
fi

start_redis_server "$work/redis" "$transport" "$certs"
pid_of[redis]=$server_pid port_of[redis]=$port pids+=("$server_pid")

# Ports 0: the kernel picks them, and the log says which (an HTTP listener only for wrk).
start_logkvd() {  # $1: name, $2: binary, then its own flags
  local name=$1 binary=$2 dir=$work/$1 http=() tls_args=() log
  shift 2
  mkdir -p "$dir/data"
  log=$dir/logkvd.log
  [[ $with_wrk == 1 ]] && http=(--http=127.0.0.1:0) || http=(--http=)
  [[ $tls == 1 && $name != plain ]] && tls_args=(--tls-cert="$certs/node.pem" --tls-key="$certs/node.key")
  "$binary" --listen=127.0.0.1:0 "${http[@]}" --data_dir="$dir/data" --fsync=interval --threads=1 \
    "${tls_args[@]}" "${logkvd_extra_args[@]}" "$@" 2>"$log" &
  pid_of[$name]=$!
  pids+=("$!")
  wait_ready "$!" "grep -q 'listening on .*(binary' '$log' &&
    { [[ $with_wrk == 0 ]] || grep -q 'listening on .*(HTTP' '$log'; }" "$log"
  port_of[$name]=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\) (binary.*/\1/p' "$log" | head -1)
  http_port_of[$name]=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\) (HTTP.*/\1/p' "$log" | head -1)
}
start_logkvd logkvd "$logkvd"
[[ -n $logkvd_ref ]] && start_logkvd ref "$logkvd_ref" "${logkvd_ref_args[@]}"
[[ $tls == 1 ]] && start_logkvd plain "$logkvd"

client_args() {  # $1: server; sets the array client
  client=(-p "${port_of[$1]}")
  [[ $1 == redis ]] && client+=(--resp)
  [[ $tls == 1 && $1 != plain ]] && client+=(--tls --cacert "$certs/ca.pem")
  true
}
url_of() {  # $1: a logkvd server; the key wrk reads
  local scheme=http
  [[ $tls == 1 && $1 != plain ]] && scheme=https
  echo "$scheme://127.0.0.1:${http_port_of[$1]}/kv/wrk"
}
for s in "${servers[@]}"; do
  client_args "$s"
  "$bench" "${client[@]}" -c 50 -n 200000 -d 100 -r 100000 -t set -q >/dev/null ||
    die "loading $s failed"
  if [[ $with_wrk == 1 && $s != redis ]]; then
    curl -sSf -k -X PUT -d '"value"' "$(url_of "$s")" >/dev/null || die "writing $s's wrk key failed"
  fi
done

# wrk's report: "Requests/sec:" and, with --latency, the 50% and 99% rows (us, ms or s).
wrk_row() {  # prints wrk,rps,p50_ms,p99_ms,p999_ms (p99.9: 0, wrk gives none)
  awk 'function ms(v) {
         if (v ~ /us$/) return v / 1000
         if (v ~ /ms$/) return v + 0
         if (v ~ /s$/) return v * 1000
         return v + 0 }
       $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) }
       $1 == "Requests/sec:" { rps = $2 }
       END { if (rps == "") exit 1; printf "wrk,%s,%.3f,%.3f,0\n", rps, p50, p99 }'
}

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
    [[ $t != wrk ]] && ((pipeline > 1)) && n=$n_p16
    for s in "${order[@]}"; do
      [[ $t == wrk && $s == redis ]] && continue
      before=$(cpu_ticks "${pid_of[$s]}")
      if [[ $t == wrk ]]; then
        out=$(wrk -t1 -c 50 -d "${wrk_seconds}s" --latency "$(url_of "$s")") || die "$s wrk failed"
        ! grep -q 'Non-2xx\|Socket errors' <<<"$out" || die "$s wrk: requests failed: $out"
        row=$(wrk_row <<<"$out") || die "$s wrk: no figures in: $out"
        n=$(awk '/requests in/ { print $1 }' <<<"$out")
        label=wrk
      else
        client_args "$s"
        out=$("$bench" "${client[@]}" -c 50 -n "$n" -d 100 -r 100000 -P "$pipeline" -t "$test" \
          --csv --csv-p999) || die "$s P$pipeline $test failed"
        row=$(logkv_bench_rows <<<"$out")  # test,rps,p50,p99,p999
        label="P$pipeline ${row%%,*}"
      fi
      after=$(cpu_ticks "${pid_of[$s]}")
      cpu=$(awk -v a="$before" -v b="$after" -v n="$n" -v hz="$hz" \
        'BEGIN { printf "%.2f", (b - a) * 1e6 / hz / n }')
      echo "$round,$label,$s,${row#*,},$cpu" | tee -a "$work/rows.csv" >&2
    done
  done
done

echo
echo "logkvd$([[ -n $logkvd_ref ]] && echo ", LOGKVD_REF") and redis-server $(redis-server --version |
  awk '{print $3}')$([[ $tls == 1 ]] && echo " over TLS 1.3, and logkvd in plaintext (plain),")" \
  "under one client (logkv-bench; --resp for Redis$([[ $with_wrk == 1 ]] && echo "; the wrk rows: wrk")), $rounds" \
  "rounds, $(nproc) cores; medians over the rounds"
echo
awk -F, -v servers="${servers[*]}" '
  function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  function ratio(a, b) { return b + 0 > 0 ? sprintf("%.2f", a / b) : "-" }
  # The ratios of logkvd over server $2 in test $1, when both ran it.
  function ratios(test, other, label,    c, line) {
    if (!((test, other) in ran) || !((test, "logkvd") in ran)) return
    line = sprintf("%-8s %-7s", test, "ratio")
    for (c = 4; c <= 8; c++) line = line sprintf(" %8s", ratio(m["logkvd", c], m[other, c]))
    print line "   (" label ")"
  }
  NR == 1 { next }
  { key = $2 SUBSEP $3
    ran[key] = 1
    if (!(($2) in seen)) { seen[$2] = 1; order[++tests] = $2 }
    for (c = 4; c <= 8; c++) values[key, c] = values[key, c] " " $c }
  END {
    ns = split(servers, s, " ")
    printf "%-8s %-7s %8s %8s %8s %8s %8s\n", "test", "server", "rps", "p50", "p99", "p99.9", "cpu_us"
    for (i = 1; i <= tests; i++) {
      for (j = 1; j <= ns; j++) {
        key = order[i] SUBSEP s[j]
        if (!(key in ran)) continue
        for (c = 4; c <= 8; c++) m[s[j], c] = median(values[key, c])
        printf "%-8s %-7s %8.0f %8.3f %8.3f %8.3f %8.2f\n", order[i], s[j], m[s[j], 4], m[s[j], 5],
               m[s[j], 6], m[s[j], 7], m[s[j], 8]
      }
      ratios(order[i], "redis", "logkvd / redis")
      ratios(order[i], "ref", "logkvd / LOGKVD_REF")
      ratios(order[i], "plain", "logkvd over TLS / logkvd plaintext")
    }
  }' "$work/rows.csv"
