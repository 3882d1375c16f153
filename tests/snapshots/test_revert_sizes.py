"""
Instant revert at realistic sizes (1 and 2 GiB guests): one background
snapshot file, taken while the guest writes, loaded three ways — lazily by
ours, eagerly by ours and eagerly by stock QEMU 10.2.2 — with RAM equal to
the snapshot point every time; and a lazy revert with the guest running
during the fill, verified page by page by the workload.
"""

import os

import pytest

from snaptest import LAZY_CAPS, SAVE_CAPS, STOCK_QEMU, Guest, differing_pages, save_to_file

SIZES = [int(s) for s in os.environ.get("QIS_REVERT_SIZES_MB", "1024,2048").split(",")]
LOADERS = {
    "lazy": (None, LAZY_CAPS),
    "eager": (None, {"mapped_ram": True}),
    "stock-eager": (STOCK_QEMU, {"mapped_ram": True}),
}


@pytest.mark.parametrize("ram_mb", SIZES)
def test_same_file_three_loaders(workdir, ram_mb):
    path = os.path.join(workdir, "snap.mig")
    want, want_sum = save_to_file(workdir, path, ram_mb, ram_mb * 3 // 4,
                                  stop_first=True, **SAVE_CAPS["bg"])
    for name, (qemu, caps) in LOADERS.items():
        if qemu and not os.path.exists(qemu):
            pytest.fail(f"{qemu} is not built (make check builds it)")
        with Guest(workdir, name=f"dst-{name}", ram_mb=ram_mb, wl_mb=ram_mb * 3 // 4,
                   qemu=qemu, incoming="defer", paused=True) as dst:
            status, info = dst.incoming_file(path, **caps)
            assert status == "completed", f"{name}: {info}"
            got = os.path.join(workdir, f"ram-{name}")
            assert dst.dump_ram(got) == want_sum, \
                f"{name}: RAM differs at pages {differing_pages(want, got)}"
            os.unlink(got)
            dst.cmd("cont")
            assert dst.wait_full_pass() == 0, name
            dst.check_no_corruption()


@pytest.mark.parametrize("ram_mb", SIZES)
def test_lazy_revert_guest_writes_and_runs(workdir, ram_mb):
    path = os.path.join(workdir, "snap.mig")
    save_to_file(workdir, path, ram_mb, ram_mb * 3 // 4, **SAVE_CAPS["bg"])
    with Guest(workdir, name="dst", ram_mb=ram_mb, wl_mb=ram_mb * 3 // 4,
               incoming="defer") as dst:
        status, info = dst.incoming_file(path, **LAZY_CAPS)
        assert status == "completed", info
        assert info["postcopy-file"]["pages-faulted"] > 0
        assert dst.wait_full_pass() == 0
        dst.check_no_corruption()
