#!/usr/bin/env python3
"""Checks that a LOGKV_THREAD_SAFETY build really checks every C++ file of ours.

The configure step proves that clang refuses a canary with these flags; this
proves that the flags reach each of our translation units and that nothing
later on its command line turns them off (-w, -Wno-everything,
-Wno-thread-safety..., -Wno-error), nor -w anywhere on it. Reads the build's
compile_commands.json.
  thread_safety_flags.py SOURCE_DIR BUILD_DIR
"""
import json
import os
import shlex
import sys

REQUIRED = ("-Wthread-safety", "-Wthread-safety-beta", "-Werror=thread-safety",
            "-Werror=thread-safety-beta")


def silences(arg):
    """Turns every warning off, wherever it stands on the line."""
    return arg in ("-w", "--no-warnings")


def disables(arg):
    """Turns the check off when it comes after the flags."""
    return (arg in ("-Wno-everything", "-Wno-error")
            or arg.startswith(("-Wno-thread-safety", "-Wno-error=thread-safety")))


def main():
    source_dir, build_dir = (os.path.realpath(d) for d in sys.argv[1:3])
    with open(os.path.join(build_dir, "compile_commands.json")) as f:
        entries = json.load(f)
    checked, problems = set(), []
    for entry in entries:
        source = os.path.realpath(os.path.join(entry["directory"], entry["file"]))
        if (not source.startswith(source_dir + os.sep) or source.startswith(build_dir + os.sep)
                or not source.endswith(".cc")):
            continue
        argv = entry["arguments"] if "arguments" in entry else shlex.split(entry["command"])
        missing = [flag for flag in REQUIRED if flag not in argv]
        if missing:
            problems.append("%s: missing %s" % (source, " ".join(missing)))
            continue
        first = min(argv.index(flag) for flag in REQUIRED)
        off = [arg for arg in argv if silences(arg)] + [arg for arg in argv[first:] if disables(arg)]
        if off:
            problems.append("%s: turned off by %s" % (source, " ".join(off)))
            continue
        checked.add(source)
    for problem in problems:
        print(problem)
    if problems or not checked:
        print("thread_safety_flags: FAILED (%d checked, %d problems)" % (len(checked),
                                                                          len(problems)))
        return 1
    print("thread_safety_flags: %d translation units compiled with %s" %
          (len(checked), " ".join(REQUIRED)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
