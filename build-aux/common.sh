# Shared settings for the build-aux scripts.  Sourced, not run.

QIS_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QIS_CACHE=${QIS_CACHE:-/var/cache/qemu-instant-snapshots}

# The pinned base: Debian's source package of upstream QEMU 10.2.2.
SRC_PKG=qemu
SRC_VERSION=1:10.2.2+ds-1
SRC_DSC=qemu_10.2.2+ds-1.dsc
SRC_FILES="qemu_10.2.2+ds.orig.tar.xz qemu_10.2.2+ds-1.debian.tar.xz $SRC_DSC"
declare -A SRC_SHA256=(
    [qemu_10.2.2+ds.orig.tar.xz]=be05230fe47a6937cd29f28f562932c8125f9c93c2a82c625198f7a4aa601dfb
    [qemu_10.2.2+ds-1.debian.tar.xz]=ddf75aceab4f8f77374f3cb34fc97b41514895aeb293ce8b2ddd5e072bb0f5c0
    [qemu_10.2.2+ds-1.dsc]=f1684b3aa5ec500c3389d346c6501dee45041ea91656c6556d4da9023b7987dd
)

# Top-level directories of this repo that are overlaid onto the QEMU tree.
OVERLAY_DIRS="migration block qapi include tests docs hw system util monitor"

# Debian's firmware (the +ds tarball ships none).
FIRMWARE_PATH=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu

die() { echo "${0##*/}: error: $*" >&2; exit 1; }
note() { echo "${0##*/}: $*"; }
need_tool() {
    command -v "$1" >/dev/null || die "missing tool '$1' (run ./configure, which installs the Debian packages)"
}

# The patches named in patches/series, in order.
series_patches() {
    grep -v -e '^#' -e '^[[:space:]]*$' "$QIS_TOP/patches/series" || true
}

# A checksum over patches/series and every patch it names.
series_sum() {
    (cat "$QIS_TOP/patches/series"
     for p in $(series_patches); do cat "$QIS_TOP/patches/$p"; done) | sha256sum | cut -d' ' -f1
}
