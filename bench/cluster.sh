#!/usr/bin/env bash
# A 3-node logkvd cluster (N = 3) on this machine against a single logkvd, under the same
# load, in one run; then the anti-entropy repair rate of a node that missed 100,000 writes.
#
#   bench/cluster.sh                 # 200,000 requests per test, 1,000,000 pipelined, 3 rounds
#   N=20000 ROUNDS=1 REPAIR_KEYS=20000 bench/cluster.sh   # a quick run
#
# Each of ROUNDS rounds starts the single node from an empty data directory and runs every
# workload on it, stops it, then starts the cluster from empty directories and runs them
# eventual, then strong, so that each round's ratios compare runs minutes apart at most and
# no server's background work (compaction, anti-entropy) overlaps another's load. The table
# gives each figure's median over the rounds and each ratio's median of the rounds' ratios;
# every round's P16 SET figures are printed below it. (Pipelined tests run N_P16 requests: at 16 in flight a single node serves
# several hundred thousand a second, and a run of under a second measures the machine's
# moment more than the server.)
#
# Workloads (logkv-bench, binary protocol, 50 connections, 100-byte values, 100,000 random
# keys, SET then GET, each without pipelining (P1) and with 16 requests in flight (P16)):
#   single    one logkvd, no cluster
#   eventual  the cluster through node 0, --consistency=eventual (W = R = 1)
#   strong    the cluster through node 0, --consistency=strong (W = R = 2 of 3, ABD)
#   eventual-all, strong-all  the same, P16 only, with logkv-bench's connections spread
#             over the three nodes (--hosts, round robin), as clients that reach every
#             node load a cluster: each node coordinates a third of the writes
#   consensus the cluster restarted with --consensus-prefix=key: (every benchmark key a
#             consensus key: each SET one entry of the control plane's Raft log, each GET a
#             local read after a KvSync entry shared with the GETs that arrive while it is
#             in flight; docs/cluster.md, "Compare-and-set"), P1 only,
#             CONSENSUS_N requests, through node 0 (which leads the control plane) and
#             through node 1 (a follower: forwarded to the leader)
# Repair: node 2 is stopped, REPAIR_KEYS writes of new keys go to node 0, node 2 is wiped
# and restarted; the time until its /metrics key_count reaches node 0's gives keys/s. (A
# wiped node misses everything, so it also pulls the keys of the load above; the figure
# is keys repaired over the time to repair them. Hints queued for node 2 while it was down
# are delivered at the same time; the anti-entropy counters are printed beside.)
#
# Environment: N (requests per test), N_P16 (requests per pipelined test, default 5 x N),
# ROUNDS (default 3), REPAIR_KEYS (default 100000), CONSENSUS_N (default
# 20000; 0 skips the consensus runs), CONSENSUS_VALUE_BYTES and CONSENSUS_KEYS (the
# consensus runs' value size, at most 65536, and key count, default 100 and 100000; the
# cluster holds at most 16 MiB of consensus values in 100,000 keys, so 16 keys of 65536
# bytes fit; the rps/strong and p50/strong columns are printed only when both are the
# strong runs' 100 and 100000), LOGKVD (default
# build-release/bin/logkvd), LOGKV_BENCH (default build-release/bin/logkv-bench),
# LOGKVD_ARGS (flags of every server, default "--threads=1"), REPAIR_TIMEOUT_S (default 600).
# Missing default binaries are built (Release, build-release/).
#
# Every server runs one event-loop thread: three nodes and the load generator share two
# cores, and more loops would measure the scheduler. Everything started is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=cluster-bench
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
requests=${N:-200000}
pipelined_requests=${N_P16:-$((requests * 5))}
rounds=${ROUNDS:-3}
repair_keys=${REPAIR_KEYS:-100000}
consensus_requests=${CONSENSUS_N:-20000}
consensus_value_bytes=${CONSENSUS_VALUE_BYTES:-100}
consensus_keys=${CONSENSUS_KEYS:-100000}
repair_timeout_s=${REPAIR_TIMEOUT_S:-600}
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS---threads=1}"
clients=50
value_bytes=100
keyspace=100000
nodes=3


for tool in curl jq ss shuf; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ $requests =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '$requests'"
[[ $pipelined_requests =~ ^[1-9][0-9]*$ ]] ||
  die "N_P16 must be a positive integer, not '$pipelined_requests'"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
