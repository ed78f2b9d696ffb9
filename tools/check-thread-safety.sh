#!/usr/bin/env bash
# Checks the Abseil thread-safety annotations (ABSL_GUARDED_BY,
# ABSL_EXCLUSIVE_LOCKS_REQUIRED, ...) of logkv's own code with clang's
# -Wthread-safety analysis. g++ ignores these annotations, so without this
# check they are comments that may be wrong.
#   tools/check-thread-safety.sh [build-dir]
# build-dir (default build/) must be configured (tools/build.sh does that);
# its compile_commands.json gives every translation unit of our own code with
# its include paths and defines. Each one is compiled with -fsyntax-only (no
# code generation) LOGKV_JOBS at a time (default 2). Any finding is an error;
# clang's diagnostics are printed and the script exits non-zero.
# -Wthread-safety-beta adds the lock-order checks of ABSL_ACQUIRED_BEFORE and
# ABSL_ACQUIRED_AFTER. A canary with a deliberate violation of each kind is
# compiled first and must be refused, so that a change of options cannot
# quietly turn the check off.
# Environment: LOGKV_CLANG names the compiler (default clang++).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=$(cd "${1:-"$root/build"}" && pwd)
jobs=${LOGKV_JOBS:-2}
clang=${LOGKV_CLANG:-clang++}

if ! command -v "$clang" >/dev/null 2>&1; then
  echo "check-thread-safety: $clang not found (tools/setup-deps.sh installs clang)" >&2
  exit 2
fi
if [ ! -f "$build_dir/compile_commands.json" ]; then
  echo "check-thread-safety: no $build_dir/compile_commands.json; configure first (tools/build.sh)" >&2
  exit 2
fi
# Sources include the flatc-generated protocol header; make sure it exists
# (nothing to do after a build).
cmake --build "$build_dir" --target logkv_protocol_schema >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/canary.cc" <<'CANARY'
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
class Canary {
 public:
  int Unguarded() { return value_; }
  void OutOfOrder() {
    absl::MutexLock second(&second_mu_);
    absl::MutexLock first(&first_mu_);
  }
 private:
  absl::Mutex first_mu_ ABSL_ACQUIRED_BEFORE(second_mu_);
  absl::Mutex second_mu_;
  int value_ ABSL_GUARDED_BY(first_mu_) = 0;
};
CANARY

# One NUL-terminated shell command per translation unit, the canary's first:
# the recorded g++ command with its compiler, output, code-generation and
# warning options replaced. Only our own C++ sources: not the vendored llhttp
# C files, not files the build generates.
python3 - "$root" "$build_dir" "$clang" "$work/canary.cc" >"$work/commands" <<'PYTHON'
import json, os, shlex, sys

root, build_dir, clang, canary = sys.argv[1:5]
# Options that mean nothing to a syntax-only clang run, or that clang does
# not know (g++-only); those in `takes` are followed by their value.
takes = {"-o", "-MF", "-MT", "-MQ"}
dropped_prefixes = ("-W", "-O", "-g", "-M", "-flto", "-fsanitize", "-fno-sanitize",
                    "-fprofile", "-fcoverage", "-fanalyzer", "-fconcepts-diagnostics-depth",
                    "-fno-fat-lto-objects", "-fmax-errors", "-fno-semantic-interposition")
dropped = {"-c", "-pipe", "-fPIC", "-fpic", "-fPIE", "-fpie"}
checks = ["-fsyntax-only", "-Qunused-arguments", "-Wno-everything",
          "-Wthread-safety", "-Wthread-safety-beta", "-Werror=thread-safety"]

with open(os.path.join(build_dir, "compile_commands.json")) as f:
    entries = json.load(f)
commands = []
seen = set()
for entry in entries:
    source = os.path.normpath(os.path.join(entry["directory"], entry["file"]))
    if (not source.startswith(root + os.sep) or source.startswith(build_dir + os.sep)
            or not source.endswith(".cc") or source in seen):
        continue
    seen.add(source)
    argv = entry["arguments"] if "arguments" in entry else shlex.split(entry["command"])
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in takes:
            skip = True
        elif arg in dropped or arg.startswith(dropped_prefixes):
            pass
        else:
            args.append(arg)
    commands.append((entry["directory"], args, source))
if commands:
    # The canary, with the options of the first translation unit.
    directory, args, source = commands[0]
    commands.insert(0, (directory, [canary if arg == source else arg for arg in args], canary))
for directory, args, source in commands:
    sys.stdout.write("cd %s && exec %s\0" % (shlex.quote(directory),
                                            shlex.join([clang] + args + checks)))
PYTHON

count=$(($(tr -cd '\0' <"$work/commands" | wc -c) - 1))
if [ "$count" -le 0 ]; then
  echo "check-thread-safety: no translation units in $build_dir/compile_commands.json" >&2
  exit 2
fi

canary=$(head -z -n 1 "$work/commands" | tr -d '\0')
if canary_out=$(bash -c "$canary" 2>&1) ||
    ! grep -q "requires holding mutex 'first_mu_'" <<<"$canary_out" ||
    ! grep -q "mutex 'first_mu_' must be acquired before 'second_mu_'" <<<"$canary_out"; then
  printf '%s\n' "$canary_out" >&2
  echo "check-thread-safety: clang did not refuse the canary's violations: the check is broken" >&2
  exit 2
fi

# Each compiler's output is printed whole, so parallel runs do not interleave.
# A failing run exits 1, which makes xargs finish the others and exit 123.
if ! tail -z -n +2 "$work/commands" | xargs -0 -n 1 -P "$jobs" bash -c \
    'if ! out=$(bash -c "$1" 2>&1); then printf "%s\n" "$out" >&2; exit 1; fi
     if [ -n "$out" ]; then printf "%s\n" "$out" >&2; fi' _; then
  echo "check-thread-safety: FAILED: clang -Wthread-safety found the problems above" >&2
  exit 1
fi
echo "check-thread-safety: $count translation units pass clang -Wthread-safety"
