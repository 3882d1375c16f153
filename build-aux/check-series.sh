#!/usr/bin/env bash
# Prove that the patch series builds at every step, as git bisect and an
# upstream reviewer need: check out each commit of the assembled tree after
# tag "upstream" in turn, in a worktree of its own, build it there and run a
# QMP smoke test of the binary (after the last step also migration-test).
#   check-series.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/common.sh"
build=$(cd "${1:?usage: check-series.sh BUILD_DIR}" && pwd)
tree=$build/qemu
wt=$build/series
[ -d "$tree/.git" ] || die "$tree is not an assembled tree; run make first"

commits=$(git -C "$tree" rev-list --reverse upstream..HEAD)
total=$(echo "$commits" | grep -c . || true)
[ "$total" = "$(series_patches | wc -l)" ] \
    || die "$tree holds $total commits after upstream, patches/series names $(series_patches | wc -l); run make or make export-patches first"
if [ ! -e "$wt/.git" ]; then
    rm -rf "$wt"
    git -C "$tree" worktree prune
    git -C "$tree" worktree add -q --detach "$wt" upstream
fi

smoke() {
    local out
    out=$(printf '%s\n' '{"execute": "qmp_capabilities"}' \
                        '{"execute": "query-migrate-capabilities"}' \
                        '{"execute": "query-migrate-parameters"}' \
                        '{"execute": "quit"}' |
          timeout 60 "$wt/build/qemu-system-x86_64" -M none -nodefaults \
              -display none -qmp stdio 2>&1) || { echo "$out"; return 1; }
    [ "$(grep -c '"return"' <<< "$out")" = 4 ] || { echo "$out"; return 1; }
}

i=0
for c in $commits; do
    i=$((i + 1))
    subject=$(git -C "$tree" log -1 --format=%s "$c")
    note "[$i/$total] $subject"
    git -C "$wt" checkout -q --detach "$c"
    ( qemu_build "$wt" "qemu-instant-snapshots-series" ) > "$wt.log" 2>&1 \
        || { tail -40 "$wt.log" >&2; die "patch $i ($subject) does not build"; }
    smoke || die "patch $i ($subject): QEMU fails the QMP smoke test"
done
CCACHE_BASEDIR=$wt CCACHE_NOHASHDIR=1 ninja -C "$wt/build" tests/qtest/migration-test > "$wt.log" 2>&1 \
    || { tail -40 "$wt.log" >&2; die "migration-test does not build at the end of the series"; }
note "all $total patches build, each at its point in the series"
