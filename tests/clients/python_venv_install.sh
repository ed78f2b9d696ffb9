#!/usr/bin/env bash
# Installs client/python into two virtual environments offline, the ways its
# README gives, and checks that logkv (with its generated protocol module)
# imports and places a key in each:
#   1. python3 -m venv --system-site-packages: Debian's packages are seen;
#   2. a plain venv plus tools/link-debian-deps.sh.
#   python_venv_install.sh SOURCE_DIR WORK_DIR
set -euo pipefail
source_dir=$1
work=$2
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
# pip builds in a copy: the source tree stays clean.
cp -r "$source_dir/client/python" "$work/package"
rm -rf "$work/package/build" "$work/package/"*.egg-info
export LOGKV_SCHEMA="$source_dir/protocol/logkv.fbs"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
  (cd "$work" && "$1/bin/python" -c '
import logkv, logkv.logkv_generated
from logkv.placement import key_hash
assert key_hash(b"abc") == 8696274497037089104
print("ok", logkv.__file__)')
}

/usr/bin/python3 -m venv --system-site-packages "$work/system"
"$work/system/bin/pip" install --no-build-isolation -q "$work/package"
check "$work/system"

/usr/bin/python3 -m venv "$work/plain"
bash "$source_dir/client/python/tools/link-debian-deps.sh" "$work/plain"
"$work/plain/bin/pip" install --no-build-isolation -q "$work/package"
check "$work/plain"
