#!/usr/bin/env bash
# Build the test guest: Debian's cloud kernel, and an initramfs holding
# busybox-static and our static workload (tests/snapshots/guest/).
#
#   build-guest.sh OUTDIR    -> OUTDIR/vmlinuz, OUTDIR/initramfs.cpio.gz
#
# The kernel package is fetched once into the cache and reused.
set -euo pipefail
. "$(dirname "$0")/common.sh"

out=${1:?usage: build-guest.sh OUTDIR}
mkdir -p "$out" "$QIS_CACHE/guest"
gsrc=$QIS_TOP/tests/snapshots/guest

# --- kernel ---------------------------------------------------------------
deb=$(ls "$QIS_CACHE"/guest/linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
    need_tool apt-get
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
          | sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\).*/\1/p' | head -1)
    [ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64 (has 'apt-get update' run?)"
    note "fetching guest kernel $pkg"
    (cd "$QIS_CACHE/guest" && apt-get download -q "$pkg" >/dev/null 2>&1) \
        || die "apt-get download $pkg failed"
    deb=$(ls "$QIS_CACHE"/guest/linux-image-*-cloud-amd64_*.deb | head -1)
fi
if [ ! -f "$out/vmlinuz" ] || [ "$deb" -nt "$out/vmlinuz" ]; then
    tmp=$(mktemp -d)
    dpkg-deb -x "$deb" "$tmp" || die "cannot unpack $deb"
    cp "$tmp"/boot/vmlinuz-* "$out/vmlinuz"
    rm -rf "$tmp"
fi

# --- initramfs ------------------------------------------------------------
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx sh \
    || die "busybox-static is missing (/bin/busybox); run ./configure"
file /bin/busybox 2>/dev/null | grep -q dynamically && die "/bin/busybox is not static; install busybox-static"
need_tool gcc
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
gcc -static -O2 -Wall -Werror -o "$root/bin/workload" "$gsrc/workload.c" \
    || die "cannot build the static workload (is libc6-dev installed?)"
install -m 755 "$gsrc/init" "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
note "guest ready in $out"
