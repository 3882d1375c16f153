"""
Instant snapshot-save (snapshot-save with mode "instant"): the snapshot is
the guest's state at the moment of the request, the guest runs while RAM is
written, and the snapshot exists only once all of it is written.

Races are widened deterministically: the image sits under a throttle node
whose write limit holds the background save as long as a test needs, and
is lifted to let it finish.  I/O errors come from a FUSE file system
(faultyfs.py) and ENOSPC from a small tmpfs.
"""

import contextlib
import os
import subprocess
import time

import pytest

from faultyfs import FaultyMount
from snaptest import (Guest, GuestError, assert_verified, chain_args, img_check,
                      job_of, qemu_img, qemu_io, set_hold, snapshots_in, wait_until)

RAM_MB = int(os.environ.get("QIS_TEST_RAM_MB", "512"))
WL_MB = RAM_MB * 3 // 4 - 64
# Small enough that a save through a slow throttle stays short
SMALL_RAM_MB = 256
SMALL_WL_MB = 128

def instant_save(g, job_id, tag, **extra):
    g.cmd("snapshot-save", job_id=job_id, tag=tag, vmstate="disk0",
          devices=["disk0"], mode="instant", **extra)


def wait_captured(g, job_id, timeout=60.0):
    ev = g.vm.event_wait("SNAPSHOT_CAPTURED", timeout=timeout,
                         match={"data": {"job-id": job_id}})
    assert ev is not None, "no SNAPSHOT_CAPTURED"
    return ev


def start_held_save(g):
    """
    Once the guest is ready: an instant snapshot "old" to keep, then an
    instant save "save0" of "snap0" that the throttle holds after its
    capture, until set_hold(g, False).
    """
    g.wait_ready()
    instant_save(g, "old", "old")
    assert g.wait_job("old") is None
    set_hold(g, True)
    instant_save(g, "save0", "snap0")
    wait_captured(g, "save0")


def load(g, tag, mode=None):
    """snapshot-load TAG (eager: needs the mapped-ram capability)."""
    g.set_caps(mapped_ram=True)
    args = {"mode": mode} if mode else {}
    err = g.run_job("snapshot-load", "load-" + tag, tag=tag, vmstate="disk0",
                    devices=["disk0"], **args)
    g.set_caps(mapped_ram=False)
    return err


def test_instant_save_is_the_moment_of_the_request(workdir):
    """
    RAM and disk after loading an instant snapshot equal RAM and disk at
    the moment of the request, with the guest rewriting its RAM and the
    disk being written throughout the background save.  The moment is
    pinned by stopping the guest for a host-side RAM dump and requesting
    the snapshot then; the guest continues before RAM is written.
    """
    image = os.path.join(workdir, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", image, "1G")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB,
               extra_args=chain_args(image, hold=True)) as g:
        g.wait_ready()
        g.wait_progress()
        qemu_io(g, "disk0", "write -P 0xaa 0 1M")

        g.cmd("stop")
        at_request = os.path.join(workdir, "ram-at-request")
        sum_request = g.dump_ram(at_request)
        instant_save(g, "save0", "snap0")
        wait_captured(g, "save0")
        assert g.status() == "paused", "the guest was paused and must stay so"
        g.cmd("cont")

        # The disk and RAM change while the snapshot's RAM is written
        qemu_io(g, "disk0", "write -P 0x55 0 1M")
        qemu_io(g, "disk0", "write -P 0x66 2M 1M")
        g.wait_progress()
        assert job_of(g, "save0")["status"] == "running"
        set_hold(g, False)
        err = g.wait_job("save0")
        assert err is None, err
        assert "snap0" in snapshots_in(image)
        assert g.status() == "running"

        g.wait_progress()
        g.cmd("stop")
        assert g.dump_ram(os.path.join(workdir, "ram-later")) != sum_request
        err = load(g, "snap0")
        assert err is None, err
        g.assert_ram_is(os.path.join(workdir, "ram-after-load"), sum_request, at_request)
        qemu_io(g, "disk0", "read -P 0xaa 0 1M")
        qemu_io(g, "disk0", "read -P 0 2M 1M")
        g.cmd("cont")
        assert_verified(g)
    code, out = img_check(image)
    assert code == 0, out


def test_instant_save_of_a_running_guest(workdir):
    """
    An instant snapshot of a guest that runs throughout; after a load the
    workload finds every page consistent, twice in a row, and the image is
    clean.
    """
    image = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB, disk=image) as g:
        g.wait_ready()
        g.wait_progress()
        instant_save(g, "save0", "snap0")
        wait_captured(g, "save0")
        assert g.status() == "running"
        err = g.wait_job("save0")
        assert err is None, err
        for _ in range(2):
            g.wait_progress()
            err = load(g, "snap0")
            assert err is None, err
            assert g.status() == "running"
            assert_verified(g)
    code, out = img_check(image)
    assert code == 0, out


