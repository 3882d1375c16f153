"""
Postcopy from file under KVM: the vCPU faults on missing pages inside
KVM_RUN (through get_user_pages), not in a TCG memory access.

The KVM of the machines this is developed on (PVM, see the limitations in
docs/devel/migration/postcopy-file.rst) cannot run the test guest's
Linux kernel, so these guests boot no kernel: SeaBIOS runs, finds no boot
device and idles.  Their RAM holds random data that -device loader put
there, and the snapshot is taken after the firmware changed RAM too.
Skipped where /dev/kvm is missing.
"""

import os

import pytest

from snaptest import (LAZY_CAPS, PAGE, SAVE_CAPS, STOCK_QEMU, Guest, differing_pages,
                      wait_until)

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs /dev/kvm")

RAM_MB = 256
BLOB_ADDR = 16 << 20
BLOB_SIZE = 64 << 20


def kvm_guest(workdir, blob, name, **args):
    """A KVM guest that boots no kernel; SeaBIOS logs to NAME-firmware.log."""
    log = os.path.join(workdir, f"{name}-firmware.log")
    return Guest(workdir, name=name, ram_mb=RAM_MB, accel="kvm", kernel=False,
                 extra_args=["-device", f"loader,file={blob},addr={BLOB_ADDR:#x}",
                             "-chardev", f"file,id=fwlog,path={log}",
                             "-device", "isa-debugcon,iobase=0x402,chardev=fwlog"],
                 **args)


def wait_firmware_idle(workdir, name, timeout=120):
    """Wait until SeaBIOS has given up booting and idles."""
    log = os.path.join(workdir, f"{name}-firmware.log")

    def idle():
        if os.path.exists(log):
            with open(log, "rb") as f:
                return b"No bootable device" in f.read()
        return False
    wait_until(idle, timeout, "the firmware to reach 'No bootable device'", interval=0.1)


def save_kvm(workdir, stop_first, kind="bg"):
    """
    A mapped-ram file (SAVE_CAPS[KIND]) of a KVM guest whose firmware
    idles: (file, RAM dump or None, its sha256 or None, blob, blob bytes).
    With STOP_FIRST, the guest is stopped and its RAM dumped first (the
    snapshot point), and the file restores it stopped.
    """
    data = os.urandom(BLOB_SIZE)
    blob = os.path.join(workdir, "blob")
    with open(blob, "wb") as f:
        f.write(data)
    path = os.path.join(workdir, "snap.mig")
    dump = digest = None
    with kvm_guest(workdir, blob, "src") as src:
        wait_firmware_idle(workdir, "src")
        if stop_first:
            src.cmd("stop")
            dump = os.path.join(workdir, "ram-src")
            digest = src.dump_ram(dump)
        src.migrate_to_file(path, **SAVE_CAPS[kind])
        if kind == "bg":
            assert src.status() == ("paused" if stop_first else "running")
    return path, dump, digest, blob, data


def load_paused(workdir, blob, path, name, caps, qemu=None):
    """Load PATH into a new paused KVM guest; return its RAM dump's (path, sha256)."""
    with kvm_guest(workdir, blob, name, incoming="defer", paused=True, qemu=qemu) as dst:
        status, info = dst.incoming_file(path, **caps)
        assert status == "completed", f"{name}: {info}"
        if "postcopy_ram" in caps:
            pf = info["postcopy-file"]
            assert pf["pages-resident"] == pf["pages-total"]
        assert dst.status() == "paused"
        dump = os.path.join(workdir, f"ram-{name}")
        return dump, dst.dump_ram(dump)


@pytest.mark.parametrize("kind", SAVE_CAPS)
def test_kvm_lazy_load_equals_snapshot_point(workdir, kind):
    """
    Destination started paused: RAM after the lazy fill equals RAM after
    stock QEMU's eager load of the same file, byte for byte, and equals
    the snapshot point but for the option ROM page whose state
    kvm-tpr-opt's post_load rewrites under KVM (stock does the same).
    """
    path, src_dump, _, blob, _ = save_kvm(workdir, stop_first=True, kind=kind)
    if not os.path.exists(STOCK_QEMU):
        pytest.fail(f"{STOCK_QEMU} is not built (make check builds it)")
    lazy, lazy_sum = load_paused(workdir, blob, path, "lazy", LAZY_CAPS)
    stock, stock_sum = load_paused(workdir, blob, path, "stock", {"mapped_ram": True},
                                   qemu=STOCK_QEMU)
    assert lazy_sum == stock_sum, \
        f"lazy and stock eager RAM differ at pages {differing_pages(stock, lazy)}"
    moved = differing_pages(src_dump, lazy, limit=100)
    assert all(0xc0 <= p < 0x100 for p in moved) and len(moved) <= 2, \
        f"RAM differs from the snapshot point at pages {moved}"


def test_kvm_vcpu_faults_inside_kvm_run(workdir):
    """
    The destination runs at once: the vCPU, inside KVM_RUN, faults on the
    firmware's pages and gets them; the load completes with the guest
    running, and the data pages are those of the snapshot.
    """
    path, _, _, blob, data = save_kvm(workdir, stop_first=False)
    with kvm_guest(workdir, blob, "dst", incoming="defer") as dst:
        dst.cmd("migrate-set-parameters", postcopy_file_threads=1)
        status, info = dst.incoming_file(path, postcopy_blocktime=True, **LAZY_CAPS)
        assert status == "completed", info
        assert dst.status() == "running"
        pf = info["postcopy-file"]
        assert pf["pages-faulted"] > 0, pf
        # the vCPU thread itself waited for pages: it faulted in KVM_RUN
        assert info["postcopy-vcpu-latency"][0] > 0, info
        print({k: v for k, v in info.items() if k.startswith("postcopy")})
        dst.cmd("stop")
        got = os.path.join(workdir, "blob-dst")
        dst.cmd("pmemsave", val=BLOB_ADDR, size=BLOB_SIZE, filename=got)
        with open(got, "rb") as f:
            back = f.read()
        bad = [i for i in range(0, BLOB_SIZE, PAGE) if back[i:i + PAGE] != data[i:i + PAGE]]
        assert not bad, f"{len(bad)} data pages differ, first at {BLOB_ADDR + bad[0]:#x}"
