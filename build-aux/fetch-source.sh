#!/usr/bin/env bash
# Fetch the pinned QEMU source package into the cache and verify it.
# Later runs use the cache and never touch the network.
set -euo pipefail
. "$(dirname "$0")/common.sh"

verify() {
    local f=$1 sum
    sum=$(sha256sum "$QIS_CACHE/$f" | cut -d' ' -f1)
    if [ "$sum" != "${SRC_SHA256[$f]}" ]; then
        echo "checksum mismatch for $QIS_CACHE/$f: expected ${SRC_SHA256[$f]}, got $sum" >&2
        return 1
    fi
}

mkdir -p "$QIS_CACHE" || die "cannot create cache directory $QIS_CACHE"
have_all=yes
for f in $SRC_FILES; do
    [ -f "$QIS_CACHE/$f" ] || have_all=no
done
if [ $have_all = no ]; then
    need_tool apt-get
    note "fetching source package $SRC_PKG=$SRC_VERSION into $QIS_CACHE"
    tmp=$(mktemp -d "$QIS_CACHE/fetch.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    if ! (cd "$tmp" && apt-get source -q --download-only "$SRC_PKG=$SRC_VERSION" >fetch.log 2>&1); then
        cat "$tmp/fetch.log" >&2
        die "source package $SRC_PKG=$SRC_VERSION could not be fetched; is a 'deb-src ... sid main' entry configured (./configure adds one) and has 'apt-get update' run?"
    fi
    for f in $SRC_FILES; do
        [ -f "$tmp/$f" ] || die "source package fetched, but $f is missing from it"
        mv "$tmp/$f" "$QIS_CACHE/$f"
    done
fi
for f in $SRC_FILES; do
    if ! verify "$f"; then
        mv "$QIS_CACHE/$f" "$QIS_CACHE/$f.bad"
        die "checksum mismatch for $f (moved aside to $f.bad; the next make fetches it again)"
    fi
done
