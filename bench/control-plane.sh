#!/usr/bin/env bash
# The control plane's figures on this machine, in one run:
#   1. strong SET latency on a 3-node cluster: one client, one key (-c 1 -r 1), and
#      50 clients over 100,000 keys, through node 0 (logkv-bench --consistency=strong);
#   2. two nodes joining a 3-node cluster under load (a 5-node cluster at the end): the
#      time from each new node's start to its being ready (added to Raft, the epoch
#      barrier, the fill of its keys, its activation applied), the load's throughput
#      while they join beside the same load on the settled 5-node cluster, and the
#      leader's proposal-to-applied time: mean, and the p50 and p99 bucket bounds of
#      the logkv_control_apply_seconds histogram.
#
#   bench/control-plane.sh                 # 100,000 requests per load
#   N=20000 bench/control-plane.sh         # a quick run
#
# Environment: N (requests per load), LOGKVD, LOGKV_BENCH (default build-release/bin/...),
# LOGKVD_ARGS (flags of every server, default "--threads=1"). Every server started is
# stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=control-plane-bench
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
requests=${N:-100000}
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS---threads=1}"

for tool in curl jq ss shuf awk; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ $requests =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '$requests'"
ensure_release_binaries "$logkvd" "$bench"

work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-control-bench.XXXXXX")
declare -A pids=() ports=() https=()
cleanup() {
  local name
  for name in "${!pids[@]}"; do stop_pid "${pids[$name]}"; done
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.3f", a - b }'; }

# Starts node n$1 (seeded through n0 unless it is n0); returns once /health answers.
start_node() {
  local i=$1 name=n$1 seeds=()
  ports[$name]=$(free_port)
  https[$name]=$(free_port)
  [[ $i -ne 0 ]] && seeds=(--seeds="127.0.0.1:${ports[n0]}")
  mkdir -p "$work/$name"
  "$logkvd" --listen="127.0.0.1:${ports[$name]}" --http="127.0.0.1:${https[$name]}" \
    --data_dir="$work/$name" --node-id="$name" --cluster-secret=control-bench --replicas=3 \
    "${logkvd_extra_args[@]}" "${seeds[@]}" 2>>"$work/$name.log" &
  pids[$name]=$!
  wait_ready "${pids[$name]}" "curl -fs http://127.0.0.1:${https[$name]}/health >/dev/null" \
    "$work/$name.log"
}

# Prometheus value of metric $2 on node $1.
metric() {
  curl -fs "http://127.0.0.1:${https[$1]}/metrics?format=prometheus" |
    awk -v m="$2" '$1 == m { print $2 }'
}

# The upper bound (ms) of the histogram bucket holding quantile $3 of metric $2 on node $1.
quantile_ms() {
  curl -fs "http://127.0.0.1:${https[$1]}/metrics?format=prometheus" |
    awk -v m="$2_bucket" -v q="$3" '
      index($1, m "{le=\"") == 1 {
        le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
        bound[n] = le; count[n] = $2; n++
      }
      END {
        total = count[n - 1]
        for (i = 0; i < n; i++) {
          if (total > 0 && count[i] >= q * total) {
            if (bound[i] == "+Inf") { print "inf" } else { printf "%.1f", 1000 * bound[i] }
            exit
          }
        }
        print "n/a"
      }'
}

# Runs logkv-bench against n0; prints "rps p50 p99" of its first test.
load() {  # $@: logkv-bench flags
  "$bench" -h 127.0.0.1 -p "${ports[n0]}" -d 100 --csv "$@" 2>"$work/bench.err" |
    tr -d '"' | awk -F, 'NR == 2 { print $2, $5, $7 }'
}

for i in 0 1 2; do start_node "$i"; done
# The members are active once each start returned; a moment for the last epoch to reach all.
sleep 1

echo "control-plane-bench: strong SET latency on 3 nodes ..." >&2
read -r one_rps one_p50 one_p99 < <(load -c 1 -n "$((requests / 10))" -r 1 -t set --consistency=strong)
read -r many_rps many_p50 many_p99 < <(load -c 50 -n "$requests" -r 100000 -t set --consistency=strong)

echo "control-plane-bench: two nodes join under load ..." >&2
# Ten times the requests, so that the load outlasts both joins.
join_requests=$((requests * 10))
"$bench" -h 127.0.0.1 -p "${ports[n0]}" -c 50 -n "$join_requests" -d 100 -r 100000 -t set -P 16 \
  --consistency=eventual --csv >"$work/join-load.csv" 2>"$work/join-load.err" &
load_pid=$!
sleep 0.5
start=$(now); start_node 3; join3=$(since "$start")
start=$(now); start_node 4; join4=$(since "$start")
load_running_at_join=$(kill -0 "$load_pid" 2>/dev/null && echo yes || echo no)
wait "$load_pid" || die "the load during the joins failed: $(cat "$work/join-load.err")"
join_rps=$(tr -d '"' <"$work/join-load.csv" | awk -F, 'NR == 2 { print $2 }')
read -r settled_rps _ _ < <(load -c 50 -n "$join_requests" -r 100000 -t set -P 16 --consistency=eventual)

leader=""
for i in 0 1 2 3 4; do
  [[ $(metric "n$i" logkv_control_leader) == 1 ]] && leader=n$i
done
[[ -n $leader ]] || die "no node says it leads the control plane"
apply_sum=$(metric "$leader" logkv_control_apply_seconds_sum)
[[ -n $apply_sum ]] || die "no logkv_control_apply_seconds_sum on $leader"
proposals=$(metric "$leader" logkv_control_proposals_total)
applied=$(metric "$leader" logkv_control_apply_seconds_count)
apply_p50=$(quantile_ms "$leader" logkv_control_apply_seconds 0.5)
apply_p99=$(quantile_ms "$leader" logkv_control_apply_seconds 0.99)
epoch=$(metric n0 logkv_control_epoch)

echo
echo "strong SET, 3 nodes, 1 client, 1 key:      ${one_rps} req/s, p50 ${one_p50} ms, p99 ${one_p99} ms"
echo "strong SET, 3 nodes, 50 clients:           ${many_rps} req/s, p50 ${many_p50} ms, p99 ${many_p99} ms"
echo "join under load (eventual SET -P 16):      n3 ready in ${join3} s, n4 in ${join4} s (load still running after both: ${load_running_at_join})"
echo "load throughput while joining / settled:   ${join_rps} / ${settled_rps} req/s ($(awk -v a="$join_rps" -v b="$settled_rps" 'BEGIN { printf "%.2f", a / b }')x)"
echo "control plane on the leader ($leader):        ${proposals} proposals, mean apply $(awk -v s="$apply_sum" -v n="$applied" 'BEGIN { printf "%.2f", (n > 0 ? 1000 * s / n : 0) }') ms over ${applied}, p50 <= ${apply_p50} ms, p99 <= ${apply_p99} ms; epoch ${epoch}"
