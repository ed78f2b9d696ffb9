#!/usr/bin/env bash
# What the ACL check costs per request (docs/security.md): two logkvd nodes with
# --auth=on side by side in one run, one with no ACLs and one with 1,000 ACL
# prefixes and 100 groups, measured in alternation under the same load:
#
#   REST GET     wrk -c 50 on GET /v1/kv/{key} with X-API-Key, WRK_SECONDS each
#   binary GET   logkv-bench -a KEY -t get -c 50 -r 100000, N requests each
#
# On the node with ACLs the owner reads its own namespace (the key's prefix has an
# entry among the 1,000; the longest-prefix match runs on every request), and a
# second user reads the owner's namespace through a group (X-Namespace /
# --namespace): the path a shared namespace takes. Each is paired with the owner
# on the node without ACLs. ROUNDS rounds (default 3); the medians and their
# ratios are printed, for throughput and for the server's CPU time per request
# (the steadier of the two on a machine shared with other work).
#
#   bench/acl.sh                      # N=200000, WRK_SECONDS=5, ROUNDS=3
#   N=50000 WRK_SECONDS=2 bench/acl.sh
#
# Environment: N, WRK_SECONDS, ROUNDS, LOGKVD, LOGKV_BENCH (default build-release/bin/,
# built when missing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=acl
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
requests=${N:-200000}
wrk_seconds=${WRK_SECONDS:-5}
rounds=${ROUNDS:-3}
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
bench=${LOGKV_BENCH:-$root/build-release/bin/logkv-bench}
keyspace=100000
clients=50

for tool in wrk curl python3 ss; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
ensure_release_binaries "$logkvd" "$bench"

work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-acl.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A port http pid
start_node() {  # $1: name
  local dir=$work/$1
  mkdir -p "$dir/data"
  port[$1]=$(free_port)
  http[$1]=$(free_port)
  "$logkvd" --listen="127.0.0.1:${port[$1]}" --http="127.0.0.1:${http[$1]}" \
    --data_dir="$dir/data" --auth=on --rate-limit=0 --threads=1 2>"$dir/logkvd.log" &
  pids+=($!)
  pid[$1]=$!
  wait_ready "$!" "grep -q 'listening on .*HTTP' '$dir/logkvd.log'" "$dir/logkvd.log"
}

json() { python3 -c "import sys, json; print(json.load(sys.stdin)$1)"; }

# Signs up $2 on node $1 and prints an API key of it.
new_user() {
  local base=http://127.0.0.1:${http[$1]} name=$2 token
  curl -sf -X POST "$base/signup" -d "{\"email\":\"$name@example.com\",\"username\":\"$name\",\"password\":\"securepass123\"}" >/dev/null
  token=$(curl -sf -X POST "$base/login" -d "{\"email\":\"$name@example.com\",\"password\":\"securepass123\"}" | json '["access_token"]')
  curl -sf -X POST "$base/apikeys" -H "Authorization: Bearer $token" \
    -d '{"name":"bench","scopes":["read","write"]}' | json '["key"]'
}

declare -A admin_key owner_key reader_key
for node in plain acl; do
  start_node "$node"
  admin_key[$node]=$(new_user "$node" admin)
  owner_key[$node]=$(new_user "$node" owner)    # user 2
  reader_key[$node]=$(new_user "$node" reader)  # user 3
  "$bench" -p "${port[$node]}" -a "${owner_key[$node]}" -t set -n "$keyspace" -r "$keyspace" \
    -c "$clients" -q >/dev/null
  # The key the REST runs read (random keys above need not include it).
  curl -sf -X PUT "http://127.0.0.1:${http[$node]}/v1/kv/key:000000000042" \
    -H "X-API-Key: ${owner_key[$node]}" -d xxx >/dev/null || die "PUT on $node"
done

# 100 groups (the reader in every other one) and 1,000 prefixes on the owner's
# namespace, each with one of the groups; "key:" (every benchmarked key) among them.
echo "acl: 100 groups and 1,000 ACL prefixes on the second node ..." >&2
base=http://127.0.0.1:${http[acl]}
for g in $(seq 1 100); do
  members="[]"
  ((g % 2 == 1)) && members="[3]"
  curl -sf -X POST "$base/api/groups" -H "X-API-Key: ${admin_key[acl]}" \
    -d "{\"name\":\"g$g\",\"members\":$members}" >/dev/null || die "group $g"
