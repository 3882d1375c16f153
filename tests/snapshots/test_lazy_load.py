"""
Lazy snapshot-load (snapshot-load with mode "lazy"): the disks are
reverted and the device state loaded, the guest runs again, and RAM is
loaded from the snapshot's VM state while it runs.

Snapshots are taken both ways that write a mapped-ram VM state: a stopped
snapshot-save with the mapped-ram capability (as stock QEMU 10.2.2 writes
it) and an instant snapshot-save.
"""

import os
import time

import pytest

from faultyfs import FaultyMount

from snaptest import (STOCK_QEMU, Guest, assert_verified, img_check, job_of, qemu_img,
                      qemu_io, snapshots_in)

RAM_MB = int(os.environ.get("QIS_TEST_RAM_MB", "512"))
WL_MB = RAM_MB * 3 // 4 - 64


def save(g, tag, mode="stopped"):
    """A snapshot TAG of disk0 with a mapped-ram VM state."""
    if mode == "stopped":
        g.set_caps(mapped_ram=True)
    err = g.run_job("snapshot-save", "save-" + tag, tag=tag, vmstate="disk0",
                    devices=["disk0"], mode=mode)
    if mode == "stopped":
        g.set_caps(mapped_ram=False)
    assert err is None, err


def lazy_load(g, tag, job_id=None):
    g.cmd("snapshot-load", job_id=job_id or "load-" + tag, tag=tag,
          vmstate="disk0", devices=["disk0"], mode="lazy")


def caps(g):
    return {c["capability"]: c["state"] for c in g.cmd("query-migrate-capabilities")}


def hold_fill(g, hold):
    """
    Hold the background fill of a lazy load (max-postcopy-bandwidth of
    one byte per second: each prefetch thread reads one chunk, then
    waits), or let it go.  Pages the guest touches are read regardless.
    """
    g.cmd("migrate-set-parameters", max_postcopy_bandwidth=1 if hold else 0)


def start_held_load(g, tag="snap0", job_id=None):
    """A lazy load of TAG whose fill is held; returns once the guest runs again."""
    job_id = job_id or "load-" + tag
    hold_fill(g, True)
    g.vm.get_qmp_events(wait=False)
    lazy_load(g, tag, job_id)
    assert g.vm.event_wait("RESUME", timeout=60.0), "the guest does not run again"
    job = job_of(g, job_id)
    assert job["status"] == "running", job


@pytest.mark.parametrize("save_mode", ["stopped", "instant"])
def test_lazy_load_is_byte_exact(workdir, save_mode):
    """
    RAM after a lazy load equals RAM at the snapshot point, and the disk
    equals the disk then.  The load starts with the guest paused, so that
    the host-side dump after the load is the loaded RAM; the guest then
    runs and verifies every page, and the job concludes.  The user's
    capabilities are as before.
    """
    image = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB, disk=image) as g:
        g.wait_ready()
        g.wait_progress()
        qemu_io(g, "disk0", "write -P 0xaa 0 1M")
        g.cmd("stop")
        at_save = os.path.join(workdir, "ram-at-save")
        sum_save = g.dump_ram(at_save)
        save(g, "snap0", save_mode)
        assert "snap0" in snapshots_in(image)
        g.cmd("cont")
        g.wait_progress()
        qemu_io(g, "disk0", "write -P 0x55 0 1M")

        g.cmd("stop")
        before = caps(g)
        lazy_load(g, "snap0")
        err = g.wait_job("load-snap0")
        assert err is None, err
        assert g.status() == "paused"
        assert caps(g) == before
        g.assert_ram_is(os.path.join(workdir, "ram-after"), sum_save, at_save)
        qemu_io(g, "disk0", "read -P 0xaa 0 1M")
        g.cmd("cont")
        assert_verified(g)
    code, out = img_check(image)
    assert code == 0, out


