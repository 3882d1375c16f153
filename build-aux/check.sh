#!/usr/bin/env bash
# make check: our pytest suite plus upstream's gate, then the summary.
#   check.sh BUILD_DIR [pytest args...]
set -uo pipefail
. "$(dirname "$0")/common.sh"
build=$(cd "${1:?usage: check.sh BUILD_DIR}" && pwd); shift

ninja -C "$build/qemu/build" tests/qtest/migration-test >/dev/null \
    || die "cannot build tests/qtest/migration-test"
out=$build/check
rm -rf "$out"; mkdir -p "$out"
export QIS_BUILD_DIR=$build
cd "$QIS_TOP/tests/snapshots"
/usr/bin/python3 -m pytest -p no:cacheprovider -v -rfE \
    --junitxml="$out/results.xml" "$@" . 2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
[ -f "$out/results.xml" ] || die "pytest produced no results (exit $rc)"
/usr/bin/python3 "$QIS_TOP/build-aux/summary.py" "$out/results.xml"
src=$?
[ $rc = 0 ] && [ $src = 0 ]
