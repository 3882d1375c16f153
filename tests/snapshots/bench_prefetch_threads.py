#!/usr/bin/env python3
"""
make bench-threads: how the number of prefetch threads
(postcopy-file-threads) trades the fill rate and fault latency of a lazy
load against the guest's speed during the fill (ours only; not part of
make check).

For each guest RAM size, one background-snapshot + mapped-ram file of a
guest whose workload dirties 75% of RAM and reports its speed every
100 ms is loaded lazily REPS times with each thread count, alternating
the counts so that drift in the host hits them alike.  The file stays in
page cache.  Writes results.json and results.md to --out.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import traceback

from bench import LAZY_EXTRA, LAZY_TIMED_CAPS, restore_file
import snaptest
from snaptest import save_to_file


def run_size(size_gb, threads, reps, runs):
    ram_mb = size_gb * 1024
    wl_mb = ram_mb * 3 // 4
    workdir = tempfile.mkdtemp(prefix=f"qis-bench-threads-{size_gb}-", dir="/var/tmp")
    try:
        path = os.path.join(workdir, "snap.mig")
        save_to_file(workdir, path, ram_mb, wl_mb, wl_report_ms=100, ready_timeout=3600,
                     **snaptest.SAVE_CAPS["bg"])
        for rep in range(reps):
            for n in threads:
                extra = {}
                running, done = restore_file(snaptest.QEMU, workdir, ram_mb, wl_mb, path,
                                             LAZY_TIMED_CAPS, extra,
                                             {"postcopy_file_threads": n})
                run = {"size": size_gb, "threads": n, "rep": rep,
                       "running_s": running, "done_s": done, **extra}
                runs.append(run)
                print("bench-threads:", json.dumps(run), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def spread(values, unit):
    """min / median / max of VALUES, or – if there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return (f"{min(values):.3g} / {statistics.median(values):.3g} / "
            f"{max(values):.3g} {unit}").strip()


def write_outputs(out, runs, sizes, threads, meta):
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=2)
    head = " | ".join(f"threads={n}" for n in threads)
    lines = ["min / median / max over the runs", "",
             f"| figure | RAM | {head} |", "|---|---|" + "---|" * len(threads)]
    figures = [("done_s", "until complete", "s")] + \
        [f for f in LAZY_EXTRA if f[0] != "lazy_faults"] + \
        [("lazy_faults", "pages faulted", "")]
    for key, label, unit in figures:
        for size in sizes:
            cells = [spread([r.get(key) for r in runs
                             if r["size"] == size and r["threads"] == n], unit)
                     for n in threads]
            lines.append(f"| {label} | {size} GiB | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + f"\n\n{meta}\n"
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)
    print(md)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,2,4,8", help="guest RAM sizes in GiB")
    ap.add_argument("--threads", default="1,2,4", help="postcopy-file-threads values")
    ap.add_argument("--reps", type=int, default=3, help="loads per size and thread count")
    ap.add_argument("--out", default=os.path.join(snaptest.BUILD, "bench-threads"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    os.makedirs(args.out, exist_ok=True)
    meta = (f"accel {snaptest.ACCEL}, workload dirties 75% of RAM, {args.reps} lazy loads "
            f"per size and thread count, measured {time.strftime('%Y-%m-%d %H:%M')} "
            f"on {os.uname().nodename} ({os.cpu_count()} CPUs)")
    runs = []
    for size in sizes:
        try:
            run_size(size, threads, args.reps, runs)
        except Exception:  # pylint: disable=broad-except
            traceback.print_exc()
        write_outputs(args.out, runs, sizes, threads, meta)


if __name__ == "__main__":
    main()
