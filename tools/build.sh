#!/usr/bin/env bash
# Configures and builds logkv into a build directory.
#   tools/build.sh [build-dir] [extra cmake arguments...]
# Defaults: build/, RelWithDebInfo, -j2 (CI and dev machines have 2 cores),
# warnings as errors (LOGKV_WERROR=OFF in the environment turns that off).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${1:-"$root/build"}
shift || true
jobs=${LOGKV_JOBS:-2}
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE="${LOGKV_BUILD_TYPE:-RelWithDebInfo}" \
  -DLOGKV_WERROR="${LOGKV_WERROR:-ON}" "$@" >/dev/null
cmake --build "$build_dir" -j "$jobs"
