"""
Background snapshots (migrate to file: with background-snapshot, with and
without mapped-ram) restore byte-exactly, also while the guest writes
during the save.

Regression test for patches/0002: a background-snapshot + mapped-ram file
used to have an empty page bitmap, so loading it failed with
"kvm-tpr-opt: post load hook failed".
"""

import os
import re

import pytest

from snaptest import SAVE_CAPS, Guest, save_to_file

RAM_MB = int(os.environ.get("QIS_TEST_RAM_MB", "512"))
WL_MB = RAM_MB * 3 // 4 - 64

CAPS = {
    "bg": {"background_snapshot": True},
    "bg+mapped-ram": SAVE_CAPS["bg"],
}


def restore(workdir, path, caps, wl_mb):
    """A new QEMU, started paused, loads PATH; returns the running Guest."""
    dst = Guest(workdir, name="dst", ram_mb=RAM_MB, wl_mb=wl_mb, incoming="defer",
                paused=True)
    with dst.launch().ended_on_error():
        load_caps = {"mapped_ram": True} if caps.get("mapped_ram") else {}
        status, info = dst.incoming_file(path, **load_caps)
        assert status == "completed", info.get("error-desc")
    return dst


@pytest.mark.parametrize("kind", CAPS)
def test_restore_equals_snapshot_point(workdir, kind):
    """Guest stopped: RAM after the restore equals RAM when the snapshot was taken."""
    path = os.path.join(workdir, "snap.mig")
    at_snapshot, want = save_to_file(workdir, path, RAM_MB, WL_MB, stop_first=True,
                                     **CAPS[kind])
    with restore(workdir, path, CAPS[kind], WL_MB) as dst:
        dst.assert_ram_is(os.path.join(workdir, "ram-dst"), want, at_snapshot)
        dst.cmd("cont")
        assert dst.wait_full_pass() == 0
        dst.check_no_corruption()


@pytest.mark.parametrize("kind", CAPS)
def test_restore_while_guest_writes(workdir, kind):
    """
    The guest keeps rewriting its pages during the background save; the
    restored guest's workload then verifies every page against the
    generation table saved with them, which only holds if every page was
    saved as it was at the snapshot point.
    """
    path = os.path.join(workdir, "snap.mig")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB) as src:
        src.wait_ready()
        src.wait_progress()
        mark = src.console_mark()
        src.migrate_to_file(path, **CAPS[kind])
        during = src.console()[mark:]
        assert src.status() == "running"
        # the workload ran (and so wrote pages) while the save was going on
        assert re.search(r"WL PROGRESS", during), \
            "the save finished before the guest reported any progress"
        src.check_no_corruption()
    with restore(workdir, path, CAPS[kind], WL_MB) as dst:
        dst.cmd("cont")
        assert dst.wait_full_pass() == 0
        dst.check_no_corruption()
