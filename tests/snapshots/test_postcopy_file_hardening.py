"""
Postcopy from file, hardening (issue 9): migrate-recover refuses a file
that is not the one the load started from, a corrupt page size is refused
by the eager and the lazy loader alike, and a fault on a page that
virtio-mem discarded is served while the load is paused.
"""

import os
import threading

import pytest

from faultyfs import FaultyMount
from snaptest import SAVE_CAPS, Guest, GuestError, file_sha256
from test_postcopy_file_errors import (RAM_MB, WL_MB, copy, find_header, ram_index,
                                       refused_before_start, start_paused_on_eio)


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


def recover_error(dst, path):
    """migrate-recover out-of-band from PATH; the error it must give."""
    with pytest.raises(GuestError) as e:
        dst.cmd_oob("migrate-recover", uri=f"file:{path}")
    return str(e.value)


def test_recover_refuses_another_file(workdir, snapfile):
    """
    A load paused by a read error is resumed only from the file it started
    from: a file of another size, or of the same size with another page
    bitmap, is refused with an error that says why, and the load stays
    paused.  The right file then completes it, byte-exact for the workload.
    """
    _, bitmap_offset, _, _ = ram_index(snapfile)
    other = os.path.join(workdir, "other.mig")
    copy(snapfile, other)
    with open(other, "r+b") as f:
        f.seek(bitmap_offset)
        byte = f.read(1)[0]
        f.seek(bitmap_offset)
        f.write(bytes([byte ^ 0x80]))
    assert os.path.getsize(other) == os.path.getsize(snapfile)
    shorter = os.path.join(workdir, "shorter.mig")
    copy(snapfile, shorter)
    os.truncate(shorter, os.path.getsize(snapfile) - 4096)

    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(snapfile, mnt, "snap.mig") as fs:
        dst, _ = start_paused_on_eio(workdir, fs, snapfile, exit_on_error=False)
        with dst.ended_on_error():
            err = recover_error(dst, other)
            assert "is not the file the load started from" in err, err
            assert "page bitmap of RAM block pc.ram differs" in err, err
            err = recover_error(dst, shorter)
            assert "is not the file the load started from: its size differs" in err, err
            assert dst.cmd("query-migrate")["status"] == "postcopy-paused"
            dst.check_no_corruption()

            fs.ops.error = None
            dst.cmd_oob("migrate-recover", uri=f"file:{fs.path}")
            _, info = dst.wait_migration(until=("completed", "failed"), timeout=600)
            assert info["status"] == "completed", info
            assert dst.wait_full_pass() == 0
            dst.check_no_corruption()
        dst.shutdown()


def test_zero_page_size_refused_eager_and_lazy(workdir, snapfile):
    """
    A mapped-ram header whose page size is 0 made the eager loader divide
    by zero (SIGFPE); both loaders now refuse it with an error that names
    the page size, the guest never runs and QEMU stays up.
    """
    path = os.path.join(workdir, "zero-page-size.mig")
    copy(snapfile, path)
    with open(path, "r+b") as f:
        f.seek(find_header(path) + 4)
        f.write(b"\x00" * 8)
    refused_before_start(workdir, path, expect="0 byte pages")

    before = file_sha256(path)
    dst = Guest(workdir, name="eager", ram_mb=RAM_MB, wl_mb=WL_MB, incoming="defer")
    with dst:
        dst.set_caps(mapped_ram=True)
        dst.cmd("migrate-incoming", uri=f"file:{path}", exit_on_error=False)
        status, _ = dst.wait_migration(timeout=120)
        assert status == "failed"
        assert dst.status() != "running"
        assert "WL " not in dst.console(), "the guest ran"
    assert "0 byte pages" in dst.qemu_log(), dst.qemu_log()
    assert file_sha256(path) == before


VMEM_ADDR = 1 << 32          # where the pc machine maps device memory
BLOB_ADDR = 16 << 20
VMEM_ARGS = ["-m", f"{RAM_MB}M,maxmem=1G",
             "-object", "memory-backend-ram,id=vmem0,size=128M",
             "-device", "virtio-mem-pci,memdev=vmem0,requested-size=0,id=vm0,block-size=2M"]


def test_fault_on_discarded_page_while_paused(workdir):
    """
    virtio-mem memory that is not plugged is discarded and never migrated.
    While a lazy load is paused by a read error, QEMU itself reading such a
    page (pmemsave) gets a zero page at once; before the fix the fault
    waited for a fill that was paused, with the main loop blocked.
    """
    path = os.path.join(workdir, "vmem.mig")
    # One MiB of data at 16 MiB of pc.ram, so that the file holds pages
    # whose reads can fail, whatever the firmware has written by then
    blob = os.path.join(workdir, "blob")
    with open(blob, "wb") as f:
        f.write(os.urandom(1 << 20))
    src = Guest(workdir, name="src", ram_mb=RAM_MB, kernel=False,
                extra_args=VMEM_ARGS + ["-device", f"loader,file={blob},addr={BLOB_ADDR:#x}"])
    with src:
        devs = src.cmd("query-memory-devices")
        assert devs[0]["data"]["memaddr"] == VMEM_ADDR, devs
        assert devs[0]["data"]["size"] == 0, devs
        # Saved stopped: a live precopy of a TCG guest with unplugged
        # virtio-mem memory aborts the source in stock 10.2.2 as well
        # (tlb_reset_dirty_range_all: block == qemu_get_ram_block(end - 1))
        src.cmd("stop")
        src.migrate_to_file(path, mapped_ram=True)

    # Fail the reads of that MiB (no device reads it while its state
    # loads): the load pauses once the guest could run
    _, _, pages_offset, _ = ram_index(path)
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    with FaultyMount(path, mnt, "vmem.mig") as fs:
        dst, _ = start_paused_on_eio(workdir, fs, path, exit_on_error=False,
                                     bad=(pages_offset + BLOB_ADDR,
                                          pages_offset + BLOB_ADDR + (1 << 20)),
                                     kernel=False, extra_args=VMEM_ARGS)
        with dst.ended_on_error():
            dump = os.path.join(workdir, "vmem.dump")
            done = threading.Event()
            result = {}

            def pmemsave():
                result["r"] = dst.qmp("pmemsave", val=VMEM_ADDR, size=2 << 20,
                                      filename=dump)
                done.set()

            threading.Thread(target=pmemsave, daemon=True).start()
            # A fault served at once returns in milliseconds; one that waits
            # for the paused fill never does.
            if not done.wait(60):
                dst.kill()
                pytest.fail("pmemsave of discarded virtio-mem memory waited for "
                            "the paused load (main loop blocked)")
            assert result["r"] == {"return": {}}, result
            with open(dump, "rb") as f:
                assert f.read() == bytes(2 << 20)
            assert dst.cmd("query-migrate")["status"] == "postcopy-paused"
        dst.shutdown()
