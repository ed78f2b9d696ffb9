#!/usr/bin/env bash
# One command from a fresh Debian machine: installs dependencies, builds, and
# runs every test.
#   tools/test.sh             the whole suite (build/, g++), plus a small run of the benchmark
#   tools/test.sh --sanitize  every suite under AddressSanitizer and UBSan (build-sanitize/), but
#                             the benchmark smoke run, the install check (a consumer built
#                             without the sanitizers cannot link the sanitized library) and the
#                             Python package's install (no C++ runs in it); built
#                             with clang, which checks the thread-safety annotations as it
#                             compiles (LOGKV_THREAD_SAFETY)
#   tools/test.sh --fuzz      bounded libFuzzer runs of the frame decoder and the HTTP parser
#                             (build-fuzz/, clang)
# The suites' builds keep line tables only as debug information (-g1: file,
# line and function in backtraces and the sanitizers' reports), which takes a
# fifth off their compile time; precompiled headers (LOGKV_PCH, on by default)
# take more. A build for a debugger: cmake -B build -DLOGKV_LINE_TABLES_ONLY=OFF.
# Environment: LOGKV_TEST_SEED fixes the seed of the randomised tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup-deps.sh"

mode=${1:-all}
case "$mode" in
  all)
    # The web console is built (npm) and tested in a browser here, always.
    "$root/tools/build.sh" "$root/build" -DLOGKV_WEB=ON -DLOGKV_LINE_TABLES_ONLY=ON
    cd "$root/build"
    ctest --output-on-failure -j 2 --timeout 900
    ;;
  --sanitize)
    # CMake reads the compiler on a tree's first configure only, and a
    # compiler changed later makes it start again from an empty cache that
    # keeps none of the options given with the change: a tree configured with
    # another compiler (g++, before) is configured afresh. The benchmarks are
    # built, for the thread-safety check, and not run. The Python package's
    # offline install into virtual environments runs no C++ and is left to
    # the first suite.
    clang_c=$(command -v clang) clang_cxx=$(command -v clang++)
    cache="$root/build-sanitize/CMakeCache.txt"
    if [ -f "$cache" ] && ! grep -qx "CMAKE_CXX_COMPILER:[A-Z]*=$clang_cxx" "$cache"; then
      rm -rf "$cache" "$root/build-sanitize/CMakeFiles"
    fi
    CC="$clang_c" CXX="$clang_cxx" LOGKV_BUILD_TYPE=Debug "$root/tools/build.sh" \
      "$root/build-sanitize" -DCMAKE_C_COMPILER="$clang_c" -DCMAKE_CXX_COMPILER="$clang_cxx" \
      -DLOGKV_SANITIZE=ON -DLOGKV_THREAD_SAFETY=ON -DLOGKV_BUILD_BENCH=ON -DLOGKV_LINE_TABLES_ONLY=ON
    for setting in CMAKE_BUILD_TYPE:STRING=Debug LOGKV_SANITIZE:BOOL=ON \
        LOGKV_THREAD_SAFETY:BOOL=ON LOGKV_WERROR:BOOL=ON; do
      if ! grep -qx "$setting" "$cache"; then
        echo "test.sh: build-sanitize is not configured with $setting" >&2
        exit 1
      fi
    done
    cd "$root/build-sanitize"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --output-on-failure -j 2 --timeout 1200 -LE bench \
      -E 'client_install_check|package_check|python_client_venv_install'
    ;;
  --fuzz)
    # libFuzzer smoke run of the decoders of untrusted bytes, bounded in
    # inputs and time. LOGKV_FUZZ_RUNS raises the count for a longer session.
    CC=clang CXX=clang++ LOGKV_BUILD_TYPE=RelWithDebInfo "$root/tools/build.sh" "$root/build-fuzz" \
      -DLOGKV_FUZZ=ON -DLOGKV_BUILD_TESTS=OFF -DLOGKV_BUILD_BENCH=OFF
    corpus=$(mktemp -d)
    trap 'rm -rf "$corpus"' EXIT
    mkdir -p "$corpus/frame" "$corpus/http"
    "$root/build-fuzz/bin/frame_fuzzer" -runs="${LOGKV_FUZZ_RUNS:-200000}" -max_total_time=120 \
      -max_len=4096 "$corpus/frame"
    # New inputs go to the first directory; the committed seeds (a GET, a PUT
    # with a body, a chunked POST, a pipeline) are only read.
    "$root/build-fuzz/bin/http_fuzzer" -runs="${LOGKV_FUZZ_RUNS:-200000}" -max_total_time=120 \
      -max_len=4096 -dict="$root/tests/fuzz/http.dict" "$corpus/http" "$root/tests/fuzz/http_corpus"
    echo "2 passed, 0 failed: frame_fuzzer http_fuzzer"
    ;;
  *)
    echo "usage: tools/test.sh [--sanitize|--fuzz]" >&2
    exit 2
    ;;
esac
