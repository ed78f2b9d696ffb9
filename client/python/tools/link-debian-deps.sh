#!/usr/bin/env bash
# Makes Debian's python3-flatbuffers, python3-xxhash and python3-wheel usable
# in a virtual environment that does not see the system's packages (made by
# a Python other than /usr/bin/python3, or without --system-site-packages),
# offline: it links them into the venv's site-packages, metadata included,
# so `pip install --no-index --no-build-isolation client/python` then finds
# every dependency. xxhash is a C extension: the venv's Python must be the
# same minor version as Debian's (3.11 on bookworm).
#
#   client/python/tools/link-debian-deps.sh VENV
set -euo pipefail
venv=${1:?usage: link-debian-deps.sh VENV}
debian=/usr/lib/python3/dist-packages
python="$venv/bin/python"
[[ -x "$python" ]] || { echo "no Python at $python" >&2; exit 1; }
want=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ "$want" != "$have" ]]; then
  echo "the venv runs Python $have; Debian's xxhash module is built for $want" >&2
  exit 1
fi
site=$("$python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
for name in flatbuffers xxhash wheel; do
  found=0
  for path in "$debian/$name" "$debian"/"$name"-*.egg-info "$debian"/"$name"-*.dist-info; do
    [[ -e "$path" ]] || continue
    ln -sfn "$path" "$site/$(basename "$path")"
    found=1
  done
  if [[ $found -eq 0 ]]; then
    echo "$debian/$name is missing: apt-get install python3-$name" >&2
    exit 1
  fi
done
echo "linked flatbuffers, xxhash and wheel from $debian into $site"
