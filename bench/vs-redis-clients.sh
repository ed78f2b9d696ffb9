#!/usr/bin/env bash
# The Python and TypeScript clients (client/python, client/typescript) against
# the Redis clients of the same language, in the same run: pipelined SET then
# GET of N keys (100-byte values, P requests per round trip), logkv clients
# against one logkvd, Redis clients against one redis-server, on loopback.
# Prints each client's rate and the ratio logkv/Redis per language (the median
# and the lowest of the rounds' ratios), plus the median time of reading one
# 1 MiB value.
#
#   bench/vs-redis-clients.sh                 # N=100000, P=100, R=3 rounds
#   N=20000 R=1 bench/vs-redis-clients.sh     # a quick run
#
# Environment: N, P, LOGKVD (default build-release/bin/logkvd, built when
# missing), LOGKV_TS_DIR (a built TypeScript client, default: built here with
# npm into a temporary folder). Servers: logkvd --fsync=interval --threads=1;
# redis-server --appendonly yes --appendfsync everysec (the same durability).
# Both servers run while the clients take turns; the client process is the
# busy one (both languages' clients are single-threaded).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_name=vs-redis-clients
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
requests=${N:-100000}
pipeline=${P:-100}
rounds=${R:-3}
logkvd=${LOGKVD:-$root/build-release/bin/logkvd}
for tool in redis-server redis-cli ss flatc node npm /usr/bin/python3; do
  command -v "$tool" >/dev/null || die "$tool not found (tools/setup-deps.sh)"
done
/usr/bin/python3 -c 'import redis, flatbuffers, xxhash' 2>/dev/null ||
  die "python3-redis, python3-flatbuffers and python3-xxhash are needed (tools/setup-deps.sh)"
ensure_release_binaries "$logkvd"

work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-vs-redis-clients.XXXXXX")
redis_pid=""
logkvd_pid=""
cleanup() {
  stop_pid "$redis_pid"
  stop_pid "$logkvd_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/redis" "$work/logkvd"
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --protected-mode yes --save '' \
  --appendonly yes --appendfsync everysec --dir "$work/redis" --daemonize no \
  --logfile "$work/redis/redis.log" &
redis_pid=$!
wait_ready "$redis_pid" "[[ \$(redis-cli -h 127.0.0.1 -p $redis_port ping 2>/dev/null) == PONG ]]" \
  "$work/redis/redis.log"
logkvd_port=$(free_port)
"$logkvd" --listen="127.0.0.1:$logkvd_port" --http= --data-dir="$work/logkvd/data" \
  --fsync=interval --threads=1 2>"$work/logkvd/logkvd.log" &
logkvd_pid=$!
wait_ready "$logkvd_pid" "grep -q 'listening on' '$work/logkvd/logkvd.log'" "$work/logkvd/logkvd.log"

# Python: the package from the checkout, its protocol module generated here.
mkdir -p "$work/py/logkv"
flatc --python --gen-onefile -o "$work/py/flatc" "$root/protocol/logkv.fbs"
cp "$work/py/flatc/logkv_generated.py" "$work/py/logkv/"
echo "$bench_name: Python, N=$requests P=$pipeline ..." >&2
PYTHONPATH="$root/client/python:$work/py" /usr/bin/python3 "$root/bench/clients/python_bench.py" \
  --logkv "127.0.0.1:$logkvd_port" --redis "127.0.0.1:$redis_port" -n "$requests" \
  -P "$pipeline" -R "$rounds" >"$work/python.csv"

# TypeScript: a build of the package (npm install into a temporary copy).
ts_dir=${LOGKV_TS_DIR:+$(realpath "$LOGKV_TS_DIR")}
if [[ -z $ts_dir ]]; then
  ts_dir=$work/ts
  bash "$root/tests/clients/typescript_build.sh" "$root/client/typescript" "$ts_dir" \
    "$root/protocol/logkv.fbs" >&2 || die "could not build the TypeScript client"
fi
echo "$bench_name: TypeScript, N=$requests P=$pipeline ..." >&2
node "$root/bench/clients/typescript_bench.mjs" --ts-dir "$ts_dir" \
  --logkv "127.0.0.1:$logkvd_port" --redis "127.0.0.1:$redis_port" -n "$requests" \
  -P "$pipeline" -R "$rounds" >"$work/typescript.csv"

echo "N=$requests keys, P=$pipeline per round trip, 100-byte values, medians of $rounds rounds, $(nproc) cores"
printf '%-45s %-4s %10s\n' "client" "op" "value"
for file in "$work/python.csv" "$work/typescript.csv"; do
  tail -n +2 "$file" | awk -F, '{ printf "%-45s %-4s %10s\n", $1, $2, $3 }'
done
