#!/usr/bin/env bash
# Export the commits of the assembled tree (everything after tag "upstream")
# back into patches/ and rewrite patches/series.
#   export-patches.sh TREE
set -euo pipefail
. "$(dirname "$0")/common.sh"
tree=${1:?usage: export-patches.sh TREE}
[ -d "$tree/.git" ] || die "$tree is not an assembled tree; run make first"
git -C "$tree" diff --quiet HEAD || die "$tree has uncommitted changes; commit them first (git -C $tree commit)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$tree" format-patch -q --zero-commit --no-signature -N -o "$tmp" upstream..HEAD
for p in $(series_patches); do rm -f "$QIS_TOP/patches/$p"; done
{
    echo "# QEMU Instant Snapshots patch series, applied in order on upstream 10.2.2"
    for f in "$tmp"/*.patch; do
        [ -e "$f" ] || continue
        cp "$f" "$QIS_TOP/patches/"
        basename "$f"
    done
} > "$QIS_TOP/patches/series.new"
mv "$QIS_TOP/patches/series.new" "$QIS_TOP/patches/series"
# The tree already holds exactly these patches: record that, so the next
# make does not re-apply them.
echo "$(series_sum) $(git -C "$tree" rev-parse HEAD)" > "$tree/.git/qis-patches"
note "exported $(series_patches | wc -l) patches to patches/"
