#!/usr/bin/env python3
"""
make demo: boot the test guest, take a snapshot of it while the workload
runs, let it run on, revert to the snapshot, and print the timings.
"""

import os
import shutil
import sys
import tempfile
import time

from measure import EventLog, event_time, wait_job
from snaptest import LAZY_CAPS, SAVE_CAPS, Guest

RAM_MB = int(os.environ.get("DEMO_RAM_MB", "1024"))


def verify_all_pages(g, what):
    """Let the workload verify every page; exit on corruption."""
    errors = g.wait_full_pass()
    print(f"demo: the workload verified every page after {what}: "
          f"{errors} corrupt pages")
    if errors:
        sys.exit(1)


def main():
    workdir = tempfile.mkdtemp(prefix="qis-demo-", dir="/var/tmp")
    disk = os.path.join(workdir, "disk.qcow2")
    wl_mb = RAM_MB * 3 // 4
    print(f"demo: {RAM_MB} MiB guest, workload dirtying {wl_mb} MiB, accel "
          f"{os.environ.get('ACCEL', 'tcg')}, files in {workdir}")
    try:
        with Guest(workdir, ram_mb=RAM_MB, wl_mb=wl_mb, disk=disk) as g:
            t0 = time.monotonic()
            g.wait_ready()
            print(f"demo: guest booted and filled its memory in {time.monotonic() - t0:.1f} s")
            g.wait_progress()
            log = EventLog(g)
            log.clear()

            t0 = time.time()
            g.cmd("snapshot-save", job_id="save", tag="demo", vmstate="disk0",
                  devices=["disk0"])
            err, ev = wait_job(log, "save")
            if err:
                sys.exit(f"demo: snapshot-save failed: {err}")
            save_total = event_time(ev) - t0
            save_paused = log.paused_seconds()
            print(f"demo: snapshot-save: guest paused {save_paused * 1000:.0f} ms, "
                  f"total {save_total * 1000:.0f} ms")

            g.wait_progress()
            log.clear()
            t0 = time.time()
            g.cmd("snapshot-load", job_id="load", tag="demo", vmstate="disk0",
                  devices=["disk0"])
            err, ev = wait_job(log, "load")
            if err:
                sys.exit(f"demo: snapshot-load failed: {err}")
            resume = log.wait("RESUME", timeout=60)
            print(f"demo: snapshot-load: guest running again after "
                  f"{(event_time(resume) - t0) * 1000:.0f} ms, "
                  f"job done after {(event_time(ev) - t0) * 1000:.0f} ms")
            verify_all_pages(g, "the revert")

            # Instant snapshot: background-snapshot + mapped-ram to a file
            path = os.path.join(workdir, "instant.mig")
            g.set_caps(events=True)
            log.clear()
            t0 = time.time()
            g.migrate_to_file(path, **SAVE_CAPS["bg"])
            log.wait_resumed()
            print(f"demo: instant snapshot (migrate, background-snapshot + mapped-ram): "
                  f"guest paused {log.paused_seconds() * 1000:.1f} ms, "
                  f"RAM written in the background in {(time.time() - t0) * 1000:.0f} ms")

        # Instant revert: a new QEMU loads the file lazily (postcopy from file)
        dst = Guest(workdir, name="revert", ram_mb=RAM_MB, wl_mb=wl_mb, incoming="defer")
        with dst:
            dst.set_caps(events=True, **LAZY_CAPS)
            log = EventLog(dst)
            t0 = time.time()
            dst.cmd("migrate-incoming", uri=f"file:{path}")
            status, info = dst.wait_migration(timeout=600)
            if status != "completed":
                sys.exit(f"demo: the instant revert failed: {info.get('error-desc', status)}")
            resume = log.wait("RESUME", timeout=60)
            done = log.wait("MIGRATION", {"status": "completed"}, timeout=60)
            info = info["postcopy-file"]
            print(f"demo: instant revert (postcopy from file): guest running after "
                  f"{(event_time(resume) - t0) * 1000:.1f} ms, all RAM resident after "
                  f"{(event_time(done) - t0) * 1000:.0f} ms "
                  f"({info['pages-faulted']} pages faulted, "
                  f"{info['pages-prefetched']} prefetched)")
            verify_all_pages(dst, "the instant revert")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