[[ $repair_keys =~ ^[1-9][0-9]*$ ]] || die "REPAIR_KEYS must be a positive integer"
[[ $consensus_requests =~ ^[0-9]+$ ]] || die "CONSENSUS_N must be a number"
[[ $consensus_value_bytes =~ ^[1-9][0-9]*$ && $consensus_value_bytes -le 65536 ]] ||
  die "CONSENSUS_VALUE_BYTES must be a positive integer of at most 65536 (a consensus value's limit)"
[[ $consensus_keys =~ ^[1-9][0-9]*$ ]] || die "CONSENSUS_KEYS must be a positive integer"

ensure_release_binaries "$logkvd" "$bench"
"$bench" --help 2>&1 | grep -q -- --hosts ||
  die "$bench has no --hosts flag: rebuild it (tools/logkv_bench.cc)"

work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-cluster-bench.XXXXXX")
declare -A pids=()   # name -> pid of every server started
declare -A ports=()  # name -> binary port
declare -A https=()  # name -> HTTP port

stop_server() {  # $1: name
  stop_pid "${pids[$1]:-}"
  unset "pids[$1]"
}

cleanup() {
  local rc=$? name
  for name in "${!pids[@]}"; do stop_server "$name"; done
  if [[ $rc -ne 0 ]]; then
    for name in "$work"/*.log; do
      [[ -f $name ]] || continue
      echo "---- last lines of $(basename "$name")" >&2
      tail -n 15 "$name" >&2
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
# Turn an interrupt into a normal exit so the EXIT trap stops the servers.
trap 'exit 130' INT TERM

# Starts logkvd as $1 with data directory $2 and extra flags; waits for both ports.
start_server() {
  local name=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  if [[ -z ${ports[$name]:-} ]]; then
    ports[$name]=$(free_port)
    https[$name]=$(free_port)
  fi
  "$logkvd" --listen="127.0.0.1:${ports[$name]}" --http="127.0.0.1:${https[$name]}" \
    --data_dir="$dir" "${logkvd_extra_args[@]}" "$@" 2>>"$work/$name.log" &
  pids[$name]=$!
  for _ in $(seq 300); do
    if ! kill -0 "${pids[$name]}" 2>/dev/null; then
      tail -n 20 "$work/$name.log" >&2
      die "$name exited during start-up (log: above)"
    fi
    if curl -fs "http://127.0.0.1:${https[$name]}/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  tail -n 20 "$work/$name.log" >&2
  die "$name was not ready after 30 s"
}

start_node() {  # $1: index, then extra flags
  local i=$1 seeds=()
  shift
  [[ -n ${ports[n$i]:-} ]] || { ports[n$i]=$(free_port); https[n$i]=$(free_port); }
  if [[ $i -ne 0 ]]; then seeds=(--seeds="127.0.0.1:${ports[n0]}"); fi
  start_server "n$i" "$work/n$i" --node-id="n$i" --advertise="127.0.0.1:${ports[n$i]}" \
    --cluster-secret=cluster-bench --replicas=3 "${seeds[@]}" "$@"
}

# Waits until every node's GET /nodes lists all $nodes alive.
wait_members() {
  local i alive ok settled
  for _ in $(seq 300); do
    ok=1
    for i in $(seq 0 $((nodes - 1))); do
      alive=$(curl -fs "http://127.0.0.1:${https[n$i]}/nodes" 2>/dev/null |
        jq '[.[] | select(.alive == true or .state == "alive")] | length' 2>/dev/null || echo 0)
      [[ ${alive:-0} -ge $nodes ]] || ok=0
      # Settled: not still syncing (a node's first anti-entropy pass after the
      # last join has run: until then it reads its keys from its peers) and,
      # where the node says so, its view confirmed.
      settled=$(curl -fs "http://127.0.0.1:${https[n$i]}/health" 2>/dev/null |
        jq -r 'if .mode == "syncing" or .view_confirmed == false then "no" else "yes" end' \
          2>/dev/null || echo no)
      [[ $settled == yes ]] || ok=0
    done
    [[ $ok -eq 1 ]] && return 0
    sleep 0.1
  done
  die "the cluster did not settle (membership, anti-entropy) in 30 s"
}

key_count() {  # $1: name; empty when the node does not answer
  { curl -fs "http://127.0.0.1:${https[$1]}/metrics" || true; } | jq -r '.key_count // empty' || true
}

# Sum of the Prometheus samples of node $1 whose metric name matches $2 (a regex).
prometheus_sum() {
  { curl -fs "http://127.0.0.1:${https[$1]}/metrics?format=prometheus" || true; } |
    awk -v pattern="$2" '$1 !~ /^#/ { name = $1; sub(/\{.*/, "", name)
                                      if (name ~ pattern) { sum += $NF; found = 1 } }
                         END { if (found) printf "%.0f", sum; else printf "-" }'
}

