#!/usr/bin/env bash
# Disk under an overwrite workload, and foreground latency while compaction runs.
#
#   bench/overwrite.sh                       # 10M SETs over 1M keys
#   KEYS=200000 WRITES=2000000 bench/overwrite.sh
#   LOGKVD_REF=/path/to/old/logkvd ROUNDS=2 bench/overwrite.sh   # old and new, alternating
#
# One run:
# 1. Loads logkvd (default flags) with WRITES SETs of 100-byte values over KEYS random
#    16-byte keys (logkv-bench -c 50 -P 16), printing du of the data directory against
#    logkv_live_bytes, logkv_disk_allocated_bytes, logkv_disk_reserved_bytes (blocks
#    preallocated ahead of the data) and logkv_dead_bytes every 5 s.
# 2. Waits until compaction has been idle for 30 s (at most SETTLE seconds) and prints the
#    settled du / live.
# 3. "idle": a foreground load (logkv-bench -t set,get -c 50 -P 1, -n FG requests) and its
#    p50/p99.
# 4. "during": BURST more SETs (default WRITES / 5) make new garbage; as soon as compaction
#    runs (waiting at most 30 s), the same foreground load again. The share of its samples
#    with logkv_compaction_running = 1 is printed.
# The ratio of the two p99s is the cost of compaction to the foreground. Each run ends
# with a "result" line: live MiB, du MiB, du/live, then per command p99 idle, p99 during
# and during/idle.
# 5. "steady" (STEADY seconds, default 120; 0 skips it): a background writer overwrites
#    the same keys at BG_RATE SETs a second (default 30000; logkv-bench --rate, 4
#    connections, -P 16), so compaction starts again and again, while the foreground runs
#    in samples of STEADY_SAMPLE per test (SET, then GET; -c 50 -P 1). logkv_compaction_running
#    is read every 0.1 s during each sample: a sample where every reading says running is
#    "compacting", one where none does is "not compacting", the others are left out. The
#    "steady" line gives, per command, the median of each class's p99s and their ratio:
#    the same write load on both sides, with and without compaction.
#
# With LOGKVD_REF set, ROUNDS (default 2) rounds each run the reference binary, then
# LOGKVD, on a fresh data directory each, and a table of the result lines follows: the
# machine's load moves both alike, so compare within a round.
#
# Environment: KEYS, WRITES, FG (default 400000), SETTLE (default 300), BURST, STEADY, BG_RATE,
# STEADY_SAMPLE (each steady sample's length, default 250ms: a compaction run of a 64 MiB
# segment lasts about half a second, and a sample counts only when it falls inside one), LOGKVD, LOGKV_BENCH, LOGKVD_REF_ARGS
# (flags of the reference's alone: with LOGKVD_REF set to LOGKVD, two settings of one binary),
# LOGKVD_ARGS, LOGKVD_REF, ROUNDS, WORK, KEEP_DATA (non-empty: keep each run's data directory
# in WORK).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=overwrite
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS-}"
read -r -a reference_extra_args <<<"${LOGKVD_REF_ARGS-}"
keys=${KEYS:-1000000}
writes=${WRITES:-10000000}
fg=${FG:-400000}
settle=${SETTLE:-300}
burst=${BURST:-$((writes / 5))}
steady=${STEADY:-120}
steady_sample=${STEADY_SAMPLE:-250ms}
bg_rate=${BG_RATE:-30000}
reference=${LOGKVD_REF:-}
rounds=${ROUNDS:-2}
ensure_release_binaries "$logkvd" "$bench"
[[ -z $reference || -x $reference ]] || die "no reference logkvd at $reference"

