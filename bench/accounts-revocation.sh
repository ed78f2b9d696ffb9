#!/usr/bin/env bash
# How fast a revocation reaches the whole cluster: on a 3-node cluster with
# --auth=on, an API key is revoked on node 1 (DELETE /apikeys/{id}) and node 3
# is polled (GET /v1/kv/... with that key, every 2 ms) until it refuses it.
# Each round prints the time from sending the revocation to node 3's first
# 401, beside a reference measured in the same round: one strong PUT through
# node 3 (a quorum round trip). The summary gives the medians and their ratio.
#
#   bench/accounts-revocation.sh            # 10 rounds
#   ROUNDS=30 bench/accounts-revocation.sh
#
# Environment: ROUNDS, LOGKVD (default build/bin/logkvd), LOGKVD_ARGS (flags of
# every server, default "--threads=1"). Every server started is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=accounts-revocation
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
rounds=${ROUNDS:-10}
logkvd=${LOGKVD:-$root/build/bin/logkvd}
read -r -a logkvd_extra_args <<<"${LOGKVD_ARGS---threads=1}"

for tool in curl python3 ss shuf awk; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
[[ -x $logkvd ]] || die "no logkvd at $logkvd (build it, or set LOGKVD)"

work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-revocation-bench.XXXXXX")
declare -A pids=() ports=() https=()
cleanup() {
  local name
  for name in "${!pids[@]}"; do stop_pid "${pids[$name]}"; done
  rm -rf "$work"
}
trap cleanup EXIT

start_node() {
  local i=$1 name=n$1 seeds=()
  ports[$name]=$(free_port)
  https[$name]=$(free_port)
  [[ $i -ne 0 ]] && seeds=(--seeds="127.0.0.1:${ports[n0]}")
  mkdir -p "$work/$name"
  "$logkvd" --listen="127.0.0.1:${ports[$name]}" --http="127.0.0.1:${https[$name]}" \
    --data_dir="$work/$name" --node-id="$name" --cluster-secret=revocation-bench \
    --replicas=3 --auth=on --rate-limit=0 "${logkvd_extra_args[@]}" "${seeds[@]}" \
    2>>"$work/$name.log" &
  pids[$name]=$!
  wait_ready "${pids[$name]}" "curl -fs http://127.0.0.1:${https[$name]}/health >/dev/null" \
    "$work/$name.log"
}

json() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
url() { echo "http://127.0.0.1:${https[$1]}"; }

for i in 0 1 2; do start_node "$i"; done

curl -fs -X POST "$(url n0)/signup" -H 'Content-Type: application/json' \
  -d '{"email":"bench@example.com","username":"bench","password":"benchpass123"}' >/dev/null ||
  die "sign-up failed"
token=$(curl -fs -X POST "$(url n0)/login" -H 'Content-Type: application/json' \
  -d '{"email":"bench@example.com","password":"benchpass123"}' | json access_token)

# Milliseconds of monotonic time, from python (date has no monotonic clock).
python3 - "$rounds" "$(url n0)" "$(url n2)" "$token" <<'EOF'
import json, statistics, sys, time, urllib.request, urllib.error

rounds, node1, node3, token = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def call(method, url, headers=None, body=None):
    request = urllib.request.Request(url, method=method, headers=headers or {},
                                     data=body.encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()

bearer = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
revocations, references = [], []
for round_ in range(rounds):
    status, body = call("POST", node1 + "/apikeys", bearer,
                        json.dumps({"name": "bench %d" % round_, "scopes": ["read", "write"]}))
    assert status == 201, (status, body)
    created = json.loads(body)
    key = {"X-API-Key": created["key"]}
    deadline = time.monotonic() + 10
    while call("GET", node3 + "/v1/kv/probe", key)[0] not in (200, 404):
        assert time.monotonic() < deadline, "node 3 never accepted the new key"
        time.sleep(0.01)
    started = time.monotonic()
    status, body = call("PUT", node3 + "/v1/kv/probe", dict(key, **{"X-Consistency": "strong"}), "x")
    references.append((time.monotonic() - started) * 1000)
    assert status == 200, (status, body)
    started = time.monotonic()
    status, body = call("DELETE", node1 + "/apikeys/%d" % created["id"], bearer)
    assert status == 200, (status, body)
    while call("GET", node3 + "/v1/kv/probe", key)[0] != 401:
        assert time.monotonic() < started + 10, "node 3 never refused the revoked key"
        time.sleep(0.002)
    revocations.append((time.monotonic() - started) * 1000)
    print("round %2d: revoke on node 1 -> refused on node 3 %7.1f ms; strong PUT on node 3 %6.1f ms"
          % (round_ + 1, revocations[-1], references[-1]))
r, p = statistics.median(revocations), statistics.median(references)
print("median over %d rounds: revocation %.1f ms, strong PUT %.1f ms, ratio %.1f"
      % (rounds, r, p, r / p))
EOF
