#!/usr/bin/env python3
"""
make bench: stock QEMU 10.2.2 and ours, measured in one run on the same
guest (not part of make check).

For each guest RAM size (about 75% of it dirtied by the workload) and each
binary it measures:
  - snapshot-save into qcow2: guest-stopped time and total time, and the
    longest round trip of query-status while the job runs; for ours also
    snapshot-save in instant mode (the same figures), and the bytes it
    added to the image divided by the RAM it saved (non-zero pages)
  - snapshot-load: time until the guest runs again, and until the job ends;
    for ours also snapshot-load in lazy mode of the instant snapshot (the
    same, plus fill throughput, fault latency and the workload's speed
    during the fill)
  - migrate to file: with background-snapshot, and background-snapshot +
    mapped-ram: guest pause and total time
  - restoring each of those files into a new QEMU: time from
    migrate-incoming to guest running, and to completion

Writes results.json, results.md (table with a stock/ours ratio column) and
results.png to --out.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback

from measure import EventLog, event_time, wait_job
import snaptest
from snaptest import Guest

STOCK_QEMU = snaptest.STOCK_QEMU
# A lazy load (postcopy from file) with fault latencies reported
LAZY_TIMED_CAPS = {**snaptest.LAZY_CAPS, "postcopy_blocktime": True}
# --only-save: measure snapshot-save alone
ONLY_SAVE = False

METRICS = [
    ("save_paused", "snapshot-save: guest stopped", "s"),
    ("save_total", "snapshot-save: total", "s"),
    ("save_qmp_max", "snapshot-save: longest QMP round trip", "s"),
    ("instant_paused", "snapshot-save instant: guest pause", "s"),
    ("instant_total", "snapshot-save instant: total", "s"),
    ("instant_qmp_max", "snapshot-save instant: longest QMP round trip", "s"),
    ("instant_bytes_ratio", "snapshot-save instant: image bytes / RAM saved", "×"),
    ("load_running", "snapshot-load: until guest runs", "s"),
    ("load_total", "snapshot-load: total", "s"),
    ("slazy_running", "snapshot-load lazy: until guest runs", "s"),
    ("slazy_total", "snapshot-load lazy: total", "s"),
    ("bg_paused", "migrate bg-snapshot: guest pause", "s"),
    ("bg_total", "migrate bg-snapshot: total", "s"),
    ("bg_restore_running", "restore bg-snapshot file: until guest runs", "s"),
    ("bg_restore_total", "restore bg-snapshot file: until complete", "s"),
    ("bgmr_paused", "migrate bg-snapshot+mapped-ram: guest pause", "s"),
    ("bgmr_total", "migrate bg-snapshot+mapped-ram: total", "s"),
    ("bgmr_restore_running", "restore bg+mapped-ram file: until guest runs", "s"),
    ("bgmr_restore_total", "restore bg+mapped-ram file: until complete", "s"),
    ("lazy_restore_running", "lazy restore (postcopy from file): until guest runs", "s"),
    ("lazy_restore_total", "lazy restore (postcopy from file): until complete", "s"),
]
# Extra figures of the lazy restore, reported as they are (no ratio).
LAZY_EXTRA = [
    ("lazy_fill_gbps", "lazy fill throughput", "GB/s"),
    ("lazy_fault_avg_us", "fault latency, average", "µs"),
    ("lazy_fault_p50_us", "fault latency p50 (bucket upper bound)", "µs"),
    ("lazy_fault_p99_us", "fault latency p99 (bucket upper bound)", "µs"),
    ("lazy_faults", "pages faulted", ""),
    ("lazy_wl_speed", "workload speed during fill / after", "×"),
]
# The same figures of a lazy snapshot-load (of the instant snapshot)
SLAZY_EXTRA = [("s" + key, label, unit) for key, label, unit in LAZY_EXTRA]


def save_job(g, log, disk, mode=None):
    """
    snapshot-save (in MODE) polled with query-status until it concludes:
    (paused, total, longest round trip of snapshot-save or query-status,
    bytes added to the image).
    """
    args = {"mode": mode} if mode else {}
    before = os.stat(disk).st_blocks * 512
    log.clear()
    t0 = time.time()
    t = time.monotonic()
    g.cmd("snapshot-save", job_id="save", tag=mode or "stopped", vmstate="disk0",
          devices=["disk0"], **args)
    # The reply itself waits while the main loop is blocked
    worst = time.monotonic() - t
    while True:
        t = time.monotonic()
        g.cmd("query-status")
        worst = max(worst, time.monotonic() - t)
        job = [j for j in g.cmd("query-jobs") if j["id"] == "save"][0]
        if job["status"] == "concluded":
            break
        time.sleep(0.01)
    err, ev = wait_job(log, "save")
    if err:
        raise RuntimeError(f"snapshot-save: {err}")
    return (log.paused_seconds(), event_time(ev) - t0, worst,
            os.stat(disk).st_blocks * 512 - before)


def migrate_to_file(g, path, caps):
    log = EventLog(g)
    g.set_caps(events=True, **caps)
    log.clear()
    t0 = time.time()
    g.cmd("migrate", uri=f"file:{path}")
    st, info = g.wait_migration(timeout=3600)
    if st != "completed":
        raise RuntimeError(f"migrate failed: {info.get('error-desc', st)}")
    ev = log.wait("MIGRATION", {"status": "completed"}, timeout=60)
    # background-snapshot resumes the guest when done; wait for that RESUME
    if g.status() == "running":
        log.wait_resumed()
    total = event_time(ev) - t0
    g.set_caps(**{k: False for k in caps})
    return log.paused_seconds(), total


def percentile_us(dist, q):
    """Upper bound in µs of the bucket holding quantile Q of postcopy-latency-dist."""
    total = sum(dist)
    if not total:
        return None
    seen = 0
    for n, count in enumerate(dist):
        seen += count
        if seen >= q * total:
            return 2 ** (n + 1)
    return None


def restore_file(qemu, workdir, ram_mb, wl_mb, path, caps, extra=None, params=None):
    """
    Start a new QEMU and load PATH with capabilities CAPS and migration
    parameters PARAMS; time until running and until completion.  With
    EXTRA (a dict), also record fill throughput, fault latency and the
    workload's speed during the fill (lazy loads).
    """
    with Guest(workdir, name="restore", ram_mb=ram_mb, wl_mb=wl_mb, qemu=qemu,
               incoming="defer") as g:
        log = EventLog(g)
        g.set_caps(events=True, **caps)
        if params:
            g.cmd("migrate-set-parameters", **params)
        t0 = time.time()
        g.cmd("migrate-incoming", uri=f"file:{path}", exit_on_error=False)
        status, info = g.wait_migration(until=("completed", "failed"), timeout=3600)
        # what the workload printed up to here, it printed during the fill
        done_mark = g.console_mark()
        if status != "completed":
            raise RuntimeError("restore failed: " + (info.get("error-desc") or status))
        done = log.wait("MIGRATION", {"status": "completed"}, timeout=60)
        running = log.wait("RESUME", timeout=60)
        if extra is not None:
            fill_extras(g, extra, "lazy", event_time(done) - event_time(running), 0,
                        done_mark)
        else:
            errors = g.wait_full_pass(timeout=3600)
            if errors:
                raise RuntimeError(f"restored guest found {errors} corrupt pages")
        return event_time(running) - t0, event_time(done) - t0


def fill_extras(g, extra, prefix, fill, start_mark, done_mark):
    """
    Figures of a lazy load that took FILL seconds from the guest's start
    to completion, whose guest printed from console position START_MARK
    on while filling and up to DONE_MARK: fill throughput, fault latency
    and the workload's speed during the fill against after it.  Also has
    the workload verify every page.
    """
    info = g.cmd("query-migrate")
    pfi = info.get("postcopy-file", {})
    if fill > 0 and pfi:
        extra[f"{prefix}_fill_gbps"] = pfi["bytes-read"] / fill / 1e9
        extra[f"{prefix}_faults"] = pfi["pages-faulted"]
    if info.get("postcopy-latency"):
        extra[f"{prefix}_fault_avg_us"] = info["postcopy-latency"] / 1000
    dist = info.get("postcopy-latency-dist") or []
    extra[f"{prefix}_fault_p50_us"] = percentile_us(dist, 0.50)
    extra[f"{prefix}_fault_p99_us"] = percentile_us(dist, 0.99)
    # workload speed: progress lines (every 100 ms) while filling,
    # without the first one, which began before the load, against
    # those after the fill
    rates = [float(r) for r in
             re.findall(r"WL PROGRESS .* rate=(\d+)", g.console()[start_mark:done_mark])][1:]
    errors = g.wait_full_pass(timeout=3600)
    if errors:
        raise RuntimeError(f"loaded guest found {errors} corrupt pages")
    after = [float(r) for r in
             re.findall(r"WL PROGRESS .* rate=(\d+)", g.console()[done_mark:])]
    if rates and after:
        extra[f"{prefix}_wl_speed"] = (sum(rates) / len(rates)) / (sum(after) / len(after))


def lazy_snapshot_load(g, log, res):
    """snapshot-load in lazy mode of the instant snapshot, with its figures."""
    g.set_caps(postcopy_blocktime=True)
    log.clear()
    start_mark = g.console_mark()
    t0 = time.time()
    g.cmd("snapshot-load", job_id="lazy", tag="instant", vmstate="disk0",
          devices=["disk0"], mode="lazy")
    err, ev = wait_job(log, "lazy")
    done_mark = g.console_mark()
    if err:
        raise RuntimeError(f"snapshot-load lazy: {err}")
    running = event_time(log.wait("RESUME", timeout=60))
    res["slazy_running"] = running - t0
    res["slazy_total"] = event_time(ev) - t0
    fill_extras(g, res, "slazy", event_time(ev) - running, start_mark, done_mark)
    g.set_caps(postcopy_blocktime=False)


def run_one(qemu, size_gb, workdir, res):
    ram_mb = size_gb * 1024
    wl_mb = ram_mb * 3 // 4
    disk = os.path.join(workdir, "disk.qcow2")
    with Guest(workdir, ram_mb=ram_mb, wl_mb=wl_mb, disk=disk, qemu=qemu,
               wl_report_ms=100) as g:
        g.wait_ready(timeout=3600)
        g.wait_progress()
        log = EventLog(g)

        (res["save_paused"], res["save_total"], res["save_qmp_max"],
         _) = save_job(g, log, disk)

        if qemu != STOCK_QEMU:
            g.wait_progress()
            (res["instant_paused"], res["instant_total"], res["instant_qmp_max"],
             written) = save_job(g, log, disk, "instant")
            saved = g.cmd("query-migrate")["ram"]["normal-bytes"]
            res["instant_bytes_ratio"] = written / saved
        if ONLY_SAVE:
            return

        g.wait_progress()
        log.clear()
        t0 = time.time()
        g.cmd("snapshot-load", job_id="load", tag="stopped", vmstate="disk0",
              devices=["disk0"])
        err, ev = wait_job(log, "load")
        if err:
            raise RuntimeError(f"snapshot-load: {err}")
        res["load_total"] = event_time(ev) - t0
        res["load_running"] = event_time(log.wait("RESUME", timeout=60)) - t0
        g.wait_progress()
        if qemu != STOCK_QEMU:
            try:
                lazy_snapshot_load(g, log, res)
            except Exception as e:  # pylint: disable=broad-except
                res["slazy_error"] = f"{type(e).__name__}: {e}"[:300]
            g.wait_progress()

        for key, caps in (("bg", {"background_snapshot": True}),
                          ("bgmr", snaptest.SAVE_CAPS["bg"])):
            path = os.path.join(workdir, f"{key}.mig")
            try:
                res[f"{key}_paused"], res[f"{key}_total"] = migrate_to_file(g, path, caps)
            except RuntimeError as e:
                res[f"{key}_error"] = str(e)
                continue
            g.wait_progress()
            # The source is not needed while its file is restored: stop
            # it, so that it does not take a CPU from the restore
            g.cmd("stop")
            restore_caps = {"mapped_ram": True} if "mapped_ram" in caps else {}
            try:
                (res[f"{key}_restore_running"],
                 res[f"{key}_restore_total"]) = restore_file(qemu, workdir, ram_mb, wl_mb,
                                                             path, restore_caps)
            except Exception as e:  # pylint: disable=broad-except
                res[f"{key}_restore_error"] = f"{type(e).__name__}: {e}"[:300]
            if key == "bgmr":
                try:
                    (res["lazy_restore_running"],
                     res["lazy_restore_total"]) = restore_file(
                         qemu, workdir, ram_mb, wl_mb, path, LAZY_TIMED_CAPS, extra=res)
                except Exception as e:  # pylint: disable=broad-except
                    res["lazy_restore_error"] = str(e)[:300]
            g.cmd("cont")
            os.unlink(path)


def fmt(v):
    if v is None:
        return "–"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def write_outputs(out, results, sizes):
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    lines = ["| metric | RAM | stock | ours | stock/ours |", "|---|---|---|---|---|"]
    for key, label, _ in METRICS:
        for size in sizes:
            s = results["stock"].get(str(size), {})
            o = results["ours"].get(str(size), {})
            sv, ov = s.get(key), o.get(key)
            ratio = f"{sv / ov:.2f}" if sv and ov else "–"
            prefix = key.rsplit("_", 1)[0]
            if sv is None and (s.get(f"{prefix}_error") or s.get(f"{prefix.split('_')[0]}_error")):
                sv_s = "fails"
            else:
                sv_s = fmt(sv)
            if ov is None and (o.get(f"{prefix}_error") or o.get(f"{prefix.split('_')[0]}_error")):
                ov_s = "fails"
            else:
                ov_s = fmt(ov)
            lines.append(f"| {label} | {size} GiB | {sv_s} | {ov_s} | {ratio} |")
    errors = []
    for which in ("stock", "ours"):
        for size, r in results[which].items():
            for k, v in r.items():
                if k.endswith("_error"):
                    errors.append(f"- {which}, {size} GiB, {k}: {v}")
    lines += ["", "Lazy restore of a file and lazy snapshot-load (ours only):", "",
              "| figure | RAM | ours |", "|---|---|---|"]
    for key, label, unit in LAZY_EXTRA + [(k, "snapshot-load lazy: " + l, u)
                                          for k, l, u in SLAZY_EXTRA]:
        for size in sizes:
            v = results["ours"].get(str(size), {}).get(key)
            lines.append(f"| {label} | {size} GiB | "
                         f"{'–' if v is None else f'{v:.3g} {unit}'} |")
    md = "\n".join(lines) + "\n"
    if errors:
        md += "\nFailures:\n" + "\n".join(errors) + "\n"
    md += f"\n{results['meta']}\n"
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)
    print(md)
    plot(out, results, sizes)


def plot(out, results, sizes):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    keys = [m for m in METRICS]
    fig, axes = plt.subplots(len(keys) // 2, 2, figsize=(12, 3 * len(keys) // 2))
    for ax, (key, label, _) in zip(axes.flat, keys):
        for i, which in enumerate(("stock", "ours")):
            vals = [results[which].get(str(s), {}).get(key) or 0 for s in sizes]
            xs = [j + (i - 0.5) * 0.38 for j in range(len(sizes))]
            ax.bar(xs, vals, width=0.38, label=which)
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels([f"{s} GiB" for s in sizes])
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("seconds")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "results.png"), dpi=80)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,2,4,8", help="guest RAM sizes in GiB")
    ap.add_argument("--out", default=os.path.join(snaptest.BUILD, "bench"))
    ap.add_argument("--only-save", action="store_true",
                    help="measure snapshot-save (stopped and instant) alone")
    args = ap.parse_args()
    global ONLY_SAVE  # pylint: disable=global-statement
    ONLY_SAVE = args.only_save
    sizes = [int(s) for s in args.sizes.split(",")]
    os.makedirs(args.out, exist_ok=True)
    for q in (STOCK_QEMU, snaptest.QEMU):
        if not os.path.exists(q):
            sys.exit(f"bench: {q} is not built")
    results = {"stock": {}, "ours": {},
               "meta": f"accel {snaptest.ACCEL}, workload dirties 75% of RAM, "
                       f"measured {time.strftime('%Y-%m-%d %H:%M')} on {os.uname().nodename}"}
    for size in sizes:
        for which, qemu in (("stock", STOCK_QEMU), ("ours", snaptest.QEMU)):
            workdir = tempfile.mkdtemp(prefix=f"qis-bench-{which}-{size}-", dir="/var/tmp")
            res = results[which].setdefault(str(size), {})
            print(f"bench: {which} {size} GiB ...", flush=True)
            try:
                run_one(qemu, size, workdir, res)
            except Exception as e:  # pylint: disable=broad-except
                res["run_error"] = f"{type(e).__name__}: {e}"[:500]
                traceback.print_exc()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            print(f"bench: {which} {size} GiB: " +
                  ", ".join(f"{k}={v if isinstance(v, str) else round(v, 4)}"
                            for k, v in res.items()), flush=True)
            write_outputs(args.out, results, sizes)


if __name__ == "__main__":
    main()