def test_lazy_load_runs_the_guest_before_ram_is_in(workdir):
    """
    A running guest runs again while its RAM is loaded: the job is still
    running when the guest already runs, query-jobs reports progress, the
    monitor answers, and the workload verifies every page.
    """
    image = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB, disk=image) as g:
        g.wait_ready()
        g.wait_progress()
        save(g, "snap0")
        g.wait_progress()
        lazy_load(g, "snap0")
        seen_running = False
        while True:
            jobs = [j for j in g.cmd("query-jobs") if j["id"] == "load-snap0"]
            if jobs[0]["status"] == "concluded":
                break
            if g.status() == "running" and jobs[0]["status"] == "running":
                seen_running = True
        err = g.dismiss_job("load-snap0")
        assert err is None, err
        assert jobs[0]["current-progress"] == jobs[0]["total-progress"] > 1
        assert seen_running
        assert g.status() == "running"
        assert_verified(g)


def test_lazy_load_refuses_a_stream_snapshot(workdir):
    """
    A snapshot whose VM state is a stream (saved without mapped-ram) is
    refused with an error that says why, before anything changes: the
    guest keeps running, the disk keeps what was written after the save,
    and the capabilities are the user's.
    """
    image = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB, disk=image) as g:
        g.wait_ready()
        err = g.run_job("snapshot-save", "save0", tag="snap0", vmstate="disk0",
                        devices=["disk0"])
        assert err is None, err
        qemu_io(g, "disk0", "write -P 0x55 0 1M")
        before = caps(g)
        g.vm.get_qmp_events(wait=False)     # forget the save's STOP
        lazy_load(g, "snap0")
        err = g.wait_job("load-snap0")
        assert err and "mapped-ram" in err, err
        assert g.status() == "running"
        assert not [e for e in g.vm.get_qmp_events(wait=False) if e["event"] == "STOP"]
        assert caps(g) == before
        qemu_io(g, "disk0", "read -P 0x55 0 1M")
        g.wait_progress()


def test_lazy_load_bad_input(workdir):
    """
    Bad input fails the job, or the command, with a clear error; the
    guest keeps running.
    """
    image = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=256, wl_mb=64, disk=image) as g:
        g.wait_ready()
        save(g, "snap0")
        for n, (args, message) in enumerate((({"tag": "nosuch"}, "does not exist"),
                                            ({"vmstate": "nosuch"}, "nosuch"),
                                            ({"devices": ["nosuch"]}, "nosuch"))):
            full = {"tag": "snap0", "vmstate": "disk0", "devices": ["disk0"], **args}
            err = g.run_job("snapshot-load", f"load{n}", mode="lazy", **full)
            assert err and message in err, (args, err)
            assert g.status() == "running"
        r = g.qmp("snapshot-load", job_id="load9", tag="snap0", vmstate="disk0",
                  devices=["disk0"], mode="sloth")
        assert "error" in r and "sloth" in r["error"]["desc"], r
        g.wait_progress()


def test_during_the_fill(workdir):
    """
    While RAM is loaded: the monitor answers, query-jobs and query-migrate
    report progress; a snapshot-save (either mode), a snapshot-delete of
    the snapshot being loaded and a resize of the vmstate node are refused
    with a clear error, while deleting another snapshot works.  Once the
    fill ends all of them work again.
    """
    image = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB, disk=image) as g:
        g.wait_ready()
        save(g, "snap0")
        save(g, "other")
        start_held_load(g)

        job = job_of(g, "load-snap0")
        assert job["status"] == "running"
        assert 0 < job["total-progress"]
        fill = g.cmd("query-migrate")["postcopy-file"]
        assert 0 < fill["pages-resident"] < fill["pages-total"], fill
        for mode in ("stopped", "instant"):
            err = g.run_job("snapshot-save", "save-" + mode, tag="new-" + mode,
                            vmstate="disk0", devices=["disk0"], mode=mode)
            assert err and "still loads RAM from snapshot 'snap0'" in err, err
        err = g.run_job("snapshot-delete", "del0", tag="snap0", devices=["disk0"])
        assert err and "still loads RAM" in err, err
        r = g.qmp("block_resize", node_name="disk0", size=8 << 30)
        assert "error" in r and "lazy snapshot-load" in r["error"]["desc"], r
        err = g.run_job("snapshot-delete", "del1", tag="other", devices=["disk0"])
        assert err is None, err
        # Disk I/O goes on
        qemu_io(g, "disk0", "write -P 0x77 4M 1M")
        qemu_io(g, "disk0", "read -P 0x77 4M 1M")
        assert g.status() == "running"
        assert job_of(g, "load-snap0")["status"] == "running"

        hold_fill(g, False)
        err = g.wait_job("load-snap0")
        assert err is None, err
        save(g, "after")
        g.cmd("block_resize", node_name="disk0", size=8 << 30)
        err = g.run_job("snapshot-delete", "del2", tag="snap0", devices=["disk0"])
        assert err is None, err
        assert_verified(g)
    code, out = img_check(image)
    assert code == 0, out


