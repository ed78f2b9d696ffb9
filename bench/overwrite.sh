#!/usr/bin/env bash
# Disk under an overwrite workload, and foreground latency while compaction runs.
#
#   bench/overwrite.sh                       # 10M SETs over 1M keys
#   KEYS=200000 WRITES=2000000 bench/overwrite.sh
#
# 1. Loads logkvd (default flags) with WRITES SETs of 100-byte values over KEYS random
#    16-byte keys (logkv-bench -c 50 -P 16), printing du of the data directory against
#    logkv_live_bytes, logkv_disk_allocated_bytes and logkv_dead_bytes every 5 s.
# 2. "during": right after the load, while compaction reclaims the dead bytes, a foreground
#    load (logkv-bench -t set,get -c 50 -P 1, -n FG requests) and its p50/p99; the share of
#    its samples with logkv_compaction_running = 1 is printed.
# 3. Waits until compaction has been idle for 30 s (at most SETTLE seconds), prints the
#    settled du / live, then "idle": the same foreground load again.
# The ratio of the two p99s is the cost of compaction to the foreground.
#
# Environment: KEYS, WRITES, FG (default 400000), SETTLE (default 300), LOGKVD, LOGKV_BENCH,
# LOGKVD_ARGS, WORK.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=overwrite
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS-}"
keys=${KEYS:-1000000}
writes=${WRITES:-10000000}
fg=${FG:-400000}
settle=${SETTLE:-300}
ensure_release_binaries "$logkvd" "$bench"

work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/logkv-overwrite.XXXXXX")}
mkdir -p "$work"
pid="" sampler=""
cleanup() {
  [[ -z $sampler ]] || kill "$sampler" 2>/dev/null || true
  stop_pid "$pid"
  [[ -n ${WORK:-} ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(free_port)
http_port=$(free_port)
"$logkvd" --listen="127.0.0.1:$port" --http="127.0.0.1:$http_port" --data_dir="$work/data" \
  "${logkvd_extra_args[@]}" 2>"$work/logkvd.log" &
pid=$!
wait_ready "$pid" "grep -q 'listening on' '$work/logkvd.log'" "$work/logkvd.log"

metric() {
  curl -s "http://127.0.0.1:$http_port/metrics?format=prometheus" | awk -v m="$1" '$1 == m { print $2 }'
}
sample() {  # one line: seconds, du MiB, allocated MiB, live MiB, dead MiB, du/live, compacting
  local du live alloc dead running
  du=$(du -s -B1 "$work/data" | cut -f1)
  live=$(metric logkv_live_bytes)
  alloc=$(metric logkv_disk_allocated_bytes)
  dead=$(metric logkv_dead_bytes)
  running=$(metric logkv_compaction_running)
  awk -v t="$SECONDS" -v d="$du" -v l="$live" -v a="$alloc" -v x="$dead" -v r="$running" 'BEGIN {
    printf "%5ds du %8.1f MiB  allocated %8.1f  live %8.1f  dead %8.1f  du/live %5.2f  compacting %s\n",
      t, d / 1048576, a / 1048576, l / 1048576, x / 1048576, (l > 0 ? d / l : 0), r }'
}

echo "overwrite: $writes SETs over $keys keys, -d 100 -P 16 -c 50; $(nproc) cores;" \
  "load average $(uptime | sed 's/.*load average: //')"
SECONDS=0
(while true; do sample; sleep 5; done) &
sampler=$!
"$bench" -p "$port" -c 50 -P 16 -d 100 -r "$keys" -n "$writes" -t set -q
kill "$sampler"; sampler=""

foreground() {  # $1: label; prints the CSV rows and how often compaction ran meanwhile
  local samples=0 busy=0
  "$bench" -p "$port" -c 50 -d 100 -r "$keys" -n "$fg" -t set,get --csv >"$work/fg-$1.csv" &
  local load=$!
  while kill -0 "$load" 2>/dev/null; do
    samples=$((samples + 1))
    [[ $(metric logkv_compaction_running) == 1 ]] && busy=$((busy + 1))
    sleep 0.5
  done
  wait "$load"
  tr -d '"' <"$work/fg-$1.csv" | awk -F, -v l="$1" -v b="$busy" -v s="$samples" \
    'NR > 1 { printf "%-7s %-4s rps %10s  p50 %7s ms  p99 %7s ms  (compaction running in %d of %d samples)\n", l, $1, $2, $5, $7, b, s }'
}

sample
foreground during
sample
idle_for=0
while ((idle_for < 30 && SECONDS < settle)); do
  if [[ $(metric logkv_compaction_running) == 1 ]]; then idle_for=0; else idle_for=$((idle_for + 5)); fi
  sleep 5
done
echo "settled:"
sample
foreground idle
paste -d' ' <(tr -d '"' <"$work/fg-during.csv" | awk -F, 'NR > 1 { print $1, $7 }') \
  <(tr -d '"' <"$work/fg-idle.csv" | awk -F, 'NR > 1 { print $7 }') |
  awk '{ printf "%s p99 during / idle: %.2f\n", $1, ($3 > 0 ? $2 / $3 : 0) }'
echo "load average at the end: $(uptime | sed 's/.*load average: //')"