# Appends "target,pipeline,test,rps,p50,p99,round" rows to $work/results.csv (round: $round).
failures=0
round=1
run() {  # $1: target label, $2: server name (all: every node), $3: pipeline, $4...: extra flags
  local target=$1 name=$2 pipeline=$3 out=$work/bench-$1-P$3-$round i
  shift 3
  local servers=(-h 127.0.0.1 -p "${ports[$name]:-}") every=()
  if [[ $name == all ]]; then
    for i in $(seq 0 $((nodes - 1))); do every+=("127.0.0.1:${ports[n$i]}"); done
    servers=(--hosts "$(IFS=,; echo "${every[*]}")")
  fi
  local n=$requests
  [[ $pipeline == 1 ]] || n=$pipelined_requests
  echo "cluster-bench: round $round: $target, P$pipeline ..." >&2
  local rc=0
  "$bench" "${servers[@]}" -c "$clients" -n "${run_requests:-$n}" \
    -d "${run_value_bytes:-$value_bytes}" \
    -r "${run_keyspace:-$keyspace}" -t set,get -P "$pipeline" --csv "$@" >"$out.csv" 2>"$out.err" || rc=$?
  if [[ $rc -ne 0 ]] || ! grep -q '^"SET"' "$out.csv" || ! grep -q '^"GET"' "$out.csv"; then
    echo "cluster-bench: $target P$pipeline failed with status $rc:" >&2
    cat "$out.err" >&2
    failures=$((failures + 1))
    printf '%s,P%s,SET,failed,-,-,%s\n%s,P%s,GET,failed,-,-,%s\n' "$target" "$pipeline" "$round" \
      "$target" "$pipeline" "$round" >>"$work/results.csv"
    return 0
  fi
  # redis-benchmark's CSV columns: test, rps, avg, min, p50, p95, p99, max (all quoted).
  tr -d '"' <"$out.csv" | awk -F, -v target="$target" -v p="P$pipeline" -v r="$round" \
    'NR > 1 && NF >= 8 { print target "," p "," $1 "," $2 "," $5 "," $7 "," r }' \
    >>"$work/results.csv"
}

: >"$work/results.csv"

# ---- The single node, then the cluster, in rounds, each from empty data directories ----
for round in $(seq "$rounds"); do
  rm -rf "$work/single"
  start_server single "$work/single"
  run single single 1
  run single single 16
  stop_server single
  for i in $(seq 0 $((nodes - 1))); do rm -rf "$work/n$i"; start_node "$i"; done
  wait_members
  for consistency in eventual strong; do
    run "$consistency" n0 1 --consistency="$consistency"
    run "$consistency" n0 16 --consistency="$consistency"
  done
  for consistency in eventual strong; do
    run "$consistency-all" all 16 --consistency="$consistency"
  done
  # The last round's cluster stays for the repair below.
  if [[ $round -lt $rounds ]]; then
    for i in $(seq 0 $((nodes - 1))); do stop_server "n$i"; done
  fi
done

# ---- Anti-entropy repair of a node that missed the writes ----
echo "cluster-bench: repair: n2 stopped, $repair_keys writes to n0, n2 wiped and restarted ..." >&2
stop_server n2
repair_out=$work/bench-repair
"$bench" -h 127.0.0.1 -p "${ports[n0]}" -c "$clients" -n "$repair_keys" -d "$value_bytes" \
  -r 1000000000 -t set -P 16 --consistency=eventual --csv >"$repair_out.csv" 2>"$repair_out.err" ||
  { cat "$repair_out.err" >&2; die "the repair load failed"; }
