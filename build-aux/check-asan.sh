#!/usr/bin/env bash
# make check-asan: build the series (HEAD of the assembled tree) with
# AddressSanitizer and UBSan in a worktree of its own, and run the
# postcopy-from-file tests on that build: our pytest files and upstream's
# migration-test cases /x86_64/migration/postcopy/file/mapped-ram*.
# Any sanitizer report fails the run, also one from a QEMU whose test
# passed (a QEMU expected to exit with 1, or killed on purpose).
#   check-asan.sh BUILD_DIR [pytest args...]
# PYTEST_LIMIT: seconds after which a pytest run that hangs is stopped
# (default 4 hours).
set -euo pipefail
. "$(dirname "$0")/common.sh"
build=$(cd "${1:?usage: check-asan.sh BUILD_DIR [pytest args...]}" && pwd); shift
tree=$build/qemu
wt=$build/asan
out=$build/asan-check
[ -d "$tree/.git" ] || die "$tree is not an assembled tree; run make first"
[ -f "$build/guest/initramfs.cpio.gz" ] || die "no test guest in $build/guest; run make guest first"

start=$SECONDS
rm -rf "$out"
mkdir -p "$out/sanitizer" "$out/qemu-logs" "$out/tmp" "$out/bin"

# --- build ------------------------------------------------------------------
head=$(git -C "$tree" rev-parse HEAD)
if ! git -C "$tree" diff --quiet HEAD; then
    note "warning: $tree has uncommitted edits; they are not in the ASAN build (HEAD only)"
fi
if [ ! -e "$wt/.git" ]; then
    rm -rf "$wt"
    git -C "$tree" worktree prune
    git -C "$tree" worktree add -q --detach "$wt" "$head"
fi
git -C "$wt" checkout -q --detach "$head"
note "building $(git -C "$tree" log -1 --format='%h %s' "$head") with --enable-asan --enable-ubsan in $wt (log: $out/build.log)"
( qemu_build "$wt" qemu-instant-snapshots-asan --enable-asan --enable-ubsan &&
  CCACHE_BASEDIR=$wt CCACHE_NOHASHDIR=1 ninja -C "$wt/build" tests/qtest/migration-test
) > "$out/build.log" 2>&1 || { tail -40 "$out/build.log" >&2; die "the ASAN build failed; see $out/build.log"; }
build_time=$((SECONDS - start))
note "built in $((build_time / 60)) min $((build_time % 60)) s"

# --- sanitizer settings -----------------------------------------------------
# Every report stops the process: QEMU dies with SIGABRT, which fails its
# test unless the test meant QEMU to die (killed on purpose, or expected
# to exit with an error).  The run also fails on any report found
# afterwards, so none can hide:
# - AddressSanitizer's and LeakSanitizer's reports go to files of their
#   own in $out/sanitizer, named after the program and its pid;
# - UBSan's go to stderr (a runtime linked beside ASan ignores log_path):
#   for QEMU, its log, which a passing test deletes with its workdir, so
#   the QEMU the tests run is a wrapper that keeps a hard link to its log
#   in $out/qemu-logs.
# LeakSanitizer stays on: a leak fails the run like any other report.
# fast_unwind_on_malloc=0: QEMU allocates through GLib, which has no frame
# pointers, so the fast unwinder stops at g_malloc() and the "allocated
# by" and "freed by" stacks would name no QEMU function.
logs=$out/sanitizer
ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:fast_unwind_on_malloc=0"
ASAN_OPTIONS+=":log_path=$logs/asan:log_exe_name=1"
UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
LSAN_OPTIONS=""
# Reports in upstream code that this series does not touch, each entry
# explained in its file; a report in our code is never suppressed.
[ -f "$QIS_TOP/build-aux/asan.supp" ] && ASAN_OPTIONS+=":suppressions=$QIS_TOP/build-aux/asan.supp"
[ -f "$QIS_TOP/build-aux/ubsan.supp" ] && UBSAN_OPTIONS+=":suppressions=$QIS_TOP/build-aux/ubsan.supp"
[ -f "$QIS_TOP/build-aux/lsan.supp" ] && LSAN_OPTIONS="suppressions=$QIS_TOP/build-aux/lsan.supp"
export ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS

