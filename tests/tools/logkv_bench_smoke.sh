#!/usr/bin/env bash
# Runs logkv-bench against a real logkvd for a few thousand requests of every
# workload and checks it exits 0 with redis-benchmark's CSV header.
#   logkv_bench_smoke.sh LOGKVD LOGKV_BENCH
set -euo pipefail
logkvd=$1
bench=$2
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
"$logkvd" --data_dir="$work/data" --listen=127.0.0.1:0 --http=127.0.0.1:0 --threads=1 2>"$work/logkvd.log" &
server_pid=$!
port=""
for _ in $(seq 1 200); do
  port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$work/logkvd.log" | head -1 | cut -d: -f2 || true)
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || { echo "logkvd did not start:"; cat "$work/logkvd.log"; exit 1; }
out=$("$bench" -p "$port" -c 8 -n 4000 -d 100 -r 1000 -t set,get --csv)
echo "$out"
head -1 <<<"$out" | grep -qx '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"'
grep -q '^"SET"' <<<"$out"
grep -q '^"GET"' <<<"$out"
# --csv-p999 adds the 99.9th percentile as the last column.
out=$("$bench" -p "$port" -c 8 -n 2000 -d 100 -r 1000 -t set --csv --csv-p999)
echo "$out"
head -1 <<<"$out" | grep -qx '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms","p999_latency_ms"'
grep -qx '"SET"\(,"[0-9.]*"\)\{8\}' <<<"$out"
"$bench" -p "$port" -c 4 -n 2000 -P 8 --ratio 1:3 --zipf 0.99 -r 500 --threads 2 -q
echo "logkv-bench smoke: ok"
