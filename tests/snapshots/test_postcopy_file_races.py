"""
Postcopy from file, races around pause, recover, cancel and completion,
each widened deterministically (issue 9, A and C): gdb holds one QEMU
thread at the racy point while the others run on (gdbmi.py), and the
FUSE file (faultyfs.py) fails or blocks chosen reads, also by the name of
the thread that reads.  The destinations start paused (-S), so RAM after
the load must equal the source's RAM byte for byte.
"""

import os
import threading

import pytest

from faultyfs import FaultyMount
from gdbmi import GdbMI
from snaptest import LAZY_CAPS, Guest, QEMUMonitorProtocol, file_sha256, wait_until

RAM_MB = 256
WL_MB = 128
MIB = 1 << 20
CHUNK = MIB                  # a prefetch thread reads the file 1 MiB at a time
NTHREADS = 2                 # prefetch threads (postcopy-file-threads default)


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    """A mapped-ram file of a stopped guest, and the sha256 of its RAM."""
    workdir = str(tmp_path_factory.mktemp("racesnap", numbered=True))
    path = os.path.join(workdir, "snap.mig")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB) as src:
        src.wait_ready()
        src.wait_progress()
        src.cmd("stop")
        ram = src.dump_ram(os.path.join(workdir, "src.ram"))
        src.migrate_to_file(path, mapped_ram=True)
    os.unlink(os.path.join(workdir, "src.ram"))
    return path, ram


