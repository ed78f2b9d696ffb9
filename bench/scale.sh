#!/usr/bin/env bash
# Restart time, memory and disk at scale: logkvd beside redis-server (AOF, everysec) holding
# the same workload.
#
#   bench/scale.sh                 # 1M keys
#   KEYS=5M bench/scale.sh         # 1M, 5M, 10M or a plain number of keys
#   KEYS=10M REPS=3 bench/scale.sh
#
# Workload: SET with random 16-byte keys ("key:%012d"), 100-byte values, 50 connections,
# 16 requests in flight each (-P 16), 2x as many writes as the key space is large, so that
# about KEYS distinct keys are written (the actual counts are printed) and a third of the
# writes overwrite a key. logkv-bench loads logkvd, redis-benchmark loads Redis
# (--appendonly yes --appendfsync everysec, no RDB); each server runs alone while loaded.
#
# Then each server is killed with SIGKILL (no clean shutdown: logkvd writes no hint files for
# its active segments, Redis has no chance to rewrite its AOF) and restarted, REPS times, the
# two in alternation. Measured, from exec to the first request served:
#   logkvd kill -9   restart after SIGKILL: the checkpoints (index snapshots) the running
#                    shards wrote while they were loaded (--checkpoint_ratio), then the segments
#                    written after them (hint files, the newest scanned). Each round restarts
#                    from the checkpoints the load left (saved after it, put back before), so
#                    that every round replays the writes after them (and the few segments the
#                    restarts since added); the shards that used theirs are counted, and a
#                    warning printed when one did not (a compaction since made it stale).
#   logkvd hints     restart after SIGKILL with no checkpoint (every index.snapshot deleted
#                    first): the hint files of sealed segments, the newest scanned
#   logkvd no hints  the same with every hint file deleted too (every segment scanned)
#   logkvd clean     restart after a clean stop (SIGTERM): the open loads the index snapshot
#                    each shard's close wrote (the stop's own time is printed too)
#   redis AOF        redis-server loading its AOF (ready = PING answers PONG)
# and, after the restart: logkvd's RssAnon (/proc, what it pins beyond the page cache) beside
# Redis's used_memory and RssAnon, logkvd's index bytes per key (metrics), and bytes on disk
# (du) beside logkvd's live bytes (metrics).
#
# Each logkvd open is also measured in CPU seconds (user + system of the process when it first
# serves), which other work on the machine distorts less than wall time.
#
# LOGKVD_REF=<another logkvd> restarts that binary too, on the same directory, in alternation
# with LOGKVD (which of the two goes first alternates by round), and prints both side by side:
# open times, CPU seconds, RssAnon and index bytes per key. The data is loaded by LOGKVD.
#
# Environment: KEYS, REPS (default 2), LOGKVD, LOGKV_BENCH (default build-release/bin/...),
# LOGKVD_REF, LOGKVD_ARGS (extra server flags), WORK (scratch directory, default a mktemp under
# TMPDIR; 10M keys need about 7 GB, and it is kept when given), REUSE=1 (with WORK: restart the
# data directories a run left there instead of loading again).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=scale
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
logkvd_ref=${LOGKVD_REF:-}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS-}"
reps=${REPS:-2}
keys_arg=${KEYS:-1M}
case $keys_arg in
  *M) keys=$((${keys_arg%M} * 1000000)) ;;
  *k) keys=$((${keys_arg%k} * 1000)) ;;
  *) keys=$keys_arg ;;
esac
[[ $keys =~ ^[1-9][0-9]*$ ]] || die "KEYS must be a number, or one with k or M, not '$keys_arg'"
# 2K writes over a key space of K/(1-e^-2) leave about K distinct keys.
keyspace=$(awk -v k="$keys" 'BEGIN { printf "%d", k / (1 - exp(-2)) + 0.5 }')
writes=$((2 * keyspace))

for tool in redis-server redis-benchmark redis-cli ss curl; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
ensure_release_binaries "$logkvd" "$bench"
[[ -z $logkvd_ref || -x $logkvd_ref ]] || die "LOGKVD_REF $logkvd_ref is not an executable"

