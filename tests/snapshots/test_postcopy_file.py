"""
Postcopy from file: a mapped-ram snapshot file is loaded lazily
(postcopy-ram + mapped-ram on the destination).  The guest starts before
its RAM is read; pages come in through userfaultfd faults and prefetch.
"""

import os

import pytest

from snaptest import LAZY_CAPS, MIGRATION_END, SAVE_CAPS, Guest, caps_arg, save_to_file

RAM_MB = int(os.environ.get("QIS_TEST_RAM_MB", "512"))
WL_MB = RAM_MB * 3 // 4 - 64


def lazy_dst(workdir, paused, name="dst"):
    dst = Guest(workdir, name=name, ram_mb=RAM_MB, wl_mb=WL_MB, incoming="defer",
                paused=paused)
    with dst.launch().ended_on_error():
        dst.set_caps(**LAZY_CAPS)
    return dst


@pytest.mark.parametrize("kind", SAVE_CAPS)
def test_lazy_load_equals_snapshot_point(workdir, kind):
    """Destination started paused: RAM after the lazy fill equals RAM at the snapshot."""
    path = os.path.join(workdir, "snap.mig")
    at_snapshot, want = save_to_file(workdir, path, RAM_MB, WL_MB, stop_first=True,
                                     **SAVE_CAPS[kind])
    with lazy_dst(workdir, paused=True) as dst:
        dst.cmd("migrate-incoming", uri=f"file:{path}")
        _, info = dst.wait_migration()
        assert info["status"] == "completed", info
        pf = info["postcopy-file"]
        assert pf["pages-resident"] == pf["pages-total"]
        assert pf["pages-prefetched"] > 0
        assert dst.status() == "paused"
        dst.assert_ram_is(os.path.join(workdir, "ram-dst"), want, at_snapshot)


def test_lazy_load_guest_runs_during_fill(workdir):
    """
    The guest writes during a background save; the lazily loaded guest
    runs while RAM is filled and its workload verifies every page.
    """
    path = os.path.join(workdir, "snap.mig")
    save_to_file(workdir, path, RAM_MB, WL_MB, **SAVE_CAPS["bg"])
    with lazy_dst(workdir, paused=False) as dst:
        dst.set_caps(events=True)
        dst.cmd("migrate-set-parameters", postcopy_file_threads=4)
        dst.cmd("migrate-incoming", uri=f"file:{path}")
        seen_active = []

        def running_while_active(info):
            if info["status"] == "postcopy-active":
                seen_active.append(True)
                assert dst.status() == "running"
        _, info = dst.wait_migration(until=MIGRATION_END, timeout=600, interval=0.01,
                                     each=running_while_active)
        assert info["status"] == "completed", info
        events = [e["data"]["status"] for e in dst.vm.get_qmp_events(wait=False)
                  if e["event"] == "MIGRATION"]
        assert "postcopy-active" in events and events[-1] == "completed", events
        assert dst.status() == "running"
        assert dst.wait_full_pass() == 0
        dst.check_no_corruption()
        print("seen postcopy-active by polling:", bool(seen_active), info.get("postcopy-file"))


def test_source_still_rejects_mapped_ram_with_postcopy(workdir):
    """On a source (not incoming), mapped-ram + postcopy-ram stays refused."""
    with Guest(workdir, ram_mb=128, wl_mb=16) as g:
        r = g.qmp("migrate-set-capabilities", capabilities=caps_arg(LAZY_CAPS))
        assert "error" in r
        assert "incompatible with postcopy" in r["error"]["desc"]


def test_prefetch_threads_parameter(workdir):
    """postcopy-file-threads: default 2, 1 to 64 accepted, others refused."""
    with Guest(workdir, ram_mb=128, wl_mb=16, incoming="defer") as g:
        assert g.cmd("query-migrate-parameters")["postcopy-file-threads"] == 2
        for bad in (0, 65):
            r = g.qmp("migrate-set-parameters", postcopy_file_threads=bad)
            assert "error" in r and "postcopy_file_threads" in r["error"]["desc"], r
        assert g.cmd("query-migrate-parameters")["postcopy-file-threads"] == 2
        g.cmd("migrate-set-parameters", postcopy_file_threads=64)
        assert g.cmd("query-migrate-parameters")["postcopy-file-threads"] == 64


@pytest.mark.parametrize("form", ["offset", "fdset"])
def test_lazy_load_uri_forms(workdir, form):
    """file:PATH,offset=N and file:/dev/fdset/N load lazily too."""
    path = os.path.join(workdir, "snap.mig")
    offset = 0x10000
    uri = f"file:{path},offset={offset}"
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB) as src:
        src.wait_ready()
        src.wait_progress()
        src.cmd("stop")
        want = src.dump_ram(os.path.join(workdir, "ram-src"))
        src.set_caps(**SAVE_CAPS["bg"])
        src.cmd("migrate", uri=uri)
        status, info = src.wait_migration()
        assert status == "completed", info
    dst = Guest(workdir, name="dst", ram_mb=RAM_MB, wl_mb=WL_MB, incoming="defer",
                paused=True)
    fd = None
    if form == "fdset":
        fd = os.open(path, os.O_RDONLY)
        dst.vm.add_fd(fd, 1, "snapshot")
        uri = f"file:/dev/fdset/1,offset={offset}"
    try:
        with dst:
            dst.set_caps(**LAZY_CAPS)
            dst.cmd("migrate-incoming", uri=uri)
            _, info = dst.wait_migration()
            assert info["status"] == "completed", info
            assert info["postcopy-file"]["pages-prefetched"] > 0
            assert dst.dump_ram(os.path.join(workdir, "ram-dst")) == want
    finally:
        if fd is not None:
            os.close(fd)
