"""
Foundation tests: the guest boots and the workload runs; stock
snapshot-save / snapshot-load round-trip a running guest byte-exactly.
"""

import os

import pytest

from snaptest import Guest, differing_pages, snapshots_in

RAM_MB = int(os.environ.get("QIS_TEST_RAM_MB", "512"))
WL_MB = RAM_MB * 3 // 4 - 64


def test_boot_and_workload(workdir):
    """The guest boots, fills its memory and keeps verifying it."""
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB) as g:
        pages = int(g.wait_ready().group(1))
        assert pages == WL_MB * 256
        first = g.wait_progress()
        second = g.wait_progress()
        assert int(second.group(2)) > int(first.group(2)), "workload is not making progress"
        assert g.status() == "running"
        g.check_no_corruption()


def test_stock_snapshot_save_load_roundtrip(workdir):
    """
    snapshot-save into a qcow2 image, let the guest run on and dirty memory,
    snapshot-load: guest RAM equals RAM at the snapshot point, and the
    workload then verifies every page without finding a corrupt one.
    """
    disk = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB, disk=disk) as g:
        g.wait_ready()
        g.wait_progress()

        g.cmd("stop")
        at_snapshot = os.path.join(workdir, "ram-at-snapshot")
        sum_snap = g.dump_ram(at_snapshot)
        err = g.run_job("snapshot-save", "save0", tag="snap0", vmstate="disk0",
                        devices=["disk0"])
        assert err is None, err
        assert g.status() == "paused"
        assert "snap0" in snapshots_in(disk)

        g.cmd("cont")
        g.wait_progress()
        g.wait_progress()
        g.cmd("stop")
        sum_dirty = g.dump_ram(os.path.join(workdir, "ram-dirty"))
        assert sum_dirty != sum_snap, "the workload did not change RAM after the snapshot"

        err = g.run_job("snapshot-load", "load0", tag="snap0", vmstate="disk0",
                        devices=["disk0"])
        assert err is None, err
        after = os.path.join(workdir, "ram-after-load")
        sum_load = g.dump_ram(after)
        assert sum_load == sum_snap, \
            f"RAM differs after load at pages {differing_pages(at_snapshot, after)}"

        mark = g.console_mark()
        g.cmd("cont")
        errors = g.wait_full_pass()
        assert errors == 0
        g.check_no_corruption(g.console()[mark:])


@pytest.mark.parametrize("command,tag,vmstate,named", [
    ("snapshot-save", "snap1", "nosuchnode", "nosuchnode"),
    ("snapshot-load", "snap0", "nosuchnode", "nosuchnode"),
    ("snapshot-load", "nosuchtag", "disk0", "nosuchtag"),
])
def test_bad_snapshot_request(workdir, command, tag, vmstate, named):
    """
    A vmstate node or tag that does not exist: a clear error that names it,
    the guest runs on, and the existing snapshot is untouched.
    """
    disk = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=64, disk=disk) as g:
        g.wait_ready()
        assert g.run_job("snapshot-save", "save0", tag="snap0", vmstate="disk0",
                         devices=["disk0"]) is None
        err = g.run_job(command, "job0", tag=tag, vmstate=vmstate,
                        devices=["disk0"])
        assert err is not None
        assert named in err, err
        assert g.status() == "running"
        before = int(g.wait_progress().group(2))
        after = int(g.wait_progress().group(2))
        assert after > before
        assert snapshots_in(disk) == ["snap0"]
        g.check_no_corruption()


def test_snapshot_delete(workdir):
    """snapshot-delete removes the tag and only that tag."""
    disk = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=64, disk=disk) as g:
        g.wait_ready()
        for tag in ("a", "b"):
            assert g.run_job("snapshot-save", "save-" + tag, tag=tag, vmstate="disk0",
                             devices=["disk0"]) is None
        assert g.run_job("snapshot-delete", "del", tag="a", devices=["disk0"]) is None
        assert snapshots_in(disk) == ["b"]
        err = g.run_job("snapshot-delete", "del2", tag="nosuchtag", devices=["disk0"])
        assert err is None or "nosuchtag" in err
        assert snapshots_in(disk) == ["b"]