@pytest.mark.parametrize("second", ["lazy", "eager"])
def test_a_new_load_supersedes_the_fill(workdir, second):
    """
    A snapshot-load during a fill gives the fill up and loads its own
    snapshot: the first job fails saying so, and the guest ends up with
    the second snapshot, every page verified.
    """
    image = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB, disk=image) as g:
        g.wait_ready()
        qemu_io(g, "disk0", "write -P 0x11 0 1M")
        save(g, "snap0")
        g.wait_progress()
        qemu_io(g, "disk0", "write -P 0x22 0 1M")
        save(g, "snap1")
        if second == "eager":
            # Capabilities cannot change during the fill: the load sets them
            g.set_caps(mapped_ram=True)
        start_held_load(g)
        r = g.qmp("migrate-set-capabilities",
                  capabilities=[{"capability": "mapped-ram", "state": False}])
        assert "error" in r and "still loads RAM" in r["error"]["desc"], r
        if second == "lazy":
            lazy_load(g, "snap1")
        else:
            g.cmd("snapshot-load", job_id="load-snap1", tag="snap1", vmstate="disk0",
                  devices=["disk0"])
        err = g.wait_job("load-snap0")
        assert err and "Superseded" in err, err
        hold_fill(g, False)
        err = g.wait_job("load-snap1")
        assert err is None, err
        g.set_caps(mapped_ram=False)
        assert g.status() == "running"
        qemu_io(g, "disk0", "read -P 0x22 0 1M")
        assert_verified(g)


def test_cancel_gives_the_load_up(workdir):
    """
    job-cancel during the fill stops the guest and gives the load up: the
    job concludes cancelled, the guest stays stopped, the capabilities
    are the user's again, and a new load brings the guest back.
    """
    image = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB, disk=image) as g:
        g.wait_ready()
        save(g, "snap0")
        before = caps(g)
        start_held_load(g)
        g.cmd("job-cancel", id="load-snap0")
        err = g.wait_job("load-snap0")
        assert err and "cancel" in err.lower(), err
        assert g.status() == "restore-vm"
        assert caps(g) == before
        hold_fill(g, False)
        lazy_load(g, "snap0")
        err = g.wait_job("load-snap0")
        assert err is None, err
        assert g.status() == "running"
        assert_verified(g)


@pytest.mark.parametrize("then", ["resume", "cancel"])
def test_eio_during_the_fill(workdir, then):
    """
    Reads of the image fail with EIO during the fill: the load pauses, and
    so does the job; the guest never runs on a page that was not read;
    query-migrate names the node and the offset.  job-resume, once the
    storage works again, goes on and the guest verifies every page.
    job-cancel instead gives up as migrate_cancel does: the guest can be
    neither stopped nor run, so QEMU exits with an error.
    """
    backing = os.path.join(workdir, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", backing, "1G")
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(backing, mnt, "disk.qcow2", writable=True) as fs:
        with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB, disk=fs.path) as g:
            g.wait_ready()
            save(g, "snap0")
            start_held_load(g)
            fs.ops.error = (0, 1 << 40)
            hold_fill(g, False)
            deadline = time.monotonic() + 60
            while job_of(g, "load-snap0")["status"] != "paused":
                assert time.monotonic() < deadline, job_of(g, "load-snap0")
                time.sleep(0.1)
            info = g.cmd("query-migrate")
            assert info["status"] == "postcopy-paused", info
            desc = info.get("error-desc", "")
            assert "node 'disk0'" in desc and "at offset 0x" in desc, desc
            assert fs.ops.failed_reads > 0
            if then == "cancel":
                g.expect_exit(1)
                g.cmd("job-cancel", id="load-snap0")
                assert g.exited_within(60) == 1
                return
            fs.ops.error = None
            g.cmd("job-resume", id="load-snap0")
            err = g.wait_job("load-snap0")
            assert err is None, err
            assert g.status() == "running"
            assert_verified(g)