# --- our pytest files -------------------------------------------------------
tests="test_postcopy_file.py test_postcopy_file_errors.py test_postcopy_file_races.py
       test_postcopy_file_hardening.py"
[ -f "$QIS_TOP/tests/snapshots/test_postcopy_file_corruption.py" ] && tests+=" test_postcopy_file_corruption.py"
note "pytest on the ASAN build: $(echo $tests)"
t0=$SECONDS
# QIS_BUILD_DIR stays the normal build dir (python library, guest, stock
# tree); only the binaries under test are the ASAN ones.  QEMU's stdout
# and stderr are its log file (QEMUMachine); exec keeps the pid, which
# tests kill and attach gdb to.
cat > "$out/bin/qemu-system-x86_64-asan" <<EOF
#!/bin/bash
log=\$(readlink /proc/\$\$/fd/2 2>/dev/null || true)
[ -f "\$log" ] && ln -f "\$log" "$out/qemu-logs/\$\$.log" 2>/dev/null
exec $wt/build/qemu-system-x86_64 "\$@"
EOF
chmod +x "$out/bin/qemu-system-x86_64-asan"
# A test that hangs (an event waited for without a timeout) must not hang
# the target: after PYTEST_LIMIT seconds pytest is stopped, with what it
# left behind (QEMU from this ASAN build, FUSE files mounted under $out).
(cd "$QIS_TOP/tests/snapshots" &&
 QIS_BUILD_DIR=$build QIS_QEMU=$out/bin/qemu-system-x86_64-asan QIS_QEMU_IMG=$wt/build/qemu-img \
 QIS_TEST_TMP=$out/tmp exec /usr/bin/python3 -m pytest -p no:cacheprovider -v -rfE \
     --basetemp="$out/pytest" --junitxml="$out/results.xml" $tests "$@") > "$out/pytest.log" 2>&1 &
pid=$!
tail -n +1 -f --pid=$pid "$out/pytest.log" &
deadline=$((SECONDS + ${PYTEST_LIMIT:-14400}))
while kill -0 $pid 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 5; done
pytest_rc=0
if kill -0 $pid 2>/dev/null; then
    note "pytest did not finish within ${PYTEST_LIMIT:-14400} s; stopping it"
    # A QEMU that exits while the FUSE server is gone waits for it for
    # ever: note the mounts' connections first, to abort them
    conns=$(awk -v o="$out/" 'index($5, o) == 1 && / - fuse/ { split($3, d, ":"); print d[2] }' \
            /proc/self/mountinfo)
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$wt/build/qemu-system-x86_64" ] || continue
        note "killing QEMU ${p#/proc/}, left running"; kill -9 "${p#/proc/}" 2>/dev/null || true
    done
    kill "$pid" 2>/dev/null || true
    sleep 10
    kill -9 "$pid" 2>/dev/null || true
    for c in $conns; do
        [ -w "/sys/fs/fuse/connections/$c/abort" ] && echo 1 > "/sys/fs/fuse/connections/$c/abort"
    done
    awk -v o="$out/" 'index($2, o) == 1 { print $2 }' /proc/mounts |
        while read -r m; do fusermount -u -z "$m" 2>/dev/null || umount -l "$m" || true; done
    wait $pid || true
    pytest_rc=124
else
    wait $pid || pytest_rc=$?
fi
wait     # for tail
pytest_time=$((SECONDS - t0))

