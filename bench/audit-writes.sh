#!/usr/bin/env bash
# What auditing data writes costs (docs/security.md, "Audit log"): SET throughput of one
# logkvd under logkv-bench with no --audit-prefix (the reference), with a prefix that no
# key has (the hook is asked, nothing is recorded) and with a prefix every key has (every
# SET becomes an audit entry: hashed, signed, proposed through the control plane and
# appended to the node's audit file), run side by side in rounds that alternate the three,
# so that the machine's drift falls on all of them alike.
#
#   bench/audit-writes.sh             # 5 rounds of 200,000 SETs per configuration
#   N=50000 ROUNDS=3 bench/audit-writes.sh
#
# Load: logkv-bench -c 50 -n N -d 100 -r 100000 -t set, no pipelining (P1) and 16 in
# flight (P16). Each logkvd starts on an empty data directory and a free loopback port,
# --threads=1 --fsync=interval, and is stopped before the next one runs. Printed: the
# median SET/s of each configuration and its ratio to the reference, and how many
# entries the audited runs recorded (the node bounds what is pending: past 20,000, writes
# are counted in an "audit.dropped" entry instead of one entry each).
#
# Environment: N, ROUNDS, LOGKVD, LOGKV_BENCH (default build-release/bin/, built when
# missing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=audit-writes
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
requests=${N:-200000}
rounds=${ROUNDS:-5}
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
secret=audit-bench-secret

for tool in ss curl; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ $requests =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '$requests'"
ensure_release_binaries "$logkvd" "$bench"

start_scratch audit

start_logkvd() {  # $1: configuration name, $2: --audit-prefix value
  local dir=$work/$1-$round
  mkdir -p "$dir/data"
  port=$(free_port) || exit 1
  http_port=$(free_port) || exit 1
  "$logkvd" --listen="127.0.0.1:$port" --http="127.0.0.1:$http_port" --data_dir="$dir/data" \
    --fsync=interval --threads=1 --cluster-secret="$secret" --audit-prefix="$2" \
    2>"$dir/logkvd.log" &
  server_pid=$!
  wait_ready "$server_pid" "grep -q 'listening on .*HTTP' '$dir/logkvd.log'" "$dir/logkvd.log"
}

# The head's seq of the node's audit log (entries recorded so far).
audit_head() {
  curl -sS -H "X-Cluster-Secret: $secret" "http://127.0.0.1:$http_port/api/audit?limit=1" |
    sed -n 's/.*"head":{"seq":\([0-9]*\).*/\1/p'
}

: >"$work/results.csv"
for round in $(seq "$rounds"); do
  for config in reference unmatched audited; do
    case $config in
      reference) prefix="" ;;
      unmatched) prefix="nokey:" ;;
      audited) prefix="key:" ;;
    esac
    start_logkvd "$config" "$prefix"
    for pipeline in 1 16; do
      out=$work/$config-$round-P$pipeline.csv
      echo "audit-writes: round $round, $config, P$pipeline ..." >&2
      "$bench" -h 127.0.0.1 -p "$port" -c 50 -n "$requests" -d 100 -r 100000 -t set \
        -P "$pipeline" --csv >"$out"
      rps=$(tr -d '"' <"$out" | awk -F, '$1 == "SET" { print $2 }')
      [[ -n $rps ]] || die "no SET figure from logkv-bench (see $out)"
      echo "$config,P$pipeline,$round,$rps" >>"$work/results.csv"
    done
    # Let the last batch reach the log before reading the head.
    sleep 0.5
    echo "$config,entries,$round,$(audit_head)" >>"$work/results.csv"
    stop_pid "$server_pid"
    server_pid=""
  done
done

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo
echo "SET/s, median of $rounds rounds of $requests SETs (-c 50 -d 100 -r 100000), $(nproc) cores:"
printf '%-10s %-5s %12s %8s %s\n' config load "SET/s" ratio "audit entries per logkvd run (P1 then P16)"
for pipeline in P1 P16; do
  ref=$(awk -F, -v p="$pipeline" '$1 == "reference" && $2 == p { print $4 }' "$work/results.csv" | median)
  for config in reference unmatched audited; do
    m=$(awk -F, -v c="$config" -v p="$pipeline" '$1 == c && $2 == p { print $4 }' "$work/results.csv" | median)
    entries=$(awk -F, -v c="$config" '$1 == c && $2 == "entries" { print ($4 == "" ? 0 : $4) }' "$work/results.csv" | median)
    printf '%-10s %-5s %12.0f %8.3f %s\n' "$config" "$pipeline" "$m" "$(awk -v a="$m" -v b="$ref" 'BEGIN { print a / b }')" "$entries"
  done
done
