#!/usr/bin/env bash
# Installs everything logkv needs to build, test and benchmark, from Debian's
# packages only. Idempotent: when every package is already installed it does
# nothing (no apt-get update, no network). Uses sudo only when not root.
set -euo pipefail

packages=(
  # toolchain and scripts
  g++ make cmake pkg-config python3 curl jq git ca-certificates procps iproute2
  # libraries named in docs/design (DESIGN.md)
  libuv1-dev libflatbuffers-dev flatbuffers-compiler libxxhash-dev libmimalloc-dev
  libabsl-dev node-llhttp libsodium-dev nlohmann-json3-dev libzstd-dev
  # TLS: listeners, peer links and clients (OpenSSL 3)
  libssl-dev
  # backup archives (tar + zstd)
  libarchive-dev
  # Unicode normalisation of account names (NFKC_Casefold)
  libicu-dev
  # Raft consensus for the control plane (server/control/)
  libraft-dev
  # logkvd's config file (TOML) and systemd notifications (sd_notify)
  libtomlplusplus-dev libsystemd-dev
  # the Debian package: man pages from --help, library dependencies (dpkg-shlibdeps)
  help2man dpkg-dev
  # tests and benchmarks; clang and its runtime for the sanitizer build, which
  # checks the thread-safety annotations (LOGKV_THREAD_SAFETY), and the libFuzzer targets
  libgtest-dev libgmock-dev libbenchmark-dev clang libclang-rt-14-dev python3-flatbuffers
  # the linker (lld links the tree's large binaries several times faster than GNU ld)
  lld
  # side-by-side comparisons in bench/
  librocksdb-dev libleveldb-dev redis-server redis-tools wrk nginx-light
  # logkv-bench --resp reads Redis's replies with hiredis's reader
  libhiredis-dev
  # HTTP client for the REST tests
  libcurl4-openssl-dev
  # the Python and TypeScript clients (client/python, client/typescript), their
  # tests and benchmarks: placement hash, Redis client to compare with, Node.js
  python3-xxhash python3-redis python3-venv python3-wheel nodejs openssl
  # the web console's browser tests (tests/web/): headless Chromium and a font
  chromium fonts-dejavu-core
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
# npm: Debian's package, unless the installed Node.js brings its own (a
# Node.js build that bundles npm conflicts with Debian's npm package).
if ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "setup-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
  as_root=(sudo)
fi

echo "setup-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
