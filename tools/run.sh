#!/usr/bin/env bash
# One command from a fresh Debian machine: installs dependencies, builds a
# Release tree (build-release/), and runs logkvd in the foreground on a local
# data directory. Extra arguments go to logkvd, e.g.
#   tools/run.sh --fsync=always --threads=2
# Environment: LOGKV_DATA_DIR (default ./data), LOGKV_LISTEN (default
# 127.0.0.1:7070), and any other LOGKV_<FLAG>. Stop it with Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup-deps.sh"
LOGKV_BUILD_TYPE=Release LOGKV_WERROR=OFF "$root/tools/build.sh" "$root/build-release" -DLOGKV_BUILD_TESTS=OFF -DLOGKV_FAULT_INJECTION=OFF
data_dir=${LOGKV_DATA_DIR:-"$root/data"}
echo "run.sh: logkvd on ${LOGKV_LISTEN:-127.0.0.1:7070}, data in $data_dir" >&2
echo "run.sh: try  $root/build-release/bin/logkv put greeting hello" >&2
exec "$root/build-release/bin/logkvd" --data_dir="$data_dir" "$@"
