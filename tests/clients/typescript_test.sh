#!/usr/bin/env bash
# Runs one compiled test file of the TypeScript client (node --test), or
# skips (77) when typescript_build.sh could not build it.
#   typescript_test.sh BUILD_DIR TEST_FILE
set -euo pipefail
if [[ ! -f "$1/.built" ]]; then
  echo "SKIP: the TypeScript client was not built (see typescript_client_build)"
  exit 77
fi
cd "$1"
exec node --test "$2"