def pc_ram_index(path):
    """(pages_offset, bitmap) of RAM block pc.ram in a mapped-ram file."""
    with open(path, "rb") as f:
        head = f.read(MIB)
    idstr = b"pc.ram"
    hdr = head.index(bytes([len(idstr)]) + idstr) + 1 + len(idstr) + 8
    used = int.from_bytes(head[hdr - 8:hdr], "big")
    bitmap_offset = int.from_bytes(head[hdr + 12:hdr + 20], "big")
    pages_offset = int.from_bytes(head[hdr + 20:hdr + 28], "big")
    with open(path, "rb") as f:
        f.seek(bitmap_offset)
        bitmap = f.read((used // 4096 + 63) // 64 * 8)
    return pages_offset, bitmap


def full_chunks(bitmap, thread, start=8 * MIB):
    """
    Offsets in pc.ram, in order, of the chunks at or after START that
    prefetch thread THREAD reads and whose pages are all in the file.
    Below 8 MiB lie the option ROMs, which devices read while their state
    loads.
    """
    found = [c * CHUNK for c in range(start // CHUNK, len(bitmap) // 32)
             if c % NTHREADS == thread and bitmap[c * 32:(c + 1) * 32] == b"\xff" * 32]
    assert found, "no fully written chunk in the file"
    return found


def start_lazy(workdir, path, gdb=False):
    """
    A paused destination loading PATH lazily, with a second QMP monitor at
    dst.sock for commands that wait for the main loop in a thread of their
    own (the first one is not thread-safe), and gdb attached as dst.gdb if
    GDB.
    """
    sock = os.path.join(workdir, "mon2.sock")
    dst = Guest(workdir, name="dst", ram_mb=RAM_MB, wl_mb=WL_MB, incoming="defer",
                paused=True,
                # thread names, for gdb and the FUSE file
                extra_args=["-name", "dst,debug-threads=on",
                            "-chardev", f"socket,id=mon2,path={sock},server=on,wait=off",
                            "-mon", "chardev=mon2,mode=control"])
    dst.sock = sock
    dst.launch()
    # gdb must attach before a thread waits in a FUSE read, which would
    # never stop for it
    dst.gdb = GdbMI(dst.vm.get_pid(), log=os.path.join(workdir, "gdb.log")) if gdb else None
    dst.set_caps(events=True, **LAZY_CAPS)
    dst.cmd("migrate-incoming", uri=f"file:{path}", exit_on_error=False)
    return dst


def in_thread(fn):
    """Run FN in a thread; returns (done event, result dict)."""
    done = threading.Event()
    result = {}

    def run():
        try:
            result["ok"] = fn()
        except Exception as e:  # pylint: disable=broad-except
            result["error"] = e
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, result


def on_second_monitor(dst, name, **args):
    """Run command NAME on dst's second monitor in a thread; (done, result)."""
    def run():
        mon = QEMUMonitorProtocol(dst.sock)
        mon.connect()
        try:
            return mon.cmd(name, **args)
        finally:
            mon.close()
    return in_thread(run)


def migration_event(dst, status, timeout=300):
    # The QMP client waits for ever on an int timeout; only a float counts
    return dst.vm.event_wait("MIGRATION", timeout=float(timeout),
                             match={"data": {"status": status}})


def test_recover_while_the_fault_thread_fails(workdir, snap):
    """
    A: a read in the fault thread fails, it publishes postcopy-paused, and
    migrate-recover lands before the fault thread decided to wait for it.
    gdb holds the fault thread right after the status changed.  The recover
    must still bring the fault thread back: the page it serves (read by
    pmemsave on the main thread) arrives, the load completes, QEMU's
    cleanup does not hang joining it, and RAM is the source's.
    """
    path, src_ram = snap
    pages_offset, bitmap = pc_ram_index(path)
    # A chunk prefetch thread 0 reads: reads of it by the fault thread fail,
    # by a prefetch thread wait, so that only the fault thread serves it.
    off = full_chunks(bitmap, 0)[0]
    rng = (pages_offset + off, pages_offset + off + CHUNK)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(path, mnt, "snap.mig") as fs:
        fs.ops.error = rng
        fs.ops.error_threads = {"mig/dst/fault"}
        fs.ops.block = rng
        dst = start_lazy(workdir, fs.path, gdb=True)
        gdb = dst.gdb
        try:
            wait_until(lambda: fs.ops.blocked > 0, 120, "a prefetch thread to reach the chunk")
            fault = gdb.thread_id("mig/dst/fault")
            gdb.break_at("migrate_set_state", fault,
                         "new_state == MIGRATION_STATUS_POSTCOPY_PAUSED")
            dump = os.path.join(workdir, "page")
            saved, saved_r = on_second_monitor(dst, "pmemsave", val=off + 4096,
                                               size=4096, filename=dump)
            gdb.hold_after_return(fault)
            migration_event(dst, "postcopy-paused")

            # The file reads again, recover
            fs.ops.error = None
            fs.ops.unblock()
            dst.cmd_oob("migrate-recover", uri=f"file:{fs.path}")
            gdb.resume(fault)
            gdb.detach()
            gdb = None

            assert saved.wait(120), "the faulted page never came: the fault thread " \
                "missed the recover and waits for another"
            assert "error" not in saved_r, saved_r
            migration_event(dst, "completed")
            # Completion joins the fault thread with the BQL held
            answered, r = on_second_monitor(dst, "query-status")
            assert answered.wait(60), "QEMU hangs in its cleanup after the load"
            assert r.get("ok", {}).get("status") in ("prelaunch", "paused"), r
            assert dst.dump_ram(os.path.join(workdir, "dst.ram")) == src_ram
        except BaseException:
            if gdb:
                gdb.detach()
            fs.ops.unblock()
            if dst.vm.is_running():
                dst.kill()
            raise
        dst.shutdown()


def test_oob_recover_never_waits_for_a_hung_read(workdir, snap):
    """
    C: while a prefetch read hangs (a dead mount), migrate-recover
    out-of-band must not wait for that thread: it resumes the load at once,
    and the load completes once the read returns.  Before, it joined the
    thread and blocked the monitor.
    """
    path, src_ram = snap
    pages_offset, bitmap = pc_ram_index(path)
    # Thread 1 hangs on an early chunk before thread 0 fails on a late one
    hung = full_chunks(bitmap, 1)[0]
    bad = full_chunks(bitmap, 0)[-1]
    assert bad > hung
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(path, mnt, "snap.mig") as fs:
        fs.ops.error = (pages_offset + bad, pages_offset + bad + CHUNK)
        fs.ops.block = (pages_offset + hung, pages_offset + hung + CHUNK)
        dst = start_lazy(workdir, fs.path)
        try:
            migration_event(dst, "postcopy-paused")
            wait_until(lambda: fs.ops.blocked > 0, 120, "a prefetch read to hang")
            fs.ops.error = None
            answered, r = in_thread(lambda: dst.cmd_oob("migrate-recover",
                                                        uri=f"file:{fs.path}"))
            assert answered.wait(30), "migrate-recover out-of-band waits for a hung read"
            assert r == {"ok": {}}, r
            migration_event(dst, "postcopy-active")
            assert fs.ops.blocked > 0, "the read returned by itself"

            fs.ops.unblock()
            migration_event(dst, "completed")
            assert dst.dump_ram(os.path.join(workdir, "dst.ram")) == src_ram
        except BaseException:
            fs.ops.unblock()
            if dst.vm.is_running():
                dst.kill()
            raise
        dst.shutdown()


def test_oob_cancel_against_completion(workdir, snap):
    """
    C: migrate_cancel out-of-band is held by gdb in the monitor's I/O
    thread just as it takes its lock, while the load completes and is
    freed.  Then it must see that no load from a file is left (and refuse
    out-of-band, as for any other migration), not use the freed load.
    """
    path, src_ram = snap
    pages_offset, bitmap = pc_ram_index(path)
    held = full_chunks(bitmap, 0)[0]
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(path, mnt, "snap.mig") as fs:
        fs.ops.block = (pages_offset + held, pages_offset + held + CHUNK)
        dst = start_lazy(workdir, fs.path, gdb=True)
        gdb = dst.gdb
        try:
            wait_until(lambda: fs.ops.blocked > 0, 120, "the fill to be held")
            assert dst.cmd("query-migrate")["status"] == "postcopy-active"
            io = gdb.thread_id("IO mon_iothread")
            main = gdb.thread_id("qemu-system-x86")
            gdb.break_at("qemu_mutex_lock_impl", io,
                         '$_any_caller_matches(\\"^postcopy_file_cancel$\\", 4)')
            cancelled, r = in_thread(lambda: dst.cmd_oob("migrate_cancel"))
            gdb.wait_stopped("breakpoint-hit")
            # The load completes and is freed meanwhile
            gdb.break_at("postcopy_file_cleanup", main)
            fs.ops.unblock()
            gdb.hold_after_return(main)
            gdb.resume(main)
            gdb.resume(io)
            gdb.detach()
            gdb = None
            assert cancelled.wait(60), "migrate_cancel never answered"
            err = str(r.get("error"))
            assert "out-of-band only gives up a paused postcopy from a file" in err, r
            assert dst.cmd("query-migrate")["status"] == "completed"
            assert dst.dump_ram(os.path.join(workdir, "dst.ram")) == src_ram
        except BaseException:
            if gdb:
                gdb.detach()
            fs.ops.unblock()
            if dst.vm.is_running():
                dst.kill()
            raise
        dst.shutdown()


def test_gdb_is_available():
    """The race tests need gdb; make it a failure, not a skip, if it is gone."""
    assert os.access("/usr/bin/gdb", os.X_OK), "gdb is missing (build-aux/host-deps.sh)"
    assert file_sha256  # imported for the module's tests


def test_run_placed_in_part(workdir, snap):
    """
    D: the kernel places a run of pages in part, then fails (as UFFDIO_COPY
    does with ENOMEM when a memory cgroup is full).  gdb makes the first
    32 KiB prefetch run copy only its first 3 pages and return ENOMEM.
    The load pauses; the 3 pages are resident and must never be placed
    again: after migrate-recover the load completes, RAM is the source's.
    Before, all 8 pages were released, and placing the 3 again failed with
    EEXIST, pausing the load again for ever.
    """
    path, src_ram = snap
    dst = start_lazy(workdir, path, gdb=True)
    gdb = dst.gdb
    try:
        gdb.break_at("uffd_copy_page", condition="length == 0x8000")
        thread = gdb.hold_at_break()
        gdb.evaluate(thread, "length = 0x3000")
        gdb.finish(thread)
        gdb.evaluate(thread, "$rax = -12")
        gdb.resume(thread)
        gdb.detach()
        gdb = None
        migration_event(dst, "postcopy-paused")
        info = dst.cmd("query-migrate")
        assert "Cannot allocate memory" in info.get("error-desc", ""), info

        dst.cmd_oob("migrate-recover", uri=f"file:{path}")
        _, info = dst.wait_migration(timeout=300, until=("completed", "failed",
                                                         "postcopy-paused"))
        assert info["status"] == "completed", info
        resident = info["postcopy-file"]
        assert resident["pages-resident"] == resident["pages-total"], info
        assert dst.dump_ram(os.path.join(workdir, "dst.ram")) == src_ram
    except BaseException:
        if gdb:
            gdb.detach()
        if dst.vm.is_running():
            dst.kill()
        raise
    dst.shutdown()