def test_lazy_load_refuses_another_machine(workdir):
    """
    A snapshot of another machine type is refused before anything
    changes; one of another RAM size is refused once its RAM index is
    read, as an eager load refuses it: the disks are reverted then and
    the guest stays stopped (see the docs), and a fitting snapshot loads
    afterwards.
    """
    image = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=256, wl_mb=64, disk=image) as g:
        g.wait_ready()
        save(g, "small")
    with Guest(workdir, name="q35", ram_mb=256, wl_mb=64, disk=image, machine="q35") as g:
        g.wait_ready()
        qemu_io(g, "disk0", "write -P 0x55 0 1M")
        lazy_load(g, "small")
        err = g.wait_job("load-small")
        assert err and "Machine type" in err, err
        assert g.status() == "running"
        qemu_io(g, "disk0", "read -P 0x55 0 1M")
    with Guest(workdir, name="big", ram_mb=RAM_MB, wl_mb=WL_MB, disk=image) as g:
        g.wait_ready()
        save(g, "big")
        lazy_load(g, "small")
        err = g.wait_job("load-small")
        # The RAM loader reports why on stderr only (it has no Error)
        assert err and "device 'ram'" in err, err
        assert "RAM block pc.ram: the file holds" in g.qemu_log()
        assert g.status() == "restore-vm"
        lazy_load(g, "big")
        err = g.wait_job("load-big")
        assert err is None, err
        assert g.status() == "running"
        assert_verified(g)


def test_three_ways_agree(workdir):
    """
    One snapshot (stopped, mapped-ram, as stock writes it) loaded three
    ways, each started paused and dumped host-side: lazily, eagerly, and
    eagerly by stock QEMU 10.2.2.  All three equal RAM at the snapshot.
    """
    image = os.path.join(workdir, "disk.qcow2")
    at_save = os.path.join(workdir, "ram-at-save")
    with Guest(workdir, ram_mb=256, wl_mb=128, disk=image) as g:
        g.wait_ready()
        g.wait_progress()
        g.cmd("stop")
        sums = {"save": g.dump_ram(at_save)}
        save(g, "snap0")
        g.cmd("cont")
        g.wait_progress()
        g.cmd("stop")
        lazy_load(g, "snap0")
        assert g.wait_job("load-snap0") is None
        sums["lazy"] = g.dump_ram(os.path.join(workdir, "ram-lazy"))
        g.set_caps(mapped_ram=True)
        err = g.run_job("snapshot-load", "eager", tag="snap0", vmstate="disk0",
                        devices=["disk0"])
        assert err is None, err
        sums["eager"] = g.dump_ram(os.path.join(workdir, "ram-eager"))
    with Guest(workdir, name="stock", ram_mb=256, wl_mb=128, disk=image,
               qemu=STOCK_QEMU, paused=True) as g:
        g.set_caps(mapped_ram=True)
        err = g.run_job("snapshot-load", "stock", tag="snap0", vmstate="disk0",
                        devices=["disk0"])
        assert err is None, err
        sums["stock"] = g.dump_ram(os.path.join(workdir, "ram-stock"))
    assert sums["lazy"] == sums["eager"] == sums["stock"] == sums["save"], sums


def test_twenty_reverts(workdir):
    """
    Twenty reverts in a row to two snapshots, every fourth one superseded
    during its (held) fill by the next: each load that completes gives the
    snapshot's disk and a guest that verifies every page.
    """
    image = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=256, wl_mb=64, disk=image) as g:
        g.wait_ready()
        for tag, byte in (("a", 0x11), ("b", 0x22)):
            qemu_io(g, "disk0", f"write -P {byte:#x} 0 1M")
            g.wait_progress()
            save(g, tag)
        pattern = {"a": 0x11, "b": 0x22}
        for i in range(20):
            tag = "ab"[i % 2]
            job = f"load{i}"
            if i % 4 == 1:
                start_held_load(g, tag, job)
                continue
            lazy_load(g, tag, job)
            if i % 4 == 2:
                err = g.wait_job(f"load{i - 1}")
                assert err and "Superseded" in err, err
                hold_fill(g, False)
            err = g.wait_job(job)
            assert err is None, f"revert {i}: {err}"
            qemu_io(g, "disk0", f"read -P {pattern[tag]:#x} 0 1M")
            assert_verified(g)
