"""
Foundation tests: the guest boots and the workload runs; stock
snapshot-save / snapshot-load round-trip a running guest byte-exactly;
the harness fails a test whose QEMU crashes or hangs at its end.
"""

import os
import resource
import signal
import time

import pytest

from snaptest import QEMU, Guest, ShutdownError, snapshots_in

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
        g.assert_ram_is(os.path.join(workdir, "ram-after-load"), sum_snap, at_snapshot)

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


def idle_guest(workdir, name="vm"):
    """A small guest that boots no kernel (the firmware idles): quick to start."""
    return Guest(workdir, name=name, ram_mb=64, kernel=False)


def crash(g):
    """Kill G's QEMU with SIGSEGV, as a crash would, without a core file."""
    pid = g.vm.get_pid()
    resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
    os.kill(pid, signal.SIGSEGV)
    return pid


def assert_gone(g, pid):
    """G's QEMU, once PID, has been reaped and no such process is left."""
    assert g.vm.exitcode() is not None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except FileNotFoundError:
        return
    assert QEMU.encode() not in cmdline, f"QEMU {pid} is still there"


def test_shutdown_fails_when_qemu_dies_by_signal(workdir):
    """
    QEMU killed by SIGSEGV (as a crash would) fails the shutdown with the
    signal's name, QEMU's log and the console's tail.
    """
    g = idle_guest(workdir).launch()
    pid = crash(g)
    with pytest.raises(ShutdownError, match=r"QEMU died: killed by SIGSEGV") as err:
        g.shutdown()
    report = str(err.value)
    assert f"(pid {pid})" in report and "exit code -11" in report, report
    assert "--- QEMU log (tail) ---" in report and "--- console (tail) ---" in report, report
    assert_gone(g, pid)
    g.shutdown()        # reported once: a second call does nothing


def test_shutdown_fails_when_qemu_hangs(workdir):
    """
    QEMU stopped (SIGSTOP) so that it cannot answer quit nor exit: the
    shutdown gives up after its timeout, kills QEMU and fails saying so.
    """
    g = idle_guest(workdir).launch()
    pid = g.vm.get_pid()
    os.kill(pid, signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(ShutdownError, match=r"QEMU hung: it did not exit within 2 s "
                                            r"after it was asked to quit") as err:
        g.shutdown(timeout=2)
    assert time.monotonic() - start < 30
    assert "killed by SIGKILL" in str(err.value), err.value
    assert_gone(g, pid)


def test_with_block_raises_on_crash(workdir):
    """A with block whose QEMU died raises from its end."""
    with pytest.raises(ShutdownError, match="SIGSEGV"):
        with idle_guest(workdir) as g:
            pid = crash(g)
            g.exited_within(30)
    assert_gone(g, pid)


def test_with_block_keeps_the_test_failure(workdir):
    """
    A with block that fails on its own and whose QEMU then also fails to
    end keeps the block's exception; the shutdown failure is a note on it.
    """
    with pytest.raises(KeyError, match="the test's own failure") as err:
        with idle_guest(workdir) as g:
            pid = crash(g)
            raise KeyError("the test's own failure")
    notes = getattr(err.value, "__notes__", [])
    assert any("killed by SIGSEGV" in n for n in notes), notes
    assert_gone(g, pid)


def test_expected_ends_pass(workdir):
    """
    Ends the test asked for pass: a kill() on purpose, an exit code set
    with expect_exit(); an exit code other than the expected one fails.
    """
    with idle_guest(workdir, "killed") as g:
        g.kill()
    assert g.vm.exitcode() == -signal.SIGKILL

    with idle_guest(workdir, "quit") as g:
        g.cmd("quit")
        g.wait_exit(0)
    assert g.vm.exitcode() == 0

    g = idle_guest(workdir, "wrong-code").launch()
    g.expect_exit(1)
    with pytest.raises(ShutdownError, match="ended with exit code 0; the test expected "
                                            "exit code 1"):
        g.shutdown()


def test_event_within_gives_up_in_time(workdir):
    """event_within() waits SECONDS for an event that does not come, not forever."""
    with idle_guest(workdir) as g:
        start = time.monotonic()
        assert g.event_within("MIGRATION", 1) is None
        assert time.monotonic() - start < 10
        assert g.exited_within(1) is None
