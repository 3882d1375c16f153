#!/usr/bin/env bash
# Assemble a QEMU tree from the cached source package and build it.
#
#   assemble.sh ours  DIR   upstream + patches/ + overlay (this project)
#   assemble.sh stock DIR   upstream only, for the benchmarks
#
# DIR is a git repository: one commit for upstream (tag "upstream") and one
# commit per patch of patches/series.  The overlay files are copied in but
# not committed (they are listed in .git/info/exclude), so the commits on top
# of "upstream" are exactly the patch series.  Each step is skipped when its
# inputs did not change, so re-running only rebuilds what changed.
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
    series=$QIS_TOP/patches/series
    [ -f "$series" ] || die "missing $series"
    patches=$(series_patches)
    sum=$(series_sum)
    stamp=$dest/.git/qis-patches
    old_sum=none old_head=none
    [ -f "$stamp" ] && read -r old_sum old_head < "$stamp"
    if [ "$sum" != "$old_sum" ]; then
        head=$(git_t rev-parse HEAD)
        if ! git_t diff --quiet HEAD; then
            die "$dest has uncommitted changes to upstream files and patches/ changed; commit them there and run 'make export-patches', or discard them"
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

    # --- overlay ----------------------------------------------------------
    cd "$QIS_TOP"
    dirs=""
    for d in $OVERLAY_DIRS; do [ -d "$d" ] && dirs="$dirs $d"; done
    list=$(mktemp)
    trap 'rm -f "$list"' EXIT
    if [ -n "$dirs" ]; then
        if [ -d .git ]; then
            git ls-files -co --exclude-standard -- $dirs > "$list"
        else
            find $dirs -type f > "$list"
        fi
    fi
    shadow=$(git_t ls-tree -r --name-only upstream | sort | comm -12 - <(sort "$list") || true)
    [ -z "$shadow" ] || die "overlay files shadow upstream files (change those with a patch instead):
$shadow"
    old_list=$dest/.git/qis-overlay
    if [ -f "$old_list" ]; then
        comm -23 <(sort "$old_list") <(sort "$list") | while read -r gone; do
            rm -f "$dest/$gone"
        done
    fi
    rsync -rt --files-from="$list" "$QIS_TOP" "$dest"
    sort "$list" > "$old_list"
    { echo "# overlay files of QEMU Instant Snapshots (not part of the patch series)";
      sed 's|^|/|' "$old_list"; } > "$dest/.git/info/exclude"
fi

# --- configure ------------------------------------------------------------
version=$(cat "$QIS_TOP/VERSION")
if [ "$mode" = ours ]; then
    pkgversion="qemu-instant-snapshots-$version"
else
    pkgversion="qemu-instant-snapshots-stock"
fi
cc=gcc
command -v ccache >/dev/null && cc="ccache gcc"
args=(--target-list=x86_64-softmmu --python=/usr/bin/python3 --cc="$cc"
      --disable-download --disable-install-blobs --enable-fdt=system
      --disable-docs --disable-rust --disable-user --enable-tools
      --disable-gtk --disable-sdl --disable-vnc --disable-opengl
      --enable-slirp --firmwarepath="$FIRMWARE_PATH"
      --with-pkgversion="$pkgversion")
bdir=$dest/build
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

# --- build ----------------------------------------------------------------
note "building in $bdir"
# Let ccache share objects between trees in different directories (fresh
# clones, the stock tree): hash paths relative to the tree, not the cwd.
export CCACHE_BASEDIR=$dest CCACHE_NOHASHDIR=1
ninja -C "$bdir" qemu-system-x86_64 qemu-img qemu-io qemu-nbd storage-daemon/qemu-storage-daemon \
    || die "build failed in $bdir"

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
