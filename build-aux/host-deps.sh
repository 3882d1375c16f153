#!/usr/bin/env bash
# Install what building and testing QEMU Instant Snapshots needs on a
# Debian 12 host.  Idempotent: it only touches apt when something is missing.
set -euo pipefail

die() { echo "host-deps: error: $*" >&2; exit 1; }

[ -r /etc/debian_version ] || die "this is not a Debian host; install the packages listed in $0 by hand"

# Packages from bookworm.
PKGS="build-essential pkg-config git rsync xz-utils bzip2 cpio
 libglib2.0-dev libpixman-1-dev zlib1g-dev ninja-build libslirp-dev libfdt-dev
 libaio-dev liburing-dev libzstd-dev
 python3-venv python3-pytest python3-matplotlib python3-yaml
 dpkg-dev ccache busybox-static seabios ipxe-qemu qemu-system-data
 socat perl python3-fusepy gdb"
# Packages that must come from bookworm-backports (meson >= 1.5).
BPO_PKGS="meson python3-pycotap"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
need_meson=1
if command -v meson >/dev/null && dpkg --compare-versions "$(meson --version)" ge 1.5; then
    need_meson=0
fi
dpkg-query -W -f='${Status}' python3-pycotap 2>/dev/null | grep -q 'ok installed' || need_meson=1

src_list=/etc/apt/sources.list.d/qemu-instant-snapshots.list
want_list="deb http://deb.debian.org/debian bookworm-backports main
deb-src http://deb.debian.org/debian sid main"
added=0
if [ "$(cat "$src_list" 2>/dev/null)" != "$want_list" ]; then
    [ "$(id -u)" = 0 ] || die "need root to add $src_list"
    echo "$want_list" > "$src_list"
    # Never upgrade the host to sid: only its sources are wanted.
    cat > /etc/apt/preferences.d/qemu-instant-snapshots <<'PREF'
Package: *
Pin: release n=sid
Pin-Priority: -10
PREF
    added=1
fi

if [ -z "$missing" ] && [ $need_meson = 0 ] && [ $added = 0 ] \
   && [ -n "$(ls /var/lib/apt/lists/*sid*Sources* 2>/dev/null)" ]; then
    exit 0
fi
[ "$(id -u)" = 0 ] || die "missing packages:$missing; run as root or install them"
export DEBIAN_FRONTEND=noninteractive
echo "host-deps: apt-get update"
apt-get update -q >/dev/null || die "apt-get update failed"
if [ -n "$missing" ]; then
    echo "host-deps: installing$missing"
    apt-get install -y -q --no-install-recommends $missing >/dev/null \
        || die "apt-get install failed for:$missing"
fi
if [ $need_meson = 1 ]; then
    echo "host-deps: installing $BPO_PKGS from bookworm-backports"
    apt-get install -y -q --no-install-recommends -t bookworm-backports $BPO_PKGS >/dev/null \
        || die "apt-get install -t bookworm-backports failed for: $BPO_PKGS"
fi
