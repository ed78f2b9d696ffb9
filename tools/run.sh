#!/usr/bin/env bash
# One command from a fresh Debian machine: installs dependencies, builds, and
# runs logkv. Until the server (logkvd) lands, this runs the engine benchmark
# against RocksDB and LevelDB; pass arguments through to it, e.g.
#   tools/run.sh --keys=200000
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup-deps.sh"
LOGKV_BUILD_TYPE=Release "$root/tools/build.sh" "$root/build-release" -DLOGKV_BUILD_TESTS=OFF
exec "$root/build-release/bin/engine_bench" "$@"