# --- upstream's framework: migration-test built in the ASAN tree ------------
# Forced to TCG as in test_upstream_gate.py: migration-test asks for
# '-accel kvm -accel tcg' when /dev/kvm exists; the wrapper drops kvm.
cat > "$out/bin/qemu-system-x86_64" <<EOF
#!/bin/bash
args=()
while [ \$# -gt 0 ]; do
    if [ "\$1" = -accel ] && [ "\$2" = kvm ]; then shift 2; continue; fi
    args+=("\$1"); shift
done
exec $wt/build/qemu-system-x86_64 "\${args[@]}"
EOF
chmod +x "$out/bin/qemu-system-x86_64"
qpath=/x86_64/migration/postcopy/file/mapped-ram
note "migration-test -p $qpath (ASAN tree, TCG)"
t0=$SECONDS
qtest_rc=0
QTEST_QEMU_BINARY=$out/bin/qemu-system-x86_64 QTEST_QEMU_IMG=$wt/build/qemu-img \
PYTHON=/usr/bin/python3 timeout 3600 "$wt/build/tests/qtest/migration-test" \
    --full --tap -k -p "$qpath" > "$out/migration-test.log" 2>&1 || qtest_rc=$?
qtest_time=$((SECONDS - t0))
grep -E "^(ok|not ok) " "$out/migration-test.log" || true
qtest_ok=$(grep -cE "^ok [0-9]+ $qpath" "$out/migration-test.log" || true)
qtest_bad=$(grep -E "^not ok |# SKIP" "$out/migration-test.log" || true)
if [ "$qtest_rc" != 0 ] || [ -n "$qtest_bad" ] || [ "$qtest_ok" -lt 5 ]; then
    tail -60 "$out/migration-test.log"
    note "migration-test FAILED (exit $qtest_rc, $qtest_ok cases ok; log: $out/migration-test.log)"
    qtest_rc=1
fi

# --- every sanitizer report, whoever printed it -----------------------------
# The report files, and every log the tests left: QEMU's logs (kept in
# $out/qemu-logs, and in the workdirs of failed tests), pytest's output
# (qemu-img's stderr), migration-test's output (its QEMUs' stderr).
pattern='ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer|LeakSanitizer)'
reports=$(grep -rlaE "$pattern" "$out" --exclude=build.log || true)
# ASan warns once per QEMU that it does not fully support swapcontext
# (QEMU's coroutines; they annotate their stack switches, so it does not
# matter): count that warning, show any other output.
benign="WARNING: ASan doesn't fully support makecontext/swapcontext functions"
nbenign=$(grep -lF "$benign" "$logs"/* 2>/dev/null | wc -l)
for f in "$logs"/*; do
    [ -e "$f" ] || continue
    if ! grep -qE "$pattern" "$f" && grep -vqF "$benign" "$f"; then
        note "other sanitizer output in $f:"; grep -vF "$benign" "$f" | head -20
    fi
done
note "$(ls "$logs" | wc -l) sanitizer log files; $nbenign of them hold ASan's swapcontext warning"
san_rc=0
if [ -n "$reports" ]; then
    san_rc=1
    while IFS= read -r f; do
        echo "=== $f"
        grep -aE -B2 -A40 "$pattern" "$f" | head -120
    done <<< "$reports"
    note "sanitizer reports in:"; echo "$reports"
fi

total=$((SECONDS - start))
note "time: build $((build_time / 60)) min $((build_time % 60)) s, pytest $((pytest_time / 60)) min $((pytest_time % 60)) s, migration-test $((qtest_time / 60)) min $((qtest_time % 60)) s, total $((total / 60)) min $((total % 60)) s"
note "pytest: $([ $pytest_rc = 0 ] && echo passed || echo "FAILED (exit $pytest_rc)"), migration-test: $([ $qtest_rc = 0 ] && echo "$qtest_ok cases passed" || echo FAILED), sanitizer reports: $([ $san_rc = 0 ] && echo none || echo "$(echo "$reports" | wc -l) files")"
[ $pytest_rc = 0 ] && [ $qtest_rc = 0 ] && [ $san_rc = 0 ] || die "check-asan failed (results in $out)"
note "check-asan passed"
