"""
Postcopy from file, failure paths: a file that cannot be loaded is refused
before the guest starts, the file is left as it was, and bad QMP input is
refused without changing anything.
"""

import contextlib
import os
import subprocess
import threading

import pytest

from faultyfs import FaultyMount
from snaptest import (LAZY_CAPS, MIGRATION_END, SAVE_CAPS, Guest, GuestError,
                      QEMUMonitorProtocol, caps_arg, file_sha256, wait_until)

RAM_MB = 256
WL_MB = 128


@pytest.fixture(scope="module")
def snapfile(tmp_path_factory):
    """A background-snapshot mapped-ram file of a running guest."""
    workdir = str(tmp_path_factory.mktemp("snapfile", numbered=True))
    path = os.path.join(workdir, "snap.mig")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB) as src:
        src.wait_ready()
        src.wait_progress()
        src.migrate_to_file(path, **SAVE_CAPS["bg"])
    return path


def copy(src, dst):
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(1 << 20):
            fo.write(chunk)


def find_header(path, idstr=b"pc.ram"):
    """File offset of the MappedRamHeader of RAM block IDSTR."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    i = head.index(bytes([len(idstr)]) + idstr)
    return i + 1 + len(idstr) + 8          # idlen, idstr, be64 used_length


def refused_before_start(workdir, path, ram_mb=RAM_MB, expect=None, backing=None):
    """
    Load PATH lazily; assert it fails, the guest never ran and the file
    (or BACKING, if PATH is a view of it) is unchanged.  EXPECT must appear
    in the error: query-migrate's error-desc, or the detail QEMU reports on
    stderr (the RAM loader reports its errors there and fails with a
    generic error).
    """
    before = file_sha256(backing or path)
    with Guest(workdir, name="dst", ram_mb=ram_mb, wl_mb=WL_MB, incoming="defer") as dst:
        dst.set_caps(events=True, **LAZY_CAPS)
        dst.cmd("migrate-incoming", uri=f"file:{path}", exit_on_error=False)
        status, info = dst.wait_migration(timeout=120)
        assert status == "failed", info
        err = info.get("error-desc", "")
        assert err
        events = [e["event"] for e in dst.vm.get_qmp_events(wait=False)]
        assert "RESUME" not in events, events
        assert dst.status() != "running"
        assert "WL " not in dst.console(), "the guest ran"
    log = dst.vm.get_log() or ""
    if expect:
        assert expect in err or expect in log, f"{err}\n{log}"
    assert file_sha256(backing or path) == before, "the load changed the file"
    return err + log


def test_truncated_file(workdir, snapfile):
    path = os.path.join(workdir, "trunc.mig")
    copy(snapfile, path)
    size = os.path.getsize(path)
    os.truncate(path, size // 2)
    refused_before_start(workdir, path)


def test_truncated_index(workdir, snapfile):
    path = os.path.join(workdir, "trunc.mig")
    copy(snapfile, path)
    os.truncate(path, find_header(path) + 10)
    refused_before_start(workdir, path)


@pytest.mark.parametrize("field,offset,value,expect", [
    ("version", 0, b"\x00\x00\x00\x63", "version not supported"),
    ("page_size", 4, b"\x00" * 7 + b"\x02", "byte pages"),
    ("bitmap_offset", 12, b"\x7f" + b"\x00" * 7, "its bitmap is at 0x7f00000000000000"),
    ("pages_offset", 20, b"\x00\x00\x7f\x00\x00\x00\x00\x00", "truncated or corrupt"),
])
def test_corrupt_header(workdir, snapfile, field, offset, value, expect):
    path = os.path.join(workdir, f"corrupt-{field}.mig")
    copy(snapfile, path)
    with open(path, "r+b") as f:
        f.seek(find_header(path) + offset)
        f.write(value)
    refused_before_start(workdir, path, expect=expect)


def test_different_ram_size(workdir, snapfile):
    refused_before_start(workdir, snapfile, ram_mb=RAM_MB * 2,
                         expect="this machine has")


def test_different_machine_type(workdir, snapfile):
    """A file saved from a pc machine does not load into a q35 machine."""
    before = file_sha256(snapfile)
    with Guest(workdir, name="dst", ram_mb=RAM_MB, wl_mb=WL_MB, incoming="defer",
               machine="q35") as dst:
        dst.set_caps(**LAZY_CAPS)
        dst.cmd("migrate-incoming", uri=f"file:{snapfile}", exit_on_error=False)
        status, info = dst.wait_migration(timeout=120)
        assert status == "failed", info
        assert dst.status() != "running"
        assert "WL " not in dst.console()
    # The reason is the migration's error (it went to stderr only, before
    # patch "migration/savevm: say why the configuration section is refused")
    assert "Machine type received is 'pc-i440fx" in (info.get("error-desc") or ""), info
    assert file_sha256(snapfile) == before


def test_partial_file_from_killed_source(workdir):
    """The saving QEMU is killed in mid-save: the partial file is refused."""
    path = os.path.join(workdir, "partial.mig")
    with Guest(workdir, name="src", ram_mb=RAM_MB, wl_mb=WL_MB) as src:
        src.wait_ready()
        # throttle the save so that it is surely still running when killed
        src.cmd("migrate-set-parameters", max_bandwidth=16 << 20)
        src.set_caps(mapped_ram=True)
        src.cmd("migrate", uri=f"file:{path}")
        info = saving_some_ram(src)
        assert info["status"] == "active", info
        src.kill()
    refused_before_start(workdir, path)


def saving_some_ram(g, timeout=120):
    """
    Wait until G's save is active and has written 4 MiB of RAM (so that
    its file holds a part of RAM), or has ended; return query-migrate.
    """
    def written():
        info = g.cmd("query-migrate")
        if info.get("status") in MIGRATION_END or (
                info.get("status") == "active" and
                info.get("ram", {}).get("transferred", 0) >= 4 << 20):
            return info
        return None
    return wait_until(written, timeout, "the save to write 4 MiB of RAM")


@contextlib.contextmanager
def save_target(workdir, how):
    """
    Where a failing save writes: (path to migrate to, path of the file).
    enospc: a tmpfs too small for the file; eio: a FUSE view whose writes
    fail from 16 MiB on; cancel: a FUSE view whose writes are slow.
    """
    backing = os.path.join(workdir, "snap.mig")
    if how == "enospc":
        small = os.path.join(workdir, "small")
        os.mkdir(small)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={WL_MB // 2}m",
                        "qis-small", small], check=True)
        try:
            path = os.path.join(small, "snap.mig")
            yield path, path
        finally:
            subprocess.run(["umount", "-l", small], check=False)
        return
    open(backing, "wb").close()
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(backing, mnt, "snap.mig", writable=True) as fs:
        if how == "eio":
            fs.ops.error = (16 << 20, 1 << 62)
        else:
            fs.ops.delay = 0.01
        yield fs.path, backing
        if how == "eio":
            assert fs.ops.failed_writes > 0


@pytest.mark.parametrize("how", ["enospc", "eio", "cancel"])
def test_background_save_fails_guest_runs_on(workdir, how):
    """
    A background snapshot with mapped-ram that fails midway: the file
    system is full (a real ENOSPC from a small tmpfs), a write fails with
    EIO, or migrate_cancel.  The saving guest runs on with every page
    intact (write protection is gone, its workload verifies a full pass),
    a snapshot file saved before beside it is untouched, and the partial
    file is refused by a lazy load.
    """
    with save_target(workdir, how) as (path, backing):
        older = os.path.join(os.path.dirname(backing), "older.mig")
        with open(older, "wb") as f:
            f.write(os.urandom(1 << 20))
        older_sum = file_sha256(older)
        with Guest(workdir, name="src", ram_mb=RAM_MB, wl_mb=WL_MB) as src:
            src.wait_ready()
            src.wait_progress()
            src.set_caps(**SAVE_CAPS["bg"])
            src.cmd("migrate", uri=f"file:{path}")
            if how == "cancel":
                info = saving_some_ram(src)
                assert info["status"] == "active", info
                src.cmd("migrate_cancel")
            status, info = src.wait_migration(timeout=300)
            want = {"enospc": ("failed", "No space left on device"),
                    "eio": ("failed", "Input/output error"),
                    "cancel": ("cancelled", "")}[how]
            assert status == want[0], info
            assert want[1] in info.get("error-desc", ""), info
            assert src.status() == "running"
            assert src.wait_full_pass() == 0
            src.check_no_corruption()
        assert file_sha256(older) == older_sum
        refused_before_start(workdir, backing)


def test_missing_file(workdir):
    dst = Guest(workdir, name="dst", ram_mb=RAM_MB, wl_mb=WL_MB, incoming="defer")
    with dst:
        dst.set_caps(**LAZY_CAPS)
        r = dst.qmp("migrate-incoming", uri=f"file:{workdir}/nosuchfile",
                    exit_on_error=False)
        if "error" not in r:
            status, info = dst.wait_migration(timeout=60)
            assert status == "failed"
            msg = info.get("error-desc", "")
        else:
            msg = r["error"]["desc"]
        assert "nosuchfile" in msg, msg
        assert dst.status() != "running"


def test_non_seekable_uri(workdir):
    """mapped-ram needs a seekable file: a socket URI is refused."""
    dst = Guest(workdir, name="dst", ram_mb=RAM_MB, wl_mb=WL_MB, incoming="defer")
    with dst:
        dst.set_caps(**LAZY_CAPS)
        r = dst.qmp("migrate-incoming", uri="tcp:127.0.0.1:0")
        assert "error" in r, r
        assert dst.cmd("query-migrate").get("status") in (None, "none", "setup"), \
            dst.cmd("query-migrate")
        assert dst.status() != "running"


@pytest.mark.parametrize("extra", ["multifd", "postcopy-preempt"])
def test_refused_capability_combinations(workdir, extra):
    dst = Guest(workdir, name="dst", ram_mb=RAM_MB, wl_mb=WL_MB, incoming="defer")
    with dst:
        before = dst.cmd("query-migrate-capabilities")
        r = dst.qmp("migrate-set-capabilities",
                    capabilities=caps_arg({**LAZY_CAPS, extra: True}))
        assert "error" in r
        assert "does not support multifd or postcopy-preempt" in r["error"]["desc"]
        assert dst.cmd("query-migrate-capabilities") == before


def ram_index(path, idstr=b"pc.ram"):
    """(used_length, bitmap_offset, pages_offset, bitmap bytes) of a block."""
    hdr = find_header(path, idstr)
    with open(path, "rb") as f:
        f.seek(hdr - 8)
        used = int.from_bytes(f.read(8), "big")
        f.seek(hdr + 12)
        bitmap_offset = int.from_bytes(f.read(8), "big")
        pages_offset = int.from_bytes(f.read(8), "big")
        f.seek(bitmap_offset)
        bitmap = f.read((used // 4096 + 63) // 64 * 8)
    return used, bitmap_offset, pages_offset, bitmap


def full_mib(bitmap, start=0):
    """
    Offset in the block of the first 1 MiB at or after START whose pages
    are all in the file.
    """
    for mib in range(start >> 20, len(bitmap) // 32):
        if bitmap[mib * 32:(mib + 1) * 32] == b"\xff" * 32:
            return mib << 20
    raise AssertionError("no fully written MiB in the file")


def start_lazy(workdir, path, exit_on_error=False, **guest_args):
    """A new QEMU loading PATH lazily; returns it once migrate-incoming ran."""
    dst = Guest(workdir, name="dst", ram_mb=RAM_MB, wl_mb=WL_MB, incoming="defer",
                **guest_args)
    with dst.launch().ended_on_error():
        dst.set_caps(events=True, **LAZY_CAPS)
        dst.cmd("migrate-incoming", uri=f"file:{path}", exit_on_error=exit_on_error)
    return dst


@pytest.mark.parametrize("kind", ["eio", "short-read"])
def test_read_error_pauses_then_recovers(workdir, snapfile, kind):
    """
    Reads of one MiB of pc.ram fail with EIO during the fill: the load
    pauses with an error that names the file and offset, the guest never
    runs on a wrong page, a migrate-recover while the file still fails
    pauses again, and once the file reads again migrate-recover completes
    the load and the workload verifies every page.
    """
    _, _, pages_offset, bitmap = ram_index(snapfile)
    bad = pages_offset + full_mib(bitmap)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(snapfile, mnt, "snap.mig") as fs:
        fs.ops.error = (bad, bad + (1 << 20))
        fs.ops.short = kind == "short-read"
        with start_lazy(workdir, fs.path) as dst:
            _, info = dst.wait_migration(until=("postcopy-paused", "completed", "failed"),
                                         timeout=120)
            assert info["status"] == "postcopy-paused", info
            err = info.get("error-desc", "")
            assert fs.path in err and "offset 0x" in err, err
            assert fs.ops.failed_reads > 0
            statuses = migration_statuses(dst)
            assert "postcopy-paused" in statuses, statuses
            resident = info["postcopy-file"]["pages-resident"]
            assert resident < info["postcopy-file"]["pages-total"]
            # The load stays paused: no MIGRATION event for 2 s.  That
            # something does not happen can only be shown over a window.
            ev = dst.event_within("MIGRATION", 2)
            assert ev is None, f"the paused load changed state by itself: {ev}"
            assert dst.cmd("query-migrate")["status"] == "postcopy-paused"
            dst.check_no_corruption()

            # the file still fails: the load pauses again
            dst.cmd_oob("migrate-recover", uri=f"file:{fs.path}")
            _, info = dst.wait_migration(until=("postcopy-paused", "completed", "failed"),
                                         timeout=120)
            assert info["status"] == "postcopy-paused", info
            dst.check_no_corruption()

            # the file reads again: the load completes
            fs.ops.error = None
            dst.cmd_oob("migrate-recover", uri=f"file:{fs.path}")
            _, info = dst.wait_migration(until=("completed", "failed"), timeout=600)
            assert info["status"] == "completed", info
            assert info["postcopy-file"]["pages-resident"] == \
                info["postcopy-file"]["pages-total"]
            assert "error-desc" not in info, info
            assert dst.wait_full_pass() == 0
            dst.check_no_corruption()


def start_paused_on_eio(workdir, fs, snapfile, exit_on_error, bad=None,
                        **guest_args):
    """
    Start a lazy load of FS.path whose reads fail over the byte range BAD
    (default: one MiB of pc.ram), and wait until it pauses.
    """
    if bad is None:
        _, _, pages_offset, bitmap = ram_index(snapfile)
        start = pages_offset + full_mib(bitmap)
        bad = (start, start + (1 << 20))
    fs.ops.error = bad
    dst = start_lazy(workdir, fs.path, exit_on_error, **guest_args)
    with dst.ended_on_error():
        _, info = dst.wait_migration(until=("postcopy-paused", "completed", "failed"),
                                     timeout=120)
        assert info["status"] == "postcopy-paused", info
    return dst, info


def migration_statuses(g):
    """Statuses of the MIGRATION events that came since the last look."""
    return [e["data"]["status"] for e in g.vm.get_qmp_events(wait=False)
            if e["event"] == "MIGRATION"]


@pytest.mark.parametrize("exit_on_error", [False, True])
def test_cancel_gives_up_when_file_never_recovers(workdir, snapfile, exit_on_error):
    """
    The file stays unreadable: migrate-recover pauses again, and
    migrate_cancel gives up.  The status becomes failed with the read
    error, a MIGRATION event says so, the guest never runs on a wrong page,
    and the file is unchanged.  QEMU then exits with an error at once, or,
    with exit-on-error false, stays for inspection and exits with an error
    when asked to quit.
    """
    before = file_sha256(snapfile)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(snapfile, mnt, "snap.mig") as fs:
        dst, info = start_paused_on_eio(workdir, fs, snapfile, exit_on_error)
        with dst:
            err = info["error-desc"]
            assert fs.path in err and "offset 0x" in err, err
            dst.cmd_oob("migrate-recover", uri=f"file:{fs.path}")
            _, info = dst.wait_migration(until=("postcopy-paused", "completed", "failed"),
                                         timeout=120)
            assert info["status"] == "postcopy-paused", info

            assert dst.cmd("migrate_cancel") == {}
            if exit_on_error:
                dst.wait_exit(1, timeout=60)
                assert dst.vm.exitcode() == 1
            else:
                info = dst.cmd("query-migrate")
                assert info["status"] == "failed", info
                assert fs.path in info["error-desc"], info
                assert "failed" in migration_statuses(dst)
                # QEMU stays for inspection: it does not exit for 2 s, and
                # the status is still failed then (only a window of time
                # can show that something does not happen)
                code = dst.exited_within(2)
                assert code is None, f"QEMU exited by itself with {code}"
                assert dst.cmd("query-migrate")["status"] == "failed"
                assert info["postcopy-file"]["pages-resident"] < \
                    info["postcopy-file"]["pages-total"]
                # a failed load cannot be resumed
                r = dst.qmp("migrate-recover", uri=f"file:{snapfile}")
                assert "error" in r, r
                dst.check_no_corruption()
                # asked to quit, it exits with an error
                dst.expect_exit(1)
                dst.shutdown()
                assert dst.vm.exitcode() == 1
            dst.check_no_corruption()
            log = dst.vm.get_log() or ""
            assert "host pages not loaded" in log and fs.path in log, log
    assert file_sha256(snapfile) == before


def test_read_error_while_device_state_loads(workdir, snapfile):
    """
    Devices read guest RAM while their state is loaded (the vapic reads
    its option ROM).  If that page cannot be read, the load fails before
    the guest starts and names the file and offset, instead of stalling
    with the main thread waiting for the page.
    """
    used, _, pages_offset, _ = ram_index(snapfile)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(snapfile, mnt, "snap.mig") as fs:
        fs.ops.error = (pages_offset, pages_offset + used)
        err = refused_before_start(workdir, fs.path, backing=snapfile)
        assert fs.path in err and "offset 0x" in err, err
        assert fs.ops.failed_reads > 0


def test_cancel_and_pause_refused_while_filling(workdir, snapfile):
    """
    migrate_cancel and migrate-pause while the load fills normally are
    refused (the guest runs on it; a file has no stream to cut) and change
    nothing: the load then completes and the workload verifies every page.
    """
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(snapfile, mnt, "snap.mig") as fs:
        fs.ops.delay = 0.05             # keep the load filling for a while
        with start_lazy(workdir, fs.path) as dst:
            _, info = dst.wait_migration(until=("postcopy-active", "completed", "failed"),
                                         timeout=120)
            assert info["status"] == "postcopy-active", info
            r = dst.qmp("migrate_cancel")
            assert "only while it is paused" in r["error"]["desc"], r
            assert dst.cmd("query-migrate")["status"] == "postcopy-active"
            r = dst.qmp("migrate-pause")
            assert "cannot pause a postcopy from a file" in r["error"]["desc"], r
            with pytest.raises(GuestError, match="cannot pause a postcopy from a file"):
                dst.cmd_oob("migrate-pause")
            assert dst.cmd("query-migrate")["status"] == "postcopy-active"
            fs.ops.delay = 0
            _, info = dst.wait_migration(until=("completed", "failed"), timeout=600)
            assert info["status"] == "completed", info
            assert dst.wait_full_pass() == 0
            dst.check_no_corruption()


class InBandCommand(threading.Thread):
    """
    Run one in-band command on a second QMP monitor, in a thread of its
    own, so that the test goes on while the command waits for the main
    loop.  .result is its return value, .error what it raised.
    """

    def __init__(self, sock, name, **args):
        super().__init__(daemon=True)
        self.sock = sock
        self.name = name
        self.args = args
        self.result = None
        self.error = None

    def run(self):
        try:
            mon = QEMUMonitorProtocol(self.sock)
            mon.connect()
            try:
                self.result = mon.cmd(self.name, **self.args)
            finally:
                mon.close()
        except Exception as e:  # pylint: disable=broad-except
            self.error = e


def block_main_loop_on_missing_page(workdir, fs, snapfile, exit_on_error):
    """
    Start a lazy load, paused (-S) so that the guest leaves RAM as the
    file has it, whose reads of one MiB of pc.ram fail, and wait until it
    pauses.  Then have the main loop wait for a missing page while it
    holds the BQL, as a TCG vCPU does when it faults during interrupt
    delivery: pmemsave of that MiB, in-band on a second monitor.  Returns
    (dst, the pmemsave thread, guest-physical address, dump path).
    """
    _, _, pages_offset, bitmap = ram_index(snapfile)
    # above the first MiB, which has the VGA window and option ROMs
    gpa = full_mib(bitmap, start=16 << 20)
    sock = os.path.join(workdir, "mon2.sock")
    dst, _ = start_paused_on_eio(
        workdir, fs, snapfile, exit_on_error,
        bad=(pages_offset + gpa, pages_offset + gpa + (1 << 20)), paused=True,
        extra_args=["-chardev", f"socket,id=mon2,path={sock},server=on,wait=off",
                    "-mon", "chardev=mon2,mode=control"])
    dump = os.path.join(workdir, "mib.dump")
    with dst.ended_on_error():
        cmd = InBandCommand(sock, "pmemsave", val=gpa, size=1 << 20, filename=dump)
        cmd.start()
        # pmemsave creates its dump file before it reads guest RAM: once
        # the file is there, QEMU got the command and runs it
        wait_until(lambda: os.path.exists(dump) or not cmd.is_alive(), 60,
                   "pmemsave to create its dump file")
        # it must now stay blocked on the missing page: that it does not
        # return can only be shown over a window of time
        cmd.join(timeout=3)
        assert cmd.is_alive(), f"pmemsave of missing pages returned: {cmd.result} {cmd.error}"
    return dst, cmd, gpa, dump


def test_oob_cancel_gives_up_with_main_loop_blocked(workdir, snapfile):
    """
    The main loop waits for a page the file cannot give, holding the BQL,
    so nothing in-band runs any more.  migrate_cancel out-of-band still
    gives up: it answers, and QEMU exits with an error that says how much
    was not loaded; the file is unchanged.
    """
    before = file_sha256(snapfile)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(snapfile, mnt, "snap.mig") as fs:
        dst, cmd, _, _ = block_main_loop_on_missing_page(workdir, fs, snapfile,
                                                         exit_on_error=True)
        with dst:
            assert dst.cmd_oob("migrate_cancel") == {}
            dst.wait_exit(1, timeout=60)
            assert dst.vm.exitcode() == 1
            cmd.join(timeout=30)
            assert cmd.result is None and cmd.error is not None, \
                "pmemsave of pages never loaded succeeded"
        log = dst.vm.get_log() or ""
        assert "host pages not loaded" in log and fs.path in log, log
        assert "WL " not in dst.console(), "the guest ran"
    assert file_sha256(snapfile) == before


def test_oob_recover_with_main_loop_blocked(workdir, snapfile):
    """
    As above, but the file reads again: migrate-recover out-of-band
    resumes the load, the main loop's read of the missing MiB completes
    with exactly the bytes the file holds there, and the guest, once
    started, verifies every page.
    """
    _, _, pages_offset, _ = ram_index(snapfile)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(snapfile, mnt, "snap.mig") as fs:
        dst, cmd, gpa, dump = block_main_loop_on_missing_page(
            workdir, fs, snapfile, exit_on_error=False)
        with dst:
            fs.ops.error = None
            assert dst.cmd_oob("migrate-recover", uri=f"file:{fs.path}") == {}
            cmd.join(timeout=120)
            assert not cmd.is_alive() and cmd.error is None, cmd.error
            assert cmd.result == {}
            with open(snapfile, "rb") as f:
                f.seek(pages_offset + gpa)
                want = f.read(1 << 20)
            with open(dump, "rb") as f:
                assert f.read() == want, "the MiB read after recovery differs from the file"
            _, info = dst.wait_migration(until=("completed", "failed"), timeout=600)
            assert info["status"] == "completed", info
            dst.cmd("cont")
            assert dst.wait_full_pass() == 0
            dst.check_no_corruption()


def test_oob_cancel_refused_for_other_migrations(workdir):
    """
    Out-of-band, migrate_cancel only gives up a postcopy from file: any
    other cancel needs the BQL, so it is refused with an error that says
    to send it in-band, and the migration goes on.
    """
    path = os.path.join(workdir, "slow.mig")
    with Guest(workdir, name="src", ram_mb=RAM_MB, wl_mb=WL_MB) as src:
        src.wait_ready()
        src.cmd("migrate-set-parameters", max_bandwidth=16 << 20)
        src.cmd("migrate", uri=f"file:{path}")
        src.wait_migration(until=("active",), timeout=120)
        with pytest.raises(GuestError, match="in-band"):
            src.cmd_oob("migrate_cancel")
        assert src.cmd("query-migrate")["status"] == "active"
        src.cmd("migrate_cancel")
        status, _ = src.wait_migration(timeout=60)
        assert status == "cancelled"