done
for i in $(seq 0 998); do
  curl -sf -X PUT "$base/api/acl?prefix=$(printf 'p%04d/' "$i")" -H "X-API-Key: ${owner_key[acl]}" \
    -d "{\"mode\":\"cdwrcdwr---r\",\"group\":$((i % 100 + 1))}" >/dev/null || die "ACL $i"
done
curl -sf -X PUT "$base/api/acl?prefix=key:" -H "X-API-Key: ${owner_key[acl]}" \
  -d '{"mode":"cdwr---r----","group":1}' >/dev/null || die "ACL key:"
entries=$(curl -sf "$base/api/acl" -H "X-API-Key: ${owner_key[acl]}" | json '["entries"].__len__()')
[[ $entries -eq 1000 ]] || die "expected 1000 ACL entries, found $entries"

# The server's CPU time (user + system) so far, in clock ticks: on a machine
# shared with other work, CPU time per request is the steadier figure.
ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Each prints "requests/s server-CPU-microseconds-per-request".
url_key=key:000000000042
rest_get() {  # $1: node, $2: API key, $3: namespace header or ""
  local headers=(-H "X-API-Key: $2")
  [[ -n $3 ]] && headers+=(-H "X-Namespace: $3")
  local status before out
  status=$(curl -s -o /dev/null -w '%{http_code}' "${headers[@]}" "http://127.0.0.1:${http[$1]}/v1/kv/$url_key")
  [[ $status == 200 ]] || die "REST GET on $1 answered $status"
  before=$(cpu_ticks "${pid[$1]}")
  out=$(wrk -t1 -c "$clients" -d "${wrk_seconds}s" "${headers[@]}" \
    "http://127.0.0.1:${http[$1]}/v1/kv/$url_key")
  awk -v used=$(($(cpu_ticks "${pid[$1]}") - before)) -v hz="$ticks" '
    /requests in/ { n = $1 } /Requests\/sec/ { rps = $2 }
    END { printf "%s %.3f\n", rps, (n > 0 ? used / hz * 1e6 / n : 0) }' <<<"$out"
}
binary_get() {  # $1: node, $2: API key, $3: namespace or ""
  local extra=() before rps
  [[ -n $3 ]] && extra=(--namespace "$3")
  before=$(cpu_ticks "${pid[$1]}")
  rps=$("$bench" -p "${port[$1]}" -a "$2" "${extra[@]}" -t get -n "$requests" -r "$keyspace" \
    -c "$clients" --csv | tr -d '"' | awk -F, '$1 == "GET" { print $2 }')
  awk -v used=$(($(cpu_ticks "${pid[$1]}") - before)) -v hz="$ticks" -v n="$requests" \
    -v rps="$rps" 'BEGIN { printf "%s %.3f\n", rps, used / hz * 1e6 / n }'
}

: >"$work/results"
for round in $(seq "$rounds"); do
  echo "acl: round $round of $rounds ..." >&2
  {
    echo "rest none $(rest_get plain "${owner_key[plain]}" "")"
    echo "rest acl-own $(rest_get acl "${owner_key[acl]}" "")"
    echo "rest acl-group $(rest_get acl "${reader_key[acl]}" 2)"
    echo "binary none $(binary_get plain "${owner_key[plain]}" "")"
    echo "binary acl-own $(binary_get acl "${owner_key[acl]}" "")"
    echo "binary acl-group $(binary_get acl "${reader_key[acl]}" 2)"
  } >>"$work/results"
done

echo
echo "ACL admission cost: $rounds rounds, -c $clients, 1 I/O thread per node, $(nproc) cores;" \
  "1,000 ACL prefixes and 100 groups vs none"
echo
python3 - "$work/results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    proto, case, rps, cpu = line.split()
    rows.setdefault((proto, case), []).append((float(rps), float(cpu)))
print(f"{'protocol':<8} {'case':<10} {'rps':>9} {'vs none':>8} {'CPU us/req':>11} {'vs none':>8}")
for proto in ("rest", "binary"):
    base = [statistics.median(v[i] for v in rows[(proto, "none")]) for i in (0, 1)]
    for case in ("none", "acl-own", "acl-group"):
        med = [statistics.median(v[i] for v in rows[(proto, case)]) for i in (0, 1)]
        print(f"{proto:<8} {case:<10} {med[0]:>9.0f} {med[0] / base[0]:>8.3f} "
              f"{med[1]:>11.2f} {med[1] / base[1]:>8.3f}")
print("(medians over the rounds; CPU: the server's user + system time per request)")
EOF
