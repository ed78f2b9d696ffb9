#!/usr/bin/env bash
# Checks the Debian package and the install of a build tree:
#  1. cpack builds the .deb (into a temporary folder);
#  2. dpkg-deb -c lists the programs, the unit, the config file and the man
#     pages, and the config file is a conffile;
#  3. dpkg -x unpacks it into a throwaway root, whose logkvd --version runs,
#     and whose unit's ExecStart (paths moved into that root) starts logkvd
#     with the packaged config file, without systemd: the environment moves
#     its data directory and ports (LOGKV_* overrides the file), it logs
#     "listening on" within a bounded wait and stops on SIGTERM; and
#     systemd-analyze verify (where installed) accepts the unit;
#  4. cmake --install --prefix puts logkvd, logkv, logkv-bench, the unit
#     (naming the installed logkvd) and the config file under the prefix.
#   tests/tools/package_check.sh BUILD_DIR
set -euo pipefail

build=$(cd "$1" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/logkv-package.XXXXXX")
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "package_check: $*" >&2
  exit 1
}

# 1. The package.
cpack --config "$build/CPackConfig.cmake" -B "$tmp/out" >"$tmp/cpack.log" 2>&1 ||
  { cat "$tmp/cpack.log" >&2; fail "cpack failed"; }
deb=$(find "$tmp/out" -maxdepth 1 -name 'logkv_*.deb' | head -n 1)
[ -n "$deb" ] || fail "no .deb in $tmp/out"
echo "package_check: built $(basename "$deb")"

# 2. Its files.
dpkg-deb -c "$deb" >"$tmp/contents"
for file in ./usr/bin/logkvd ./usr/bin/logkv ./usr/bin/logkv-bench \
  ./usr/lib/systemd/system/logkvd.service ./etc/logkv/logkvd.toml \
  ./usr/share/man/man8/logkvd.8.gz ./usr/share/man/man1/logkv.1.gz \
  ./usr/share/man/man1/logkv-bench.1.gz; do
  grep -q " $file\$" "$tmp/contents" || { cat "$tmp/contents" >&2; fail "$file is not in the package"; }
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/logkv/logkvd.toml || fail "the config file is not a conffile"
dpkg-deb -f "$deb" Depends | grep -q libtomlplusplus || fail "Depends lacks toml++"
echo "package_check: dpkg-deb -c lists every file"

# 3. Unpacked into a throwaway root.
root=$tmp/root
dpkg -x "$deb" "$root"
"$root/usr/bin/logkvd" --version | grep -q '^logkvd ' || fail "the packaged logkvd --version failed"
"$root/usr/bin/logkv" --version | grep -q '^logkv ' || fail "the packaged logkv --version failed"
"$root/usr/bin/logkv-bench" --version | grep -q '^logkv-bench ' || fail "logkv-bench --version failed"
unit=$root/usr/lib/systemd/system/logkvd.service
grep -qx 'Type=notify' "$unit" || fail "the unit is not Type=notify"
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
[ "$exec_start" = "/usr/bin/logkvd --config=/etc/logkv/logkvd.toml" ] || fail "ExecStart is '$exec_start'"
# systemd's own check of the unit, where systemd-analyze is installed (it
# needs no running systemd): the unit with its paths moved into the root.
if command -v systemd-analyze >/dev/null 2>&1; then
  sed "s#/usr/bin/#$root/usr/bin/#; s#=/etc/#=$root/etc/#" "$unit" >"$tmp/logkvd.service"
  systemd-analyze verify --man=no "$tmp/logkvd.service" || fail "systemd-analyze verify failed"
  echo "package_check: systemd-analyze verify accepts the unit"
fi
read -r -a command <<<"${exec_start//\/usr\/bin\//$root/usr/bin/}"
command=("${command[@]//=\/etc\//=$root/etc/}")
env -u NOTIFY_SOCKET LOGKV_DATA_DIR="$tmp/data" LOGKV_LISTEN=127.0.0.1:0 LOGKV_HTTP=127.0.0.1:0 \
  "${command[@]}" 2>"$tmp/logkvd.log" &
pid=$!
for _ in $(seq 1 200); do
  grep -q 'listening on .*HTTP' "$tmp/logkvd.log" && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
grep -q 'listening on .*HTTP' "$tmp/logkvd.log" || { cat "$tmp/logkvd.log" >&2; fail "the unit's logkvd did not start"; }
grep -q "config file $root/etc/logkv/logkvd.toml" "$tmp/logkvd.log" || fail "the config file was not read"
kill -TERM "$pid"
status=0
for _ in $(seq 1 200); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || { cat "$tmp/logkvd.log" >&2; fail "logkvd exited with $status on SIGTERM"; }
echo "package_check: the unit's command ran logkvd from the unpacked package and stopped it"

# 4. cmake --install of the programs, unit and config file.
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" --component runtime >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log" >&2; fail "cmake --install failed"; }
for file in bin/logkvd bin/logkv bin/logkv-bench lib/systemd/system/logkvd.service \
  etc/logkv/logkvd.toml share/man/man1/logkv.1.gz; do
  [ -e "$prefix/$file" ] || fail "cmake --install did not install $file"
done
grep -qx "ExecStart=$prefix/bin/logkvd --config=$prefix/etc/logkv/logkvd.toml" \
  "$prefix/lib/systemd/system/logkvd.service" || fail "the installed unit names other paths"
echo "package_check: cmake --install installs the programs, unit and config file"
echo "1 passed, 0 failed"
