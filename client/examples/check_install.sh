#!/bin/sh
# Checks that an installed logkv client library serves another project, both
# through find_package(logkv) (CMake) and through pkg-config: installs the
# client component of a build tree into a temporary prefix, then builds
# examples/example.cc against that copy only. With a node address as second
# argument, also runs both builds of the example against it.
#
#   client/examples/check_install.sh [BUILD_DIR] [HOST:PORT]
#
# BUILD_DIR defaults to build/ at the top of the source tree. Exits non-zero
# on the first failure.
set -eu

examples=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$examples/../.." && pwd)
build=${1:-$root/build}
node=${2:-}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/logkv-check-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

cmake --build "$build" --target logkv_client
cmake --install "$build" --prefix "$tmp/prefix" --component client >/dev/null

# 1. A CMake project that finds the installed package.
mkdir "$tmp/consumer"
cat >"$tmp/consumer/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.16)
project(logkv_consumer LANGUAGES CXX)
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
find_package(logkv REQUIRED)
add_executable(example "$examples/example.cc")
target_link_libraries(example PRIVATE logkv::client)
CMAKE
cmake -S "$tmp/consumer" -B "$tmp/consumer/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON >/dev/null
cmake --build "$tmp/consumer/build" >/dev/null
echo "check_install: find_package(logkv) build OK"

# 2. A plain compiler command with pkg-config.
pc_file=$(find "$tmp/prefix" -name logkv.pc | head -n 1)
if [ -z "$pc_file" ]; then
  echo "check_install: logkv.pc was not installed" >&2
  exit 1
fi
PKG_CONFIG_PATH=$(dirname "$pc_file")
export PKG_CONFIG_PATH
# shellcheck disable=SC2046 # pkg-config prints several words on purpose.
c++ -std=c++20 "$examples/example.cc" -o "$tmp/example_pkg_config" \
  $(pkg-config --cflags --libs logkv)
echo "check_install: pkg-config build OK"

if [ -n "$node" ]; then
  "$tmp/consumer/build/example" "$node"
  "$tmp/example_pkg_config" "$node"
fi
echo "check_install: OK"
