"""
Upstream gate: upstream's own tests run against our build, forced to TCG.

- qtest migration-test: /migration/precopy/file*, /migration/multifd/file/
  mapped-ram*, /migration/postcopy/plain, /migration/postcopy/recovery/plain,
  and the series' own cases in upstream's framework,
  /migration/postcopy/file/mapped-ram* (lazy loads of precopy, multifd and
  background-snapshot files, read errors with recover and cancel)
- qemu-iotests, with -qcow2 (file protocol): every test that exercises
  savevm/loadvm/delvm, QMP internal snapshots or qcow2 internal snapshots
  (qemu-img snapshot -c/-a/-d/-l), found by grepping the tests (the grep
  is at IOTESTS below): 007 014 015 029 057 058 060 061 062 066 068 080
  103 112 153 176 178 201 217 244 261 267 271 286 qcow2-internal-snapshots;
  and the series' own snapshot-save-instant and snapshot-load-lazy.  They
  take about 4 minutes on 2 cores.

Each upstream test case is reported as one pytest test (marked "gate"), so
the summary shows them beside ours.  migration-test is run once for all of
its selected paths; each case's result is read from its TAP output.
qemu-iotests' ./check is run once for all of IOTESTS; each test's result
is read from its pass/fail/not run line (a "not run" fails the gate).
"""

import os
import re
import stat
import subprocess
import tempfile

import pytest

import snaptest

pytestmark = pytest.mark.gate

BUILD = os.path.join(snaptest.TREE, "build")
MIGRATION_TEST = os.path.join(BUILD, "tests", "qtest", "migration-test")
# GLib's -p selects a test path and everything below it; these prefixes do
# not overlap, so each case runs exactly once.
PREFIXES = [
    "/x86_64/migration/precopy/file",
    "/x86_64/migration/multifd/file/mapped-ram",
    "/x86_64/migration/postcopy/plain",
    "/x86_64/migration/postcopy/recovery/plain",
    "/x86_64/migration/postcopy/file",
]
# Every qemu-iotests test that exercises savevm/loadvm/delvm, the
# snapshot-save/-load/-delete jobs, QMP internal snapshots or qcow2 internal
# snapshots through qemu-img, found (not guessed) with, in
# build/qemu/tests/qemu-iotests:
#
#   grep -lE 'savevm|loadvm|delvm|snapshot-(save|load|delete)|blockdev-snapshot(-delete)?-internal-sync|snapshot -[acdl]|Snapshot list|internal[ _-]?snapshot' \
#       [0-9][0-9][0-9] [0-9][0-9][0-9].out tests/* | sed -E 's#^tests/##; s#\.out$##' | sort -u
#
# That prints these 25 plus 098, which only names internal snapshots in
# its title ("bdrv_make_empty for images without internal snapshots") and
# creates none.  All 25 support qcow2 and the file protocol
# (_supported_fmt qcow2 / supported_fmts=['qcow2']).  Wider patterns added
# nothing that uses internal snapshots: nb_snapshots/snapshot_offset and
# l1_table_offset add only 031, 044, 163 and 303, which read or dump qcow2
# header fields and create no snapshot; "-snapshot" adds external snapshots
# (blockdev-snapshot, blockdev-snapshot-sync), the -snapshot option and
# pass-discard-snapshot.
# No upstream iotest uses snapshot-save/-load/-delete.  The series adds
# its own in upstream's framework: snapshot-save-instant (patch
# "tests/qemu-iotests: test instant snapshot-save") and snapshot-load-lazy
# (patch "tests/qemu-iotests: test lazy snapshot-load").
IOTESTS = [
    "007", "014", "015", "029", "057", "058", "060", "061", "062", "066",
    "068", "080", "103", "112", "153", "176", "178", "201", "217", "244",
    "261", "267", "271", "286", "qcow2-internal-snapshots",
    "snapshot-save-instant", "snapshot-load-lazy",
]


def tcg_wrapper(directory):
    """
    A qemu-system-x86_64 that drops '-accel kvm': migration-test asks for
    '-accel kvm -accel tcg' when /dev/kvm exists, and nested KVM is too slow
    here.  The name must end in qemu-system-x86_64 for qtest.
    """
    path = os.path.join(directory, "qemu-system-x86_64")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"""#!/bin/bash
args=()
while [ $# -gt 0 ]; do
    if [ "$1" = -accel ] && [ "$2" = kvm ]; then shift 2; continue; fi
    args+=("$1"); shift
done
exec {snaptest.QEMU} "${{args[@]}}"
""")
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


def migration_env(wrapper):
    env = dict(os.environ)
    env.update(QTEST_QEMU_BINARY=wrapper,
               QTEST_QEMU_IMG=snaptest.QEMU_IMG,
               PYTHON="/usr/bin/python3")
    return env


_WRAPDIR = tempfile.mkdtemp(prefix="qis-gate-")
_WRAPPER = tcg_wrapper(_WRAPDIR)


def list_migration_tests():
    if not os.path.exists(MIGRATION_TEST):
        return []
    out = subprocess.run([MIGRATION_TEST, "--full", "-l"], env=migration_env(_WRAPPER),
                         capture_output=True, text=True, timeout=120, check=False).stdout
    paths = [l.strip() for l in out.splitlines() if l.strip().startswith("/")]
    return [p for p in paths
            if any(p == pre or p.startswith(pre + "/") for pre in PREFIXES)]


MIGRATION_CASES = list_migration_tests()


def test_migration_test_built():
    assert os.path.exists(MIGRATION_TEST), f"{MIGRATION_TEST} is not built"
    assert len(MIGRATION_CASES) >= 15, MIGRATION_CASES
    assert "/x86_64/migration/postcopy/file/mapped-ram/recover" in MIGRATION_CASES


@pytest.mark.parametrize("path", MIGRATION_CASES)
def test_migration(path):
    """
    One migration-test case.  GLib's -p also selects the tests below a
    path, so those are skipped with -s: each case runs exactly once.
    """
    cmd = [MIGRATION_TEST, "--full", "--tap", "-k", "-p", path]
    for other in MIGRATION_CASES:
        if other.startswith(path + "/"):
            cmd += ["-s", other]
    proc = subprocess.run(cmd, env=migration_env(_WRAPPER), capture_output=True,
                          text=True, timeout=1800, check=False)
    log = f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    lines = [l for l in proc.stdout.splitlines()
             if re.match(rf"(not ok|ok) \d+ {re.escape(path)}(\s|$)", l)]
    assert lines, f"{path} did not report a result:\n{log}"
    assert lines[0].startswith("ok") and "# SKIP" not in lines[0], log
    assert proc.returncode == 0, log


@pytest.fixture(scope="module")
def iotest_results():
    iodir = os.path.join(BUILD, "tests", "qemu-iotests")
    env = dict(os.environ)
    env.update(QEMU_PROG=snaptest.QEMU, PYTHON="/usr/bin/python3")
    proc = subprocess.run(["/usr/bin/python3", "./check", "-qcow2", *IOTESTS], cwd=iodir,
                          env=env, capture_output=True, text=True, timeout=1800, check=False)
    results = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"(\S+)\s+(pass|fail|not run)\b", line)
        if m:
            results[m.group(1)] = m.group(2)
    results["__log__"] = proc.stdout[-5000:] + proc.stderr[-3000:]
    return results


@pytest.mark.parametrize("name", IOTESTS)
def test_iotest(iotest_results, name):
    assert iotest_results.get(name) == "pass", \
        f"iotest {name}: {iotest_results.get(name)}\n{iotest_results['__log__']}"