work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/logkv-overwrite.XXXXXX")}
mkdir -p "$work"
pid="" sampler="" background=""
cleanup() {
  [[ -z $sampler ]] || kill "$sampler" 2>/dev/null || true
  [[ -z $background ]] || kill "$background" 2>/dev/null || true
  stop_pid "$pid"
  [[ -n ${WORK:-} ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

http_port="" data=""
metric() {
  curl -s "http://127.0.0.1:$http_port/metrics?format=prometheus" | awk -v m="$1" '$1 == m { print $2 }'
}
sample() {  # one line: seconds, du MiB, allocated, reserved, live, dead MiB, du/live, compacting
  local du live alloc reserved dead running
  du=$(du -s -B1 "$data" | cut -f1)
  live=$(metric logkv_live_bytes)
  alloc=$(metric logkv_disk_allocated_bytes)
  reserved=$(metric logkv_disk_reserved_bytes)
  dead=$(metric logkv_dead_bytes)
  running=$(metric logkv_compaction_running)
  awk -v t="$SECONDS" -v d="$du" -v l="$live" -v a="$alloc" -v p="${reserved:-0}" -v x="$dead" \
    -v r="$running" 'BEGIN {
    printf "%5ds du %8.1f MiB  allocated %8.1f  reserved %6.1f  live %8.1f  dead %8.1f  du/live %5.2f  compacting %s\n",
      t, d / 1048576, a / 1048576, p / 1048576, l / 1048576, x / 1048576, (l > 0 ? d / l : 0), r }'
}

# Waits for the load $1 (a background logkv-bench), reading logkv_compaction_running
# every $2 seconds meanwhile: watched_readings and watched_busy say how often it was
# read and how often it said running.
watched_readings=0 watched_busy=0
watch_compaction() {
  watched_readings=0 watched_busy=0
  while kill -0 "$1" 2>/dev/null; do
    watched_readings=$((watched_readings + 1))
    [[ $(metric logkv_compaction_running) == 1 ]] && watched_busy=$((watched_busy + 1))
    sleep "$2"
  done
  wait "$1"
}

# The median of the numbers on stdin, one a line; "-" when there are none.
median() {
  sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2];
                                      else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# Phase 5 (see the top): uses run_one's port, label and http_port.
steady_phase() {
  local samples=$work/steady-$label test csv readings busy class
  : >"$samples"
  # The writer runs for STEADY seconds and the samples while it does; its own
  # rate is printed, and its failure (errors, a dead server) ends the run.
  "$bench" -p "$port" -c 4 -P 16 -d 100 -r "$keys" --rate "$bg_rate" --duration "${steady}s" \
    -t set -q >"$work/background-$label.out" 2>&1 &
  background=$!
  sleep 2
  while kill -0 "$background" 2>/dev/null; do
    for test in set get; do
      csv=$work/steady-sample.csv
      "$bench" -p "$port" -c 50 -d 100 -r "$keys" --duration "$steady_sample" -t "$test" --csv >"$csv" &
      watch_compaction $! 0.1
      readings=$watched_readings busy=$watched_busy
      class=mixed
      ((busy == 0)) && class=idle
      ((busy == readings && readings > 0)) && class=compacting
      tr -d '"' <"$csv" | awk -F, -v c="$class" -v b="$busy" -v r="$readings" \
        'NR > 1 { print c, $1, $7, b "/" r }' >>"$samples"
    done
  done
  if ! wait "$background"; then
    cat "$work/background-$label.out" >&2
    die "the steady phase's background writer failed (above)"
  fi
  background=""
  local line n_idle n_busy p_idle p_busy
  line="steady $label: background $bg_rate SETs/s asked, $(awk '/requests per second/ {
    printf "%.0f", $2 }' "$work/background-$label.out") done;"
  for test in SET GET; do
    n_idle=$(awk -v t="$test" '$1 == "idle" && $2 == t' "$samples" | wc -l)
    n_busy=$(awk -v t="$test" '$1 == "compacting" && $2 == t' "$samples" | wc -l)
    p_idle=$(awk -v t="$test" '$1 == "idle" && $2 == t { print $3 }' "$samples" | median)
    p_busy=$(awk -v t="$test" '$1 == "compacting" && $2 == t { print $3 }' "$samples" | median)
    line+=$(awk -v t="$test" -v a="$p_idle" -v b="$p_busy" -v na="$n_idle" -v nb="$n_busy" \
      -v nm="$(awk -v t="$test" '$1 == "mixed" && $2 == t' "$samples" | wc -l)" 'BEGIN {
      printf "  %s p99 (median of samples) not compacting %s ms (%d), compacting %s ms (%d), %s; %d mixed left out;",
        t, a, na, b, nb, (a + 0 > 0 && b != "-") ? sprintf("compacting/not %.2f", b / a) : "no ratio", nm }')
  done
  echo "$line" | tee -a "$work/results"
}

# $1: the logkvd binary, $2: a label for the result line, then flags of its own.
run_one() {
  local server=$1 label=$2 port
  shift 2
  data="$work/data-$label"
  rm -rf "$data"
  port=$(free_port)
  http_port=$(free_port)
  "$server" --listen="127.0.0.1:$port" --http="127.0.0.1:$http_port" --data_dir="$data" \
    "${logkvd_extra_args[@]}" "$@" 2>"$work/logkvd-$label.log" &
  pid=$!
  wait_ready "$pid" "grep -q 'listening on' '$work/logkvd-$label.log'" "$work/logkvd-$label.log"

  echo "== $label ($server${*:+ $*}): $writes SETs over $keys keys, -d 100 -P 16 -c 50; $(nproc) cores;" \
    "load average $(uptime | sed 's/.*load average: //')"
  SECONDS=0
  (while true; do sample; sleep 5; done) &
  sampler=$!
  "$bench" -p "$port" -c 50 -P 16 -d 100 -r "$keys" -n "$writes" -t set -q
  kill "$sampler"; sampler=""

  foreground() {  # $1: phase; prints the CSV rows and how often compaction ran meanwhile
    "$bench" -p "$port" -c 50 -d 100 -r "$keys" -n "$fg" -t set,get --csv >"$work/fg-$label-$1.csv" &
    watch_compaction $! 0.5
    tr -d '"' <"$work/fg-$label-$1.csv" |
      awk -F, -v l="$1" -v b="$watched_busy" -v s="$watched_readings" \
      'NR > 1 { printf "%-7s %-4s rps %10s  p50 %7s ms  p99 %7s ms  (compaction running in %d of %d samples)\n", l, $1, $2, $5, $7, b, s }'
  }

  sample
  local deadline=$((SECONDS + settle))
  local idle_for=0
  while ((idle_for < 30 && SECONDS < deadline)); do
    if [[ $(metric logkv_compaction_running) == 1 ]]; then idle_for=0; else idle_for=$((idle_for + 5)); fi
    sleep 5
  done
  echo "settled:"
  local settled
  settled=$(sample)
  echo "$settled"
  foreground idle
  # New garbage for compaction to reclaim while the foreground runs: BURST more
  # SETs, then the "during" load as soon as compaction starts (the maintenance
  # thread checks every 10 s; at most 30 s of waiting).
  "$bench" -p "$port" -c 50 -P 16 -d 100 -r "$keys" -n "$burst" -t set -q >/dev/null
  deadline=$((SECONDS + 30))
  while [[ $(metric logkv_compaction_running) != 1 ]] && ((SECONDS < deadline)); do
    sleep 0.2
  done
  sample
  foreground during
  sample
  local du_live p99s
  du_live=$(awk '{ for (i = 1; i <= NF; i++) { if ($i == "du" && $(i + 2) == "MiB") d = $(i + 1);
                   if ($i == "live") l = $(i + 1); if ($i == "du/live") r = $(i + 1) } }
                 END { printf "live %.1f MiB du %.1f MiB du/live %.2f", l, d, r }' <<<"$settled")
  p99s=$(paste -d' ' <(tr -d '"' <"$work/fg-$label-idle.csv" | awk -F, 'NR > 1 { print $1, $7 }') \
    <(tr -d '"' <"$work/fg-$label-during.csv" | awk -F, 'NR > 1 { print $7 }') |
    awk '{ printf "  %s p99 idle %s ms during %s ms during/idle %.2f", $1, $2, $3, ($2 > 0 ? $3 / $2 : 0) }')
  echo "result $label: $du_live;$p99s; load average $(uptime | sed 's/.*load average: //')" |
    tee -a "$work/results"
  if ((steady > 0)); then steady_phase; fi
  stop_pid "$pid"
  pid=""
  [[ -n ${KEEP_DATA:-} ]] || rm -rf "$data"
}

: >"$work/results"
if [[ -z $reference ]]; then
  run_one "$logkvd" new
else
  for round in $(seq "$rounds"); do
    run_one "$reference" "reference-$round" "${reference_extra_args[@]}"
    run_one "$logkvd" "new-$round"
  done
  echo
  echo "results (reference and new alternating):"
  cat "$work/results"
fi