work=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/logkv-scale.XXXXXX")}
mkdir -p "$work"
logkvd_pid="" redis_pid=""
cleanup() {
  stop_pid "$logkvd_pid"
  stop_pid "$redis_pid"
  [[ -n ${WORK:-} ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }

# The node id is the listen address, so logkvd keeps its ports across restarts.
# REUSE=1 (with WORK) skips the load when WORK holds a loaded run's data directories, and
# restarts them.
reuse=0
if [[ ${REUSE:-0} == 1 && -n ${WORK:-} && -f $work/logkvd/control/node_id && -d $work/redis ]]; then
  reuse=1
fi
if [[ $reuse == 1 ]]; then
  logkv_port=$(sed 's/.*://' "$work/logkvd/control/node_id")
else
  logkv_port=$(free_port)
fi
http_port=$(free_port)
redis_port=$(free_port)

# CPU seconds (user + system) the process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"; }

start_logkvd() {  # [binary]: starts logkvd on $work/logkvd; sets logkvd_pid, ready_ms (exec to
  # listening) and ready_cpu (CPU seconds at that point)
  local binary=${1:-$logkvd} log=$work/logkvd.log start attempt
  # The ports are fixed for the run (the node id is the listen address); another program on the
  # machine may hold one for a moment (an outgoing connection's ephemeral port): try again.
  for attempt in $(seq 10); do
    # The HTTP port need not stay the same: a new one each attempt.
    http_port=$(free_port)
    : >"$log"
    start=$(now_ms)
    "$binary" --listen="127.0.0.1:$logkv_port" --http="127.0.0.1:$http_port" \
      --data_dir="$work/logkvd" "${logkvd_extra_args[@]}" 2>"$log" &
    logkvd_pid=$!
    for _ in $(seq 60000); do
      grep -q 'listening on' "$log" && break
      kill -0 "$logkvd_pid" 2>/dev/null || break
      sleep 0.01
    done
    grep -q 'listening on' "$log" && break
    if ! kill -0 "$logkvd_pid" 2>/dev/null && grep -q 'port in use' "$log"; then
      echo "scale: a port was in use (attempt $attempt), starting logkvd again" >&2
      wait "$logkvd_pid" 2>/dev/null || true
      sleep 1
      continue
    fi
    tail "$log" >&2
    die "logkvd exited or was not ready after 600 s"
  done
  ready_ms=$(($(now_ms) - start))
  ready_cpu=$(cpu_s "$logkvd_pid")
}

start_redis() {  # sets redis_pid and ready_ms (exec to PONG)
  local start
  mkdir -p "$work/redis"
  start=$(now_ms)
  redis-server --bind 127.0.0.1 --port "$redis_port" --protected-mode yes --save '' \
    --appendonly yes --appendfsync everysec --dir "$work/redis" --daemonize no \
    --logfile "$work/redis/redis.log" &
  redis_pid=$!
  for _ in $(seq 30000); do
    [[ $(redis-cli -p "$redis_port" ping 2>/dev/null) == PONG ]] && break
    kill -0 "$redis_pid" 2>/dev/null || die "redis-server exited"
    sleep 0.01
  done
  [[ $(redis-cli -p "$redis_port" ping 2>/dev/null) == PONG ]] || die "redis not ready after 300 s"
  ready_ms=$(($(now_ms) - start))
}

kill9() {  # $1: the pid variable's name
  local pid=${!1}
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  printf -v "$1" '%s' ""
}

metric() { curl -s "http://127.0.0.1:$http_port/metrics?format=prometheus" | awk -v m="$1" '$1 == m { print $2 }'; }
rss_anon_kb() { awk '/^RssAnon:/ { print $2 }' "/proc/$1/status"; }

echo "scale: $keys keys: $writes SETs over $keyspace random keys, -d 100 -P 16 -c 50;" \
  "work in $work; $(nproc) cores; load before: $(uptime | sed 's/.*load average: //')" >&2

if [[ $reuse == 1 ]]; then
  echo "scale: REUSE=1: restarting the data directories in $work as they are" >&2
else
  echo "scale: loading logkvd ..." >&2
  rm -rf "$work/logkvd" "$work/redis"
  start_logkvd
  "$bench" -p "$logkv_port" -c 50 -P 16 -d 100 -r "$keyspace" -n "$writes" -t set -q >&2
  sleep 2  # the maintenance thread writes the hint files of sealed segments within a second
  kill9 logkvd_pid
  cp "$work/logkvd.log" "$work/logkvd-load.log"
  # The checkpoints the load left, for every kill -9 round to start from.
  rm -rf "$work/checkpoints"
  mkdir -p "$work/checkpoints"
  for shard in "$work"/logkvd/shard-*; do
    [[ ! -f $shard/index.snapshot ]] || cp "$shard/index.snapshot" "$work/checkpoints/${shard##*/}"
  done
  echo "scale: loading redis ..." >&2
  start_redis
  redis-benchmark -p "$redis_port" -c 50 -P 16 -d 100 -r "$keyspace" -n "$writes" -t set -q |
    tr '\r' '\n' | tail -n 1 >&2
  sleep 2  # appendfsync everysec
  kill9 redis_pid
fi

declare -a e_kill t_kill t_nohints t_redis c_kill c_nohints r_kill r_nohints rc_kill rc_nohints \
  e_clean t_clean c_clean t_stop r_clean rc_clean r_stop e_hints t_hints c_hints r_hints rc_hints \
  u_kill a_kill
ref_rss_kb="" ref_index_per_key=""
shards=$(find "$work/logkvd" -maxdepth 1 -name 'shard-*' | wc -l)
[[ -d $work/checkpoints ]] ||
  echo "scale: $work/checkpoints missing (a run before checkpoints): kill -9 restarts use none" >&2
restart_kill9() {  # $1: binary, $2: "ref" or "": one restart after SIGKILL from the load's
  # checkpoints, recorded
  find "$work/logkvd" -name index.snapshot -delete
  for saved in "$work"/checkpoints/shard-*; do
    [[ ! -f $saved ]] || cp "$saved" "$work/logkvd/${saved##*/}/index.snapshot"
  done
  start_logkvd "$1"
  if [[ -n $2 ]]; then
    r_kill+=("$ready_ms") rc_kill+=("$ready_cpu")
  else
    t_kill+=("$ready_ms") c_kill+=("$ready_cpu")
    e_kill+=("$(sed -n 's/.*recovered in \([0-9]*\) ms.*/\1/p' "$work/logkvd.log")")
    cp "$work/logkvd.log" "$work/logkvd-kill9.log"
    # How many shards used their checkpoint, and the segments each then read after it.
    u_kill+=("$(grep -c 'index loaded from' "$work/logkvd.log" || true)")
    # A compaction since the load may have rewritten a segment a checkpoint describes: then
    # that shard read its hint files, which is not what this row is to measure.
    ((u_kill[-1] == shards)) || echo "scale: WARNING: the load's checkpoints served" \
      "${u_kill[-1]} of $shards shards in this kill -9 restart (see $work/logkvd-kill9.log)" >&2
    a_kill+=("$(sed -n 's/.*; \([0-9]*\) segments written after it to read.*/\1/p' \
      "$work/logkvd.log" | awk '{ s += $1 } END { print s + 0 }')")
  fi
  kill9 logkvd_pid
}
restart_kill9_hints() {  # $1: binary, $2: "ref" or "": one restart after SIGKILL without a
  # checkpoint, recorded
  find "$work/logkvd" -name index.snapshot -delete
  start_logkvd "$1"
  if [[ -n $2 ]]; then
    r_hints+=("$ready_ms") rc_hints+=("$ready_cpu")
    if [[ -z $ref_rss_kb ]]; then
      ref_index_per_key=$(metric logkv_engine_index_bytes_per_key)
      ref_rss_kb=$(rss_anon_kb "$logkvd_pid")
    fi
  else
    t_hints+=("$ready_ms") c_hints+=("$ready_cpu")
    e_hints+=("$(sed -n 's/.*recovered in \([0-9]*\) ms.*/\1/p' "$work/logkvd.log")")
    cp "$work/logkvd.log" "$work/logkvd-hints.log"
    if [[ -z ${logkv_rss_kb:-} ]]; then
      logkv_keys=$(metric logkv_engine_keys)
      index_per_key=$(metric logkv_engine_index_bytes_per_key)
      live_bytes=$(metric logkv_live_bytes)
      logkv_rss_kb=$(rss_anon_kb "$logkvd_pid")
    fi
  fi
  kill9 logkvd_pid
}
restart_nohints() {  # $1: binary, $2: "ref" or "": one restart without hint files, recorded
  find "$work/logkvd" \( -name '*.hint' -o -name index.snapshot \) -delete
  start_logkvd "$1"
  if [[ -n $2 ]]; then
    r_nohints+=("$ready_ms") rc_nohints+=("$ready_cpu")
  else
    t_nohints+=("$ready_ms") c_nohints+=("$ready_cpu")
    cp "$work/logkvd.log" "$work/logkvd-nohints.log"
  fi
  wait_for_hints
  kill9 logkvd_pid
}
restart_clean() {  # $1: binary, $2: "ref" or "": one restart after a clean stop, recorded
  # A logkvd stopped by SIGTERM closes its engine, which writes each shard's index snapshot
  # (docs/engine.md, "Index snapshots"); the next start loads it instead of the hint files.
  local stop_start status=0 snapshots
  start_logkvd "$1"
  wait_for_hints
  stop_start=$(now_ms)
  kill -TERM "$logkvd_pid" || die "logkvd exited before its clean stop"
  wait "$logkvd_pid" || status=$?
  logkvd_pid=""
  ((status == 0)) || die "logkvd's clean stop exited with status $status (see $work/logkvd.log)"
  snapshots=$(find "$work/logkvd" -name index.snapshot | wc -l)
  # (Shards of fewer than --index-snapshot-min-entries entries write none.)
  ((snapshots == shards)) ||
    echo "scale: the clean stop left $snapshots index snapshots for $shards shards" >&2
  if [[ -n $2 ]]; then
    r_stop+=("$(($(now_ms) - stop_start))")
  else
    t_stop+=("$(($(now_ms) - stop_start))")
    snapshot_bytes=$(find "$work/logkvd" -name index.snapshot -printf '%s\n' |
      awk '{ s += $1 } END { print s + 0 }')
  fi
  start_logkvd "$1"
  if [[ -n $2 ]]; then
    r_clean+=("$ready_ms") rc_clean+=("$ready_cpu")
  else
    t_clean+=("$ready_ms") c_clean+=("$ready_cpu")
    e_clean+=("$(sed -n 's/.*recovered in \([0-9]*\) ms.*/\1/p' "$work/logkvd.log")")
    cp "$work/logkvd.log" "$work/logkvd-clean.log"
  fi
  wait_for_hints
  kill9 logkvd_pid
}
# The running logkvd writes the hint files of sealed segments again (within a second or so of
# starting, one segment after another): the next round's kill -9 restart is to find them, as it
# would after any run longer than a few seconds, not scan the segments a second time.
wait_for_hints() {
  local logs hints
  for _ in $(seq 1200); do
    logs=$(find "$work/logkvd" -name '*.log' | wc -l)
    hints=$(find "$work/logkvd" -name '*.hint' | wc -l)
    ((hints >= logs - shards)) && return 0
    sleep 0.1
  done
  echo "scale: the hint files did not come back within 120 s ($hints of $logs segments)" >&2
}
# Runs one kind of restart ($1) of LOGKVD and, with a reference binary, of it too: the two take
# turns going first, round by round.
in_turn() {
  if [[ -n $logkvd_ref && $((rep % 2)) == 0 ]]; then
    "$1" "$logkvd_ref" ref
    "$1" "$logkvd" ""
  else
    "$1" "$logkvd" ""
    [[ -z $logkvd_ref ]] || "$1" "$logkvd_ref" ref
  fi
}
for rep in $(seq "$reps"); do
  in_turn restart_kill9
  in_turn restart_kill9_hints

  start_redis
  t_redis+=("$ready_ms")
  if [[ $rep == 1 ]]; then
    redis_keys=$(redis-cli -p "$redis_port" dbsize)
    redis_used=$(redis-cli -p "$redis_port" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }')
    redis_rss_kb=$(rss_anon_kb "$redis_pid")
  fi
  kill9 redis_pid

  in_turn restart_nohints
  in_turn restart_clean
  echo "scale: round $rep: logkvd clean stop ${t_stop[-1]} ms, restart ${t_clean[-1]} ms" \
    "(${c_clean[-1]} s CPU; the engine's open ${e_clean[-1]} ms)" \
    "${logkvd_ref:+; reference clean stop ${r_stop[-1]} ms, restart ${r_clean[-1]} ms}" \
    "${logkvd_ref:+(${rc_clean[-1]} s CPU)}" >&2
  echo "scale: round $rep: logkvd kill -9 ${t_kill[-1]} ms (${c_kill[-1]} s CPU; the engine's" \
    "open ${e_kill[-1]} ms; the checkpoint used by ${u_kill[-1]} of $shards shards, then" \
    "${a_kill[-1]} segments read after it), hint files only ${t_hints[-1]} ms" \
    "(${c_hints[-1]} s CPU; the engine's open ${e_hints[-1]} ms)," \
    "no hints ${t_nohints[-1]} ms (${c_nohints[-1]} s CPU), redis AOF ${t_redis[-1]} ms" \
    "${logkvd_ref:+; reference kill -9 ${r_kill[-1]} ms (${rc_kill[-1]} s CPU), no hints ${r_nohints[-1]} ms (${rc_nohints[-1]} s CPU)}" >&2
done
# What the last restarts left is what is on disk now (the hint files of the last round's
# kill -9 restart are back once a restart has run a while; du counts them when present).
logkv_du=$(du -s -B1 "$work/logkvd" | cut -f1)
redis_du=$(du -s -B1 "$work/redis" | cut -f1)

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
m_kill=$(median "${t_kill[@]}")
m_hints=$(median "${t_hints[@]}")
m_nohints=$(median "${t_nohints[@]}")
m_redis=$(median "${t_redis[@]}")
m_clean=$(median "${t_clean[@]}")

echo
echo "logkvd vs redis-server $(redis-server --version | awk '{print $3}'), $keys keys requested" \
  "($writes SETs, -r $keyspace, -d 100, -P 16), $(nproc) cores, load after:" \
  "$(uptime | sed 's/.*load average: //')"
printf '%-34s %14s %14s %8s\n' "" logkvd redis ratio
printf '%-34s %14s %14s\n' "keys" "${logkv_keys%.*}" "$redis_keys"
awk -v k="$m_kill" -v h="$m_hints" -v n="$m_nohints" -v c="$m_clean" -v r="$m_redis" \
  -v reps="$reps" 'BEGIN {
  printf "%-34s %14s %14s %8.2f\n", "restart after kill -9, ms (median of " reps ")", k, r, r / k
  printf "%-34s %14s %14s %8.2f\n", "  the same, no checkpoint, ms", h, r, r / h
  printf "%-34s %14s %14s %8.2f\n", "restart without hint files, ms", n, r, r / n
  printf "%-34s %14s %14s %8.2f\n", "restart after a clean stop, ms", c, r, r / c }'
awk -v l="$logkv_rss_kb" -v u="$redis_used" -v rr="$redis_rss_kb" -v keys="${logkv_keys%.*}" \
  -v ib="$index_per_key" -v ld="$logkv_du" -v rd="$redis_du" -v live="${live_bytes%.*}" 'BEGIN {
  printf "%-34s %14.1f %14.1f %8.2f\n", "RssAnon MiB (redis: used_memory)", l / 1024, u / 1048576, (l * 1024) / u
  printf "%-34s %14.1f %14.1f\n", "RssAnon MiB", l / 1024, rr / 1024
  printf "%-34s %14.1f\n", "index bytes per key (metrics)", ib
  printf "%-34s %14.1f %14.1f %8.2f\n", "disk MiB (du)", ld / 1048576, rd / 1048576, ld / rd
  printf "%-34s %14.1f %14s %8.2f\n", "live MiB (metrics), du / live", live / 1048576, "-", ld / live }'
