#!/usr/bin/env bash
# Assemble a QEMU tree from the cached source package and build it.
#
#   assemble.sh ours  DIR   upstream + patches/ (this project)
#   assemble.sh stock DIR   upstream only, for the benchmarks
#
# DIR is a git repository: one commit for upstream (tag "upstream") and one
# commit per patch of patches/series.  New QEMU files (sources, docs, tests
# in upstream's frameworks) enter the tree only through the patch that adds
# them, so the commits on top of "upstream" are exactly the patch series.
# Each step is skipped when its inputs did not change, so re-running only
# rebuilds what changed.
set -euo pipefail
. "$(dirname "$0")/common.sh"

mode=${1:?usage: assemble.sh ours|stock DIR}
dest=${2:?usage: assemble.sh ours|stock DIR}
case "$mode" in ours|stock) ;; *) die "unknown mode $mode" ;; esac
mkdir -p "$(dirname "$dest")"
dest=$(cd "$(dirname "$dest")" && pwd)/$(basename "$dest")

"$QIS_TOP/build-aux/fetch-source.sh"

git_t() { git -C "$dest" "$@"; }

# --- unpack ---------------------------------------------------------------
if [ ! -d "$dest/.git" ]; then
    need_tool dpkg-source
    note "unpacking $SRC_DSC into $dest"
    rm -rf "$dest.tmp"
    # The sha256 sums above are the check; the .dsc signature cannot be
    # verified without Debian's keyring, so dpkg-source's notice is hidden.
    dpkg-source -q -x "$QIS_CACHE/$SRC_DSC" "$dest.tmp" >"$dest.unpack.log" 2>&1 \
        || { cat "$dest.unpack.log" >&2; die "dpkg-source could not unpack $QIS_CACHE/$SRC_DSC"; }
    (
        cd "$dest.tmp"
        git init -q
        git config user.name "QEMU Instant Snapshots"
        git config user.email "dev@qemu-instant-snapshots.invalid"
        git add -A -f .
        git commit -q -m "upstream QEMU 10.2.2 (Debian $SRC_VERSION, packaging patches applied)"
        git tag upstream
    )
    mv "$dest.tmp" "$dest"
fi

# --- patches --------------------------------------------------------------
if [ "$mode" = ours ]; then
    # QEMU files belong in patches/, never beside them: the series must
    # build on its own at every step, and a file outside it would be a
    # silent fork.  Refuse files at QEMU source paths in this repo.
    stray=$(cd "$QIS_TOP" && for d in $QEMU_SRC_DIRS; do
                [ -e "$d" ] && find "$d" -type f ! -name '*.pyc'
            done || true)
    [ -z "$stray" ] || die "this repo holds files at QEMU source paths; new QEMU files enter the tree through a patch (commit them in $dest and run 'make export-patches'):
$stray"

    # Trees assembled before the series carried its new files held them as
    # untracked copies; remove them so the patches that add them apply.
    if [ -f "$dest/.git/qis-overlay" ]; then
        while read -r gone; do
            git_t ls-files --error-unmatch -- "$gone" >/dev/null 2>&1 || rm -f "$dest/$gone"
        done < "$dest/.git/qis-overlay"
        rm -f "$dest/.git/qis-overlay" "$dest/.git/info/exclude"
    fi

    series=$QIS_TOP/patches/series
    [ -f "$series" ] || die "missing $series"
    patches=$(series_patches)
    sum=$(series_sum)
    stamp=$dest/.git/qis-patches
    old_sum=none old_head=none
    [ -f "$stamp" ] && read -r old_sum old_head < "$stamp"
    if [ "$sum" != "$old_sum" ]; then
        head=$(git_t rev-parse HEAD)
        if ! git_t diff --quiet HEAD || [ -n "$(git_t ls-files --others --exclude-standard)" ]; then
            die "$dest has uncommitted changes or new files and patches/ changed; commit them there and run 'make export-patches', or discard them"
        fi
        if [ "$old_head" != none ] && [ "$head" != "$old_head" ]; then
            die "$dest has commits that are not in patches/ and patches/ changed; run 'make export-patches' first, or 'git -C $dest reset --hard $old_head' to drop them"
        fi
        note "applying patches/series"
        git_t reset -q --hard upstream
        for p in $patches; do
            f=$QIS_TOP/patches/$p
            [ -f "$f" ] || die "patches/series names $p, which does not exist"
            if ! out=$(git_t apply --check "$f" 2>&1); then
                die "patch $p does not apply:
$out"
            fi
            git_t am -q --keep-cr "$f" >/dev/null 2>&1 || { git_t am --abort || true; die "git am failed on patch $p"; }
        done
        echo "$sum $(git_t rev-parse HEAD)" > "$stamp"
    fi
fi

# --- configure and build --------------------------------------------------
version=$(cat "$QIS_TOP/VERSION")
if [ "$mode" = ours ]; then
    qemu_build "$dest" "qemu-instant-snapshots-$version"
else
    qemu_build "$dest" "qemu-instant-snapshots-stock"
fi