def test_snapshot_absent_until_written(workdir):
    """
    While its RAM is being written, the snapshot is nowhere: not in
    qemu-img snapshot -l, not loadable by snapshot-load or loadvm.  The
    monitor answers, and what would touch the nodes is refused.
    """
    image = os.path.join(workdir, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", image, "1G")
    with Guest(workdir, ram_mb=SMALL_RAM_MB, wl_mb=SMALL_WL_MB,
               extra_args=chain_args(image)) as g:
        start_held_save(g)

        t = time.monotonic()
        assert g.status() == "running"
        job = job_of(g, "save0")
        assert job["status"] == "running"
        assert 0 < job["total-progress"]
        assert job["current-progress"] < job["total-progress"]
        assert time.monotonic() - t < 5

        assert "snap0" not in snapshots_in(image)
        r = g.qmp("snapshot-load", job_id="l0", tag="snap0", vmstate="disk0",
                  devices=["disk0"])
        assert "error" not in r
        err = g.wait_job("l0")
        assert err and "There's a migration process in progress" in err, err
        out = g.cmd("human-monitor-command", command_line="loadvm snap0")
        assert "migration process in progress" in out, out

        refused = {
            "second save": ("snapshot-save", {"job_id": "s2", "tag": "x", "vmstate": "disk0",
                                              "devices": ["disk0"], "mode": "instant"}),
            "stopped save": ("snapshot-save", {"job_id": "s3", "tag": "y", "vmstate": "disk0",
                                               "devices": ["disk0"]}),
            "delete": ("snapshot-delete", {"job_id": "d0", "tag": "old",
                                           "devices": ["disk0"]}),
        }
        for what, (cmd, args) in refused.items():
            r = g.qmp(cmd, **args)
            assert "error" not in r, (what, r)
            err = g.wait_job(args["job_id"])
            assert err, f"{what} was not refused"
        for cmd, args in [
                ("block_resize", {"node-name": "disk0", "size": 2 << 30}),
                ("blockdev-snapshot-internal-sync", {"device": "disk0", "name": "z"}),
                ("migrate", {"uri": f"file:{workdir}/m"}),
                ("migrate-set-capabilities",
                 {"capabilities": [{"capability": "mapped-ram", "state": False}]})]:
            r = g.vm.qmp(cmd, args_dict=args)
            assert "error" in r, (cmd, r)
        assert g.status() == "running"
        assert "snap0" not in snapshots_in(image)

        set_hold(g, False)
        assert g.wait_job("save0") is None
        assert {"old", "snap0"} <= set(snapshots_in(image))
        # the capabilities the job set are restored
        caps = {c["capability"]: c["state"] for c in g.cmd("query-migrate-capabilities")}
        assert not caps["background-snapshot"] and not caps["mapped-ram"]
    code, out = img_check(image)
    assert code == 0, out


def test_cancel_midway(workdir):
    """
    job-cancel in the middle of the RAM write: no snapshot is left, the
    guest keeps running, the image is clean, and an earlier snapshot still
    loads.
    """
    image = os.path.join(workdir, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", image, "1G")
    with Guest(workdir, ram_mb=SMALL_RAM_MB, wl_mb=SMALL_WL_MB,
               extra_args=chain_args(image)) as g:
        start_held_save(g)
        g.cmd("job-cancel", id="save0")
        err = g.wait_job("save0")
        assert err is not None, "a cancelled job must not succeed"
        assert g.status() == "running"
        assert snapshots_in(image) == ["old"]
        set_hold(g, False)
        assert load(g, "old") is None
        assert_verified(g)
        # and a new instant snapshot works after the cancel
        instant_save(g, "save1", "snap1")
        assert g.wait_job("save1") is None
    code, out = img_check(image)
    assert code == 0, out
    assert set(snapshots_in(image)) == {"old", "snap1"}


def test_killed_midway(workdir):
    """
    QEMU killed in the middle of the RAM write: the image has no new
    snapshot and at most leaked clusters, which qemu-img check -r leaks
    repairs; an earlier snapshot still loads in a new QEMU.
    """
    image = os.path.join(workdir, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", image, "1G")
    g = Guest(workdir, ram_mb=SMALL_RAM_MB, wl_mb=SMALL_WL_MB,
              extra_args=chain_args(image))
    with g:
        start_held_save(g)
        wait_until(lambda: job_of(g, "save0")["current-progress"] > 0, 30,
                   "RAM being written")
        g.kill()
    code, out = img_check(image)
    assert code in (0, 3), f"the image is corrupt:\n{out}"
    assert snapshots_in(image) == ["old"]
    code, out = img_check(image, "-r", "leaks")
    assert code == 0, out
    code, out = img_check(image)
    assert code == 0, out

    with Guest(workdir, name="again", ram_mb=SMALL_RAM_MB, wl_mb=SMALL_WL_MB,
               disk=image) as g2:
        g2.wait_ready()
        assert load(g2, "old") is None
        assert_verified(g2)


def test_quit_midway(workdir):
    """
    quit in the middle of the RAM write: QEMU exits at once with code 0
    (cancelling the job does not wait for the migration thread, which
    needs the BQL that QEMU's exit holds), and the image has no new
    snapshot and no corruption.
    """
    image = os.path.join(workdir, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", image, "1G")
    with Guest(workdir, ram_mb=SMALL_RAM_MB, wl_mb=SMALL_WL_MB,
               extra_args=chain_args(image)) as g:
        start_held_save(g)
    code, out = img_check(image)
    assert code in (0, 3), f"the image is corrupt:\n{out}"
    assert snapshots_in(image) == ["old"]


@pytest.fixture
def small_fs(workdir):
    """A 300 MiB tmpfs: room for one snapshot of the small guest, not two."""
    path = os.path.join(workdir, "small")
    os.mkdir(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def test_enospc(workdir, small_fs):
    """
    The image's file system fills up during the RAM write: the job fails
    with the error, the guest keeps running, no new snapshot appears, and
    the earlier one still loads.
    """
    image = os.path.join(small_fs, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", image, "1G")
    with Guest(workdir, ram_mb=SMALL_RAM_MB, wl_mb=SMALL_WL_MB, disk=image) as g:
        g.wait_ready()
        instant_save(g, "old", "old")
        assert g.wait_job("old") is None
        for i in range(3):
            instant_save(g, f"save{i}", f"snap{i}")
            err = g.wait_job(f"save{i}")
            if err:
                break
        assert err and "No space left on device" in err, err
        assert g.status() == "running"
        assert f"snap{i}" not in snapshots_in(image)
        assert "old" in snapshots_in(image)
        assert load(g, "old") is None
        assert_verified(g)
    code, out = img_check(image)
    assert code in (0, 3), f"the image is corrupt:\n{out}"


def test_eio_on_the_vmstate_node(workdir):
    """
    Writes to the image fail with EIO once the moment is captured: the job
    fails naming the error, the guest keeps running, no new snapshot
    appears, and after the errors stop an earlier one still loads.
    """
    backing = os.path.join(workdir, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", backing, "1G")
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(backing, mnt, "disk.qcow2", writable=True) as fs:
        with Guest(workdir, ram_mb=SMALL_RAM_MB, wl_mb=SMALL_WL_MB,
                   extra_args=chain_args(fs.path)) as g:
            start_held_save(g)
            fs.ops.error = (0, 1 << 40)
            set_hold(g, False)
            err = g.wait_job("save0")
            assert err and "Input/output error" in err, err
            assert g.status() == "running"
            assert fs.ops.failed_writes > 0
            fs.ops.error = None
            assert "snap0" not in snapshots_in(fs.path)
            assert load(g, "old") is None
            assert_verified(g)
    code, out = img_check(backing)
    assert code in (0, 3), f"the image is corrupt:\n{out}"
    assert snapshots_in(backing) == ["old"]


@pytest.mark.parametrize("args,caps,message", [
    ({"vmstate": "nosuchnode"}, {}, "nosuchnode"),
    ({"devices": ["disk0", "nosuchnode"]}, {}, "nosuchnode"),
    ({"tag": "old"}, {}, "already exists"),
    ({"tag": ""}, {}, "needs a tag"),
    ({}, {"postcopy_ram": True}, "background-snapshot"),
    ({}, {"multifd": True}, "background-snapshot"),
    ({"vmstate": "raw0", "devices": ["disk0", "raw0"]}, {}, "raw0"),
])
def test_bad_request(workdir, args, caps, message):
    """
    A bad request fails with an error that names the problem, before
    anything changes: the guest keeps running, the capabilities are as
    the user set them and no snapshot appears.
    """
    image = os.path.join(workdir, "disk.qcow2")
    raw = os.path.join(workdir, "disk.raw")
    qemu_img("create", "-q", "-f", "raw", raw, "64M")
    extra = ["-blockdev", f"driver=file,filename={raw},node-name=rawfile",
             "-blockdev", "driver=raw,file=rawfile,node-name=raw0"]
    with Guest(workdir, ram_mb=SMALL_RAM_MB, wl_mb=SMALL_WL_MB, disk=image,
               extra_args=extra) as g:
        g.wait_ready()
        instant_save(g, "old", "old")
        assert g.wait_job("old") is None
        if caps:
            g.set_caps(**caps)
        before = g.cmd("query-migrate-capabilities")
        req = {"job_id": "bad", "tag": "new", "vmstate": "disk0", "devices": ["disk0"],
               "mode": "instant"}
        req.update(args)
        r = g.qmp("snapshot-save", **req)
        err = r["error"]["desc"] if "error" in r else g.wait_job("bad")
        assert err and message in err, err
        assert g.status() == "running"
        assert g.cmd("query-migrate-capabilities") == before
        assert snapshots_in(image) == ["old"]
        with contextlib.suppress(GuestError):
            g.wait_progress()