rm -rf "$work/n2"
target=$(key_count n0)
[[ -n $target ]] || die "no key_count in n0's /metrics"
start=$(date +%s.%N)
# A node that lost its data takes its member's place with --replace (builds
# without a control plane have no such flag and need none).
replace_flag=()
"$logkvd" --help 2>&1 | grep -q -- '--replace' && replace_flag=(--replace)
start_node 2 "${replace_flag[@]}"
repair_seconds=""
have=0
deadline=$(($(date +%s) + repair_timeout_s))
while [[ $(date +%s) -lt $deadline ]]; do
  have=$(key_count n2 || echo 0)
  if [[ -n $have && $have -ge $target ]]; then
    repair_seconds=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.3f", a - b }')
    break
  fi
  sleep 0.2
done
ae_keys=0
ae_bytes=0
for i in $(seq 0 $((nodes - 1))); do
  k=$(prometheus_sum "n$i" '^logkv_anti_entropy_keys_repaired_total$')
  b=$(prometheus_sum "n$i" '^logkv_anti_entropy_bytes_total$')
  [[ $k == - ]] || ae_keys=$((ae_keys + k))
  [[ $b == - ]] || ae_bytes=$((ae_bytes + b))
done
own_rate=$(prometheus_sum n2 '^logkv_anti_entropy_repair_keys_per_second$')

# ---- Consensus keys: the cluster again, every benchmark key a consensus key ----
if [[ $consensus_requests -gt 0 ]]; then
  for i in $(seq 0 $((nodes - 1))); do stop_server "n$i"; rm -rf "$work/n$i"; done
  start_node 0 --consensus-prefix=key:
  for i in $(seq 1 $((nodes - 1))); do start_node "$i" --consensus-prefix=key:; done
  wait_members
  run_requests=$consensus_requests run_value_bytes=$consensus_value_bytes \
    run_keyspace=$consensus_keys run consensus n0 1 --consistency=strong
  run_requests=$consensus_requests run_value_bytes=$consensus_value_bytes \
    run_keyspace=$consensus_keys run consensus-via-follower n1 1 --consistency=strong
fi

# ---- Report ----
echo
echo "logkvd cluster ($nodes nodes, N=3, through n0) vs one logkvd, same run: -c $clients" \
  "-n $requests (P16: $pipelined_requests) -d $value_bytes -r $keyspace -t set,get, $(nproc) cores," \
  "server flags: ${logkvd_extra_args[*]}; latencies in ms"
echo
awk -F, -v rounds="$rounds" '
  # The median of a list of numbers separated by spaces (mawk has no sort).
  function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return ""
    for (i = 2; i <= n; i++) {
      t = a[i] + 0
      for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
      a[j + 1] = t
    }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  function fmt(x, f) { return x == "" ? "-" : sprintf(f, x) }
  # The median of the rounds ratios of target t to the single node in row k.
  function ratio(k, t,    r, list) {
    list = ""
    for (r = 1; r <= rounds; r++) {
      if (one[k, "single", r] + 0 > 0 && one[k, t, r] + 0 > 0)
        list = list " " one[k, t, r] / one[k, "single", r]
    }
    return median(list)
  }
  $1 == "single" || $1 == "eventual" || $1 == "strong" || $1 ~ /-all$/ {
    key = $2 SUBSEP $3
    if (!(key in seen)) { seen[key] = 1; order[++rows] = key; pipe[key] = $2; test[key] = $3 }
    if ($4 + 0 > 0) {
      rps[key, $1] = rps[key, $1] " " $4; p50[key, $1] = p50[key, $1] " " $5
      p99[key, $1] = p99[key, $1] " " $6; one[key, $1, $7] = $4
    }
  }
  END {
    printf "%-4s %-4s | %10s %7s %7s | %10s %7s %7s %6s | %10s %7s %7s %6s\n", "", "test",
           "single rps", "p50", "p99", "event. rps", "p50", "p99", "/1", "strong rps", "p50",
           "p99", "/1"
    for (i = 1; i <= rows; i++) {
      k = order[i]
      line = sprintf("%-4s %-4s", pipe[k], test[k])
      n = split("single eventual strong", targets, " ")
      for (j = 1; j <= n; j++) {
        t = targets[j]
        line = line sprintf(" | %10s %7s %7s", fmt(median(rps[k, t]), "%.0f"),
                            fmt(median(p50[k, t]), "%.3f"), fmt(median(p99[k, t]), "%.3f"))
        if (t != "single") line = line sprintf(" %6s", fmt(ratio(k, t), "%.2f"))
      }
      print line
    }
    printf "through all %s nodes (--hosts):", nodes
    n = split("eventual-all strong-all", targets, " ")
    for (i = 1; i <= rows; i++) {
      k = order[i]
      if (pipe[k] != "P16") continue
      for (j = 1; j <= n; j++) {
        t = targets[j]
        printf "\n  %s %s %-12s %10s rps, p50 %s, p99 %s, /1 %s", pipe[k], test[k], t,
               fmt(median(rps[k, t]), "%.0f"), fmt(median(p50[k, t]), "%.3f"),
               fmt(median(p99[k, t]), "%.3f"), fmt(ratio(k, t), "%.2f")
      }
    }
    print ""
    if (rounds > 1) {
      print "(medians of " rounds " rounds)"
      k = "P16" SUBSEP "SET"
      for (r = 1; r <= rounds; r++) {
        line = sprintf("round %d, P16 SET rps:", r)
        n = split("single eventual strong eventual-all strong-all", targets, " ")
        for (j = 1; j <= n; j++) {
          t = targets[j]
          line = line sprintf(" %s %s", t, one[k, t, r] == "" ? "-" : sprintf("%.0f", one[k, t, r]))
          if (t != "single" && one[k, "single", r] + 0 > 0 && one[k, t, r] + 0 > 0)
            line = line sprintf(" (%.2f)", one[k, t, r] / one[k, "single", r])
        }
        print line
      }
    }
  }' nodes="$nodes" "$work/results.csv"
