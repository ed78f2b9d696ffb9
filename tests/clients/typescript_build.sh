#!/usr/bin/env bash
# Builds the TypeScript client (client/typescript) in the build tree for its
# tests: copies the package, installs its npm dependencies there (the
# source tree's node_modules is never used), generates the protocol classes
# with flatc and compiles with tsc. Without the npm registry and no earlier
# install, it exits 77 and ctest reports the TypeScript tests as skipped.
#
#   typescript_build.sh SOURCE_DIR BUILD_DIR SCHEMA
set -euo pipefail
source_dir=$(realpath "$1")
build_dir=$(realpath -m "$2")
schema=$(realpath "$3")

mkdir -p "$build_dir"
rm -f "$build_dir/.built"
rm -rf "$build_dir/src" "$build_dir/test" "$build_dir/scripts" "$build_dir/examples" \
  "$build_dir/dist"
cp -r "$source_dir/src" "$source_dir/test" "$source_dir/scripts" "$source_dir/examples" \
  "$source_dir/package.json" "$source_dir/tsconfig.json" "$build_dir/"
[[ -f "$source_dir/package-lock.json" ]] && cp "$source_dir/package-lock.json" "$build_dir/"
rm -rf "$build_dir/src/generated"
cd "$build_dir"

command -v node >/dev/null || { echo "SKIP: node is not installed (tools/setup-deps.sh)"; exit 77; }
command -v npm >/dev/null || { echo "SKIP: npm is not installed (tools/setup-deps.sh)"; exit 77; }
# --ignore-scripts: the package's own "prepare" (generate + tsc) runs below.
if ! npm install --no-audit --no-fund --ignore-scripts --fetch-timeout=30000 \
    --fetch-retries=1 >npm-install.log 2>&1; then
  if [[ -d node_modules/flatbuffers && -d node_modules/typescript && \
        -d node_modules/@node-rs/xxhash ]]; then
    echo "npm install failed; using the node_modules installed before (npm-install.log)"
  else
    cat npm-install.log
    echo "SKIP: the npm registry is unreachable and nothing was installed before"
    exit 77
  fi
fi
node scripts/generate.mjs --schema "$schema" --out src/generated
node_modules/.bin/tsc -p .
touch .built
echo "built the TypeScript client in $build_dir"
