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

# QEMU source paths: files there enter the tree through patches/ only (our
# harness lives in tests/snapshots/, which QEMU does not have).
QEMU_SRC_DIRS="accel audio block chardev crypto docs hw include io migration monitor
    net qapi qom scripts system target tests/qtest tests/qemu-iotests tests/unit util"

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

# Configure (once, or when the arguments change) and build QEMU in TREE/build:
#   qemu_build TREE PKGVERSION [EXTRA_CONFIGURE_ARGS...]
# Builds qemu-system-x86_64 and the tools the tests use, and links Debian's
# firmware where QEMU run from its build dir looks for it.
qemu_build() {
    local tree=$1 pkgversion=$2 cc=gcc bdir link d
    shift 2
    command -v ccache >/dev/null && cc="ccache gcc"
    local args=(--target-list=x86_64-softmmu --python=/usr/bin/python3 --cc="$cc"
          --disable-download --disable-install-blobs --enable-fdt=system
          --disable-docs --disable-rust --disable-user --enable-tools
          --disable-gtk --disable-sdl --disable-vnc --disable-opengl
          --enable-slirp --firmwarepath="$FIRMWARE_PATH"
          --with-pkgversion="$pkgversion" "$@")
    bdir=$tree/build
    if [ ! -f "$bdir/build.ninja" ] || [ "$(cat "$bdir/qis-configure-args" 2>/dev/null)" != "${args[*]}" ]; then
        note "configuring QEMU in $bdir"
        rm -rf "$bdir"
        mkdir -p "$bdir"
        if ! (cd "$bdir" && ../configure "${args[@]}" > configure.log 2>&1); then
            tail -30 "$bdir/configure.log" >&2
            die "QEMU's configure failed; see $bdir/configure.log"
        fi
        echo "${args[*]}" > "$bdir/qis-configure-args"
    fi

    note "building in $bdir"
    # Let ccache share objects between trees in different directories (fresh
    # clones, the stock tree): hash paths relative to the tree, not the cwd.
    CCACHE_BASEDIR=$tree CCACHE_NOHASHDIR=1 \
        ninja -C "$bdir" qemu-system-x86_64 qemu-img qemu-io qemu-nbd \
        storage-daemon/qemu-storage-daemon || die "build failed in $bdir"

    # QEMU run from its build dir looks for firmware relative to
    # build/qemu-bundle; point those paths at Debian's firmware packages.
    IFS=: read -ra fwdirs <<< "$FIRMWARE_PATH"
    for d in "${fwdirs[@]}"; do
        link=$bdir/qemu-bundle$d
        if [ ! -e "$link" ]; then
            mkdir -p "$(dirname "$link")"
            ln -sfn "$d" "$link"
        fi
    done
}