echo "(/1: the cluster's rps over the single node's)"
echo
if [[ $consensus_requests -gt 0 ]]; then
  echo "consensus keys (P1, -n $consensus_requests -d $consensus_value_bytes -r $consensus_keys)" \
    "beside strong (ABD) keys, same run:"
  comparable=0
  [[ $consensus_value_bytes -eq $value_bytes && $consensus_keys -eq $keyspace ]] && comparable=1
  awk -F, -v comparable="$comparable" -v rounds="$rounds" '
    # strong: its last round, the nearest in time to the consensus runs.
    $2 == "P1" && ($1 != "strong" || $7 == rounds) { rps[$1, $3] = $4; p50[$1, $3] = $5; p99[$1, $3] = $6 }
    END {
      printf "%-24s %-4s | %10s %7s %7s | %9s %9s\n", "target", "test", "rps", "p50", "p99",
             "rps/strong", "p50/strong"
      n = split("consensus consensus-via-follower", targets, " ")
      for (i = 1; i <= n; i++) for (j = 1; j <= 2; j++) {
        t = targets[i]; x = (j == 1 ? "SET" : "GET")
        if (!((t, x) in rps)) continue
        rr = (comparable && rps["strong", x] + 0 > 0 && rps[t, x] + 0 > 0) ? sprintf("%.2f", rps[t, x] / rps["strong", x]) : "-"
        rl = (comparable && p50["strong", x] + 0 > 0 && p50[t, x] + 0 > 0) ? sprintf("%.2f", p50[t, x] / p50["strong", x]) : "-"
        printf "%-24s %-4s | %10s %7s %7s | %9s %9s\n", t, x, rps[t, x], p50[t, x], p99[t, x], rr, rl
      }
    }' "$work/results.csv"
  echo
fi
if [[ -n $repair_seconds ]]; then
  printf 'repair: n2 (wiped after missing %s writes) reached %s keys in %.2f s = %.0f keys/s\n' \
    "$repair_keys" "$target" "$repair_seconds" \
    "$(awk -v k="$target" -v s="$repair_seconds" 'BEGIN { printf "%.0f", (s > 0 ? k / s : 0) }')"
else
  failures=$((failures + 1))
  echo "repair: n2 had $have of $target keys after ${repair_timeout_s} s (not repaired)"
fi
echo "        anti-entropy over all nodes: $ae_keys keys repaired, $ae_bytes bytes;" \
  "n2's own last-round rate: $own_rate keys/s"

[[ $failures -eq 0 ]] || die "$failures run(s) failed (see above)"