echo "times: logkvd kill -9 ${t_kill[*]}; no checkpoint ${t_hints[*]}; no hints ${t_nohints[*]};" \
  "redis ${t_redis[*]} (ms)"
echo "CPU seconds of the open: logkvd kill -9 ${c_kill[*]}; no checkpoint ${c_hints[*]};" \
  "no hints ${c_nohints[*]}"
echo "checkpoints written by the load: $(grep -c "checkpoint of" "$work/logkvd-load.log" 2>/dev/null || true);" \
  "used by the kill -9 restarts: ${u_kill[*]} of $shards shards; segments read after them:" \
  "${a_kill[*]}"
echo "clean stop (SIGTERM to exit) ${t_stop[*]} ms; restart after it ${t_clean[*]} ms (the" \
  "engine's open ${e_clean[*]} ms; ${c_clean[*]} s CPU);" \
  "index snapshots $((snapshot_bytes / 1048576)) MiB"
if [[ -n $logkvd_ref ]]; then
  echo
  echo "reference $logkvd_ref, restarted in alternation on the same directory:"
  printf '%-34s %14s %14s %8s\n' "" logkvd reference "ref/new"
  awk -v k="$m_kill" -v rk="$(median "${r_kill[@]}")" -v h="$m_hints" \
    -v rh="$(median "${r_hints[@]}")" -v n="$m_nohints" \
    -v rn="$(median "${r_nohints[@]}")" -v ck="$(median "${c_kill[@]}")" \
    -v rck="$(median "${rc_kill[@]}")" -v cn="$(median "${c_nohints[@]}")" \
    -v rcn="$(median "${rc_nohints[@]}")" -v c="$m_clean" -v rc="$(median "${r_clean[@]}")" \
    -v cc="$(median "${c_clean[@]}")" -v rcc="$(median "${rc_clean[@]}")" \
    -v l="$logkv_rss_kb" -v rl="$ref_rss_kb" \
    -v ib="$index_per_key" -v rib="$ref_index_per_key" -v u="$redis_used" 'BEGIN {
    printf "%-34s %14s %14s %8.2f\n", "restart after kill -9, ms", k, rk, rk / k
    printf "%-34s %14s %14s %8.2f\n", "  CPU seconds", ck, rck, rck / ck
    printf "%-34s %14s %14s %8.2f\n", "  no checkpoint, ms", h, rh, rh / h
    printf "%-34s %14s %14s %8.2f\n", "restart without hint files, ms", n, rn, rn / n
    printf "%-34s %14s %14s %8.2f\n", "  CPU seconds", cn, rcn, rcn / cn
    printf "%-34s %14s %14s %8.2f\n", "restart after a clean stop, ms", c, rc, rc / c
    printf "%-34s %14s %14s %8.2f\n", "  CPU seconds", cc, rcc, rcc / cc
    printf "%-34s %14.1f %14.1f %8.2f\n", "RssAnon MiB", l / 1024, rl / 1024, rl / l
    printf "%-34s %14.2f %14.2f\n", "RssAnon / redis used_memory", (l * 1024) / u, (rl * 1024) / u
    printf "%-34s %14.1f %14.1f %8.2f\n", "index bytes per key (metrics)", ib, rib, rib / ib }'
  echo "reference times: kill -9 ${r_kill[*]}; no checkpoint ${r_hints[*]};" \
    "no hints ${r_nohints[*]} (ms);" \
    "CPU seconds: kill -9 ${rc_kill[*]}; no hints ${rc_nohints[*]};" \
    "clean stop ${r_stop[*]} ms, restart after it ${r_clean[*]} ms"
fi
