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
from snaptest import Guest

RAM_MB = int(os.environ.get("DEMO_RAM_MB", "1024"))


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
            errors = g.wait_full_pass()
            print(f"demo: the workload verified every page after the revert: "
                  f"{errors} corrupt pages")
            if errors:
                sys.exit(1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
