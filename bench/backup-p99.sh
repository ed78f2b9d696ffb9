#!/usr/bin/env bash
# Foreground latency while backups run: logkv-bench's p99 against one logkvd,
# without a backup, with back-to-back backups, and without again, in one run.
#
#   bench/backup-p99.sh
#   RATE=0 bench/backup-p99.sh          # an unlimited backup, for comparison
#
# The node holds PRELOAD keys of 1000 bytes (default 200,000: about 200 MiB of
# log), then runs SET then GET (50 connections, 100-byte values, 100,000 random
# keys, DURATION each, default 10s) ROUNDS times (default 3) in two phases:
# alone, and while a loop asks for a new backup (POST /api/backup) whenever
# none is running, the two in alternating order. The table gives each phase's
# median over the rounds (on a shared machine alternating spreads the other
# load over both).
# Backups are zstd archives (--backup-format), --backup-retention=1, paced to
# RATE bytes per second (default 33554432, logkvd's default --backup-rate-limit).
#
# Environment: LOGKVD and LOGKV_BENCH (default build/bin/), DURATION, ROUNDS, PRELOAD, RATE,
# FORMAT (archive | directory). logkvd runs one event-loop thread, the load
# generator and the backup the rest of the machine.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=backup-p99
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
logkvd=${LOGKVD:-$root/build/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build/bin/logkv-bench}
duration=${DURATION:-10s}
rounds=${ROUNDS:-3}
preload=${PRELOAD:-200000}
rate=${RATE:-33554432}
format=${FORMAT:-archive}
for binary in "$logkvd" "$bench"; do [[ -x $binary ]] || die "no $binary (build it first)"; done
command -v curl >/dev/null || die "curl not found"

work=$(mktemp -d)
server_pid=""
loop_pid=""
cleanup() {
  [[ -n $loop_pid ]] && kill "$loop_pid" 2>/dev/null || true
  stop_pid "$server_pid"
  rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
http_port=$(free_port)
"$logkvd" --data-dir="$work/data" --listen="127.0.0.1:$port" --http="127.0.0.1:$http_port" \
  --threads=1 --backup-dir="$work/backups" --backup-retention=1 \
  --backup-rate-limit="$rate" --backup-format="$format" --log-level=warning \
  >"$work/logkvd.log" 2>&1 &
server_pid=$!
wait_ready "$server_pid" "curl -fs http://127.0.0.1:$http_port/health >/dev/null" "$work/logkvd.log"

status() { curl -fs "http://127.0.0.1:$http_port/api/backup/status"; }

echo "$bench_name: preloading $preload keys of 1000 bytes" >&2
"$bench" -p "$port" -t set -n "$preload" -r "$preload" -d 1000 -c 50 -P 16 -q >/dev/null

# "SET,p99;GET,p99" of one run.
measure() {
  "$bench" -p "$port" -t set,get --duration "$duration" -r 100000 -d 100 -c 50 --csv |
    awk -F, 'NR > 1 { gsub(/"/, ""); printf "%s %s %s\n", $1, $2, $7 }'
}

backup_loop() {
  while true; do
    if status | jq -e '.running == false' >/dev/null 2>&1; then
      curl -fs -X POST "http://127.0.0.1:$http_port/api/backup" >/dev/null || true
    fi
    sleep 0.1
  done
}

alone=""
during=""
successes_before=$(status | jq '.successes')
measure_alone() {
  echo "$bench_name: round $1: alone" >&2
  alone+=$(measure)$'\n'
}
measure_during() {
  backup_loop &
  loop_pid=$!
  sleep 0.5
  echo "$bench_name: round $1: with backups running" >&2
  during+=$(measure)$'\n'
  kill "$loop_pid"
  wait "$loop_pid" 2>/dev/null || true
  loop_pid=""
  # The backup in progress is left to finish, so that "alone" is alone.
  while status | jq -e '.running == true' >/dev/null; do sleep 0.2; done
}
# The phases alternate in order (alone first in odd rounds, last in even
# ones), so that whatever follows a phase (compaction of what SET
# overwrote, write-back) does not always land in the same one.
for round in $(seq "$rounds"); do
  if (( round % 2 )); then
    measure_alone "$round"
    measure_during "$round"
  else
    measure_during "$round"
    measure_alone "$round"
  fi
done
final=$(status)

# The median of a column ($2 rps, $3 p99) over the rounds of one test.
median() {
  grep "^$2 " <<<"$1" | awk -v c="$3" '{ print $c }' | sort -g |
    awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "| test | rps alone | rps during backups | p99 alone (ms) | p99 during backups (ms) | p99 during / alone |"
echo "| --- | --- | --- | --- | --- | --- |"
for test in SET GET; do
  rps1=$(median "$alone" "$test" 2)
  rps2=$(median "$during" "$test" 2)
  p1=$(median "$alone" "$test" 3)
  p2=$(median "$during" "$test" 3)
  ratio=$(awk -v a="$p1" -v b="$p2" 'BEGIN { printf "%.2f", b / a }')
  echo "| $test | $rps1 | $rps2 | $p1 | $p2 | **$ratio** |"
done
echo
echo "p99 of each round (ms), alone: $(grep -E '^(SET|GET) ' <<<"$alone" | awk '{ printf "%s %s  ", $1, $3 }')"
echo "p99 of each round (ms), during: $(grep -E '^(SET|GET) ' <<<"$during" | awk '{ printf "%s %s  ", $1, $3 }')"
echo "backups finished: $(( $(jq '.successes' <<<"$final") - successes_before )), failures: $(jq '.failures' <<<"$final")"
echo "last backup: $(jq -c '.last_success | {bytes, stored_bytes, duration_ms}' <<<"$final")"
