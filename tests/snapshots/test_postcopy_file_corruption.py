"""
Postcopy from file with untrusted files (issue 9, item 6): a corruption
campaign over one real mapped-ram file.

One file is saved from the test guest, stopped first so that its RAM is
known (dumped before the save).  Then CASES seeded random corruptions of
it are made, each reproducible from its case number alone (the RNG of
case N is random.Random(f"{SEED}:{N}") and positions are drawn within
regions that are read from the file itself), and each corrupted file is
loaded twice, by a new destination started paused (-S) with
-incoming defer (no kernel boots): lazily (postcopy-ram + mapped-ram,
postcopy from file) and eagerly (mapped-ram alone).

Regions of the file:
  index    the stream up to the first bitmap (file header, configuration,
           RAM section start) and every RAMBlock's record: id, length and
           MappedRamHeader
  bitmap   the page bitmaps (flips: pc.ram's)
  pages    the page areas (flips: pc.ram's, mostly pages the file holds)
  device   the device state: the stream after the pages of the last block,
           up to QEMU_VM_EOF
  vmdesc   the JSON description of the device state at the end of the
           file, which the loader skips (the rest of the tail)
Kinds: flip (1-8 random bytes XORed with a random non-zero byte),
truncate (the file ends at a random offset in the region) and extend
(random bytes inserted at a random offset in the region, everything after
moves on; in vmdesc, appended at the end of the file).

Each load must end in one of:
  refused   migration status failed before the guest could start (no
            postcopy-active), QEMU still answers QMP, the guest did not
            run, and QEMU quits with 0 when asked;
  loaded    status completed, and guest RAM (pc.ram and pc.bios, dumped
            with pmemsave) is exactly what the file says: the source's
            RAM, except that byte flips in pc.ram's page area or bitmap,
            which the format cannot detect (no checksums), change exactly
            the pages whose loaded bytes they changed.
Anything else fails the test: a crash, QEMU exiting by itself, no final
status within LOAD_TIMEOUT (a hang), a lazy load that pauses or fails
after it started, different RAM that the corruption does not explain, a
load that changed the file.  Lazy and eager outcomes are compared and
their disagreements reported.  The summary table is printed (run with
-s to see it) whatever happens.

Each run saves its own file: the index, bitmap and page areas lie at the
same offsets every time, so a case corrupts the same fields; which pages
the file holds and the device state differ a little from run to run.
To rebuild one case from the snapshot of a run (kept with a failed run):
    python3 test_postcopy_file_corruption.py SNAP.mig CASE OUT.mig
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from snaptest import PAGE, Guest, exception_chain, exit_status, tail

RAM_MB = 256
WL_MB = 64
SEED = 20261201
LOAD_TIMEOUT = 60            # seconds for a load and the RAM dump
BIOS_GPA = 0xfffc0000        # pc.bios, mapped below 4 GiB
MODES = {
    "lazy": {"postcopy_ram": True, "mapped_ram": True},
    "eager": {"mapped_ram": True},
}
REGIONS = ("index", "bitmap", "pages", "device", "vmdesc")
KINDS = ("flip", "truncate", "extend")
# cases per (region, kind): 200 in all
PLAN = {
    ("index", "flip"): 36, ("bitmap", "flip"): 30, ("pages", "flip"): 30,
    ("device", "flip"): 34, ("vmdesc", "flip"): 6,
    ("index", "truncate"): 8, ("bitmap", "truncate"): 8, ("pages", "truncate"): 8,
    ("device", "truncate"): 8, ("vmdesc", "truncate"): 4,
    ("index", "extend"): 6, ("bitmap", "extend"): 6, ("pages", "extend"): 6,
    ("device", "extend"): 6, ("vmdesc", "extend"): 4,
}
CASES = [rk for rk, n in PLAN.items() for _ in range(n)]
# Outcomes that are acceptable (the others fail the test)
OK_OUTCOMES = ("refused", "exact", "as-predicted")


# -- the file's layout ----------------------------------------------------

def parse_layout(path):
    """
    The RAM index of a mapped-ram file, walked as the loader walks it
    (each block's record starts where the previous block's pages end),
    and the regions of the file as lists of (start, end) spans.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(1 << 20)
        idstr = b"pc.ram"
        pos = head.index(bytes([len(idstr)]) + idstr)
        # the RAM section start: be64 total RAM bytes | RAM_SAVE_FLAG_MEM_SIZE
        total = int.from_bytes(head[pos - 8:pos], "big") & ~0xfff
        blocks = []
        while total > 0:
            f.seek(pos)
            rec = f.read(256 + 8 + 28)
            n = rec[0]
            name = rec[1:1 + n].decode()
            used = int.from_bytes(rec[1 + n:9 + n], "big")
            hdr = rec[9 + n:37 + n]
            b = {"name": name, "record": pos, "used": used,
                 "version": int.from_bytes(hdr[0:4], "big"),
                 "page_size": int.from_bytes(hdr[4:12], "big"),
                 "bitmap_offset": int.from_bytes(hdr[12:20], "big"),
                 "pages_offset": int.from_bytes(hdr[20:28], "big")}
            assert b["version"] == 1 and b["page_size"] == PAGE, b
            assert b["bitmap_offset"] == pos + 37 + n, b
            b["bitmap_size"] = (used // PAGE + 63) // 64 * 8
            f.seek(b["bitmap_offset"])
            b["bitmap"] = f.read(b["bitmap_size"])
            blocks.append(b)
            total -= used
            pos = b["pages_offset"] + used
        f.seek(pos)
        rest = f.read()
    # The tail: device state up to QEMU_VM_EOF, then QEMU_VM_VMDESCRIPTION,
    # be32 length and the JSON up to the end of the file
    vmdesc = None
    i = rest.find(b"\x00\x06")
    while i >= 0:
        n = int.from_bytes(rest[i + 2:i + 6], "big")
        if i + 6 + n == len(rest) and rest[i + 6:i + 7] == b"{":
            vmdesc = pos + i + 1
            break
        i = rest.find(b"\x00\x06", i + 1)
    assert vmdesc is not None, "no vmdesc at the end of the file"
    ram = blocks[0]
    assert ram["name"] == "pc.ram" and ram["used"] == RAM_MB << 20, ram
    regions = {
        "index": [(0, ram["bitmap_offset"])] +
                 [(b["record"], b["bitmap_offset"]) for b in blocks[1:]],
        "bitmap": [(b["bitmap_offset"], b["bitmap_offset"] + b["bitmap_size"])
                   for b in blocks],
        "pages": [(b["pages_offset"], b["pages_offset"] + b["used"]) for b in blocks],
        "device": [(pos, vmdesc)],
        "vmdesc": [(vmdesc, size)],
    }
    # flips stay where a pmemsave of pc.ram can see what they change
    flip_spans = dict(regions)
    flip_spans["bitmap"] = [regions["bitmap"][0]]
    flip_spans["pages"] = [regions["pages"][0]]
    present = [p for p in range(ram["used"] // PAGE) if bit(ram["bitmap"], p)]
    return {"size": size, "blocks": blocks, "regions": regions,
            "flip_spans": flip_spans, "present": present}


def bit(bitmap, page):
    """Bit PAGE of a mapped-ram bitmap (little-endian unsigned longs)."""
    return (bitmap[page // 8] >> (page % 8)) & 1


def pick(rng, spans):
    """A uniformly random offset in the union of SPANS."""
    total = sum(e - s for s, e in spans)
    x = rng.randrange(total)
    for s, e in spans:
        if x < e - s:
            return s + x
        x -= e - s
    raise AssertionError("unreachable")


def make_case(case, layout):
    """The corruption of case number CASE, as a JSON-able dict."""
    region, kind = CASES[case]
    seed = f"{SEED}:{case}"
    rng = random.Random(seed)
    c = {"case": case, "seed": seed, "region": region, "kind": kind}
    spans = layout["regions"][region]
    if kind == "flip":
        ram = layout["blocks"][0]
        flips = {}
        for _ in range(rng.randint(1, 8)):
            while True:
                if region == "pages" and rng.random() < 0.75:
                    # mostly in pages the file holds: those are loaded
                    off = ram["pages_offset"] + rng.choice(layout["present"]) * PAGE \
                        + rng.randrange(PAGE)
                else:
                    off = pick(rng, layout["flip_spans"][region])
                if off not in flips:
                    break
            flips[off] = rng.randint(1, 255)
        c["flips"] = sorted(flips.items())
    elif kind == "truncate":
        c["truncate"] = pick(rng, spans)
    else:
        n = rng.choice([rng.randint(1, 16), rng.randint(17, PAGE),
                        PAGE * rng.randint(1, 64)])
        off = layout["size"] if region == "vmdesc" else pick(rng, spans)
        c["insert"] = off
        c["insert_len"] = n
        c["insert_bytes"] = rng.randbytes(n).hex()
    return c


def describe(c):
    if c["kind"] == "flip":
        return "flip " + ", ".join(f"{o:#x}^{x:02x}" for o, x in c["flips"])
    if c["kind"] == "truncate":
        return f"truncate at {c['truncate']:#x}"
    return f"insert {c['insert_len']} bytes at {c['insert']:#x}"


def write_case(clean, c, out):
    """Write the corrupted file of case C, made from file CLEAN, to OUT."""
    if c["kind"] == "extend":
        off = c["insert"]
        with open(clean, "rb") as fi, open(out, "wb") as fo:
            left = off
            while left:
                chunk = fi.read(min(left, 8 << 20))
                fo.write(chunk)
                left -= len(chunk)
            fo.write(bytes.fromhex(c["insert_bytes"]))
            shutil.copyfileobj(fi, fo, 8 << 20)
        return
    shutil.copyfile(clean, out)
    if c["kind"] == "truncate":
        os.truncate(out, c["truncate"])
        return
    with open(out, "r+b") as f:
        for off, x in c["flips"]:
            f.seek(off)
            b = f.read(1)[0]
            f.seek(off)
            f.write(bytes([b ^ x]))


def predict(layout, c, path):
    """
    The pc.ram pages a load of the corrupted file PATH must change, as
    {page: content}: only byte flips in pc.ram's pages or bitmap change
    what a load gives.  A page whose bit is set is read from the file at
    pages_offset + page * PAGE; one whose bit is clear is zero (a lazy
    load places a zero page; on an incoming QEMU, RAM starts zeroed).
    """
    if c["kind"] != "flip" or c["region"] not in ("pages", "bitmap"):
        return {}
    ram = layout["blocks"][0]
    po, bo = ram["pages_offset"], ram["bitmap_offset"]
    pages = set()
    if c["region"] == "pages":
        for off, _ in c["flips"]:
            p = (off - po) // PAGE
            if bit(ram["bitmap"], p):
                pages.add(p)
    else:
        for off, x in c["flips"]:
            for b in range(8):
                if x >> b & 1:
                    pages.add((off - bo) * 8 + b)
    out = {}
    with open(path, "rb") as f:
        f.seek(bo)
        bitmap = f.read(ram["bitmap_size"])
        for p in sorted(pages):
            if p >= ram["used"] // PAGE:
                continue            # bits past the end of the block
            if bit(bitmap, p):
                f.seek(po + p * PAGE)
                out[p] = f.read(PAGE).ljust(PAGE, b"\0")
            else:
                out[p] = bytes(PAGE)
    return out


def differing_pages(a, b):
    """Page indexes at which two equally long byte strings differ."""
    out = []
    ma, mb = memoryview(a), memoryview(b)
    step = 256 * PAGE
    for s in range(0, len(a), step):
        if ma[s:s + step] != mb[s:s + step]:
            for p in range(s, min(s + step, len(a)), PAGE):
                if ma[p:p + PAGE] != mb[p:p + PAGE]:
                    out.append(p // PAGE)
    return out


# -- loads ------------------------------------------------------------------

def gdb_backtrace(pid):
    try:
        r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx",
                            "-ex", "thread apply all bt"],
                           capture_output=True, text=True, timeout=60, check=False)
        return r.stdout[-6000:]
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(no backtrace: {e})"


def first_error(log):
    """QEMU's first error line in LOG, without the program name."""
    for line in log.splitlines():
        if ": " in line and "qemu-system" in line.split(": ", 1)[0]:
            return line.split(": ", 1)[1][:160]
    return ""


def load(workdir, scratch, path, mode, src_ram, src_bios, expect):
    """
    Load PATH in MODE on a new paused destination; returns a dict with
    "outcome" (refused, exact, as-predicted, or a failure: crash, exit,
    hang, paused, late-failure, unexplained, bad-quit, error), "detail",
    and on a completed load "digest" (a hash of the RAM it gave).
    """
    res = {"mode": mode, "outcome": None, "detail": "", "error": ""}
    stat0 = os.stat(path)
    dst = Guest(workdir, name=mode, ram_mb=RAM_MB, wl_mb=WL_MB, incoming="defer",
                paused=True)
    dst.launch()
    pid = dst.vm.get_pid()
    hung = {}

    def watchdog():
        hung["bt"] = gdb_backtrace(pid)
        hung["info"] = "no final status"
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(LOAD_TIMEOUT, watchdog)
    timer.start()
    status, info = None, {}
    try:
        dst.set_caps(events=True, **MODES[mode])
        dst.cmd("migrate-incoming", uri=f"file:{path}", exit_on_error=False)
        status, info = dst.wait_migration(
            timeout=LOAD_TIMEOUT * 2, interval=0.02,
            until=("completed", "failed", "cancelled", "postcopy-paused"))
        res["status"] = status
        res["error"] = info.get("error-desc", "")
        events = [e["data"]["status"] for e in dst.vm.get_qmp_events(wait=False)
                  if e["event"] == "MIGRATION"]
        res["events"] = events
        run_state = dst.status()        # QEMU answers QMP
        if status == "completed":
            ram_dump = os.path.join(scratch, f"{mode}.ram")
            bios_dump = os.path.join(scratch, f"{mode}.bios")
            dst.dump_ram(ram_dump)
            dst.cmd("pmemsave", val=BIOS_GPA, size=len(src_bios), filename=bios_dump)
            with open(ram_dump, "rb") as f:
                ram = f.read()
            with open(bios_dump, "rb") as f:
                bios = f.read()
            os.unlink(ram_dump)
            os.unlink(bios_dump)
            diff = differing_pages(src_ram, ram)
            want = {p: v for p, v in expect.items() if v != src_ram[p * PAGE:(p + 1) * PAGE]}
            bad = [p for p in diff if p not in want or
                   ram[p * PAGE:(p + 1) * PAGE] != want[p]]
            missing = [p for p in want if p not in diff]
            res["diff"] = len(diff)
            res["digest"] = hash((ram, bios))
            if bios != src_bios:
                res["outcome"] = "unexplained"
                res["detail"] = (f"pc.bios differs at pages "
                                 f"{differing_pages(src_bios, bios)[:10]}")
            elif bad or missing:
                res["outcome"] = "unexplained"
                res["detail"] = (f"{len(diff)} pc.ram pages differ from the source, "
                                 f"{len(want)} predicted; unexplained: "
                                 f"{[hex(p * PAGE) for p in bad[:10]]}, "
                                 f"predicted but not loaded: "
                                 f"{[hex(p * PAGE) for p in missing[:10]]}")
            elif diff:
                res["outcome"] = "as-predicted"
                res["detail"] = f"{len(diff)} pc.ram pages differ as predicted"
            else:
                res["outcome"] = "exact"
            if mode == "lazy" and "postcopy-active" not in events:
                res["outcome"] = "error"
                res["detail"] += f"; completed without postcopy-active: {events}"
        elif status == "failed":
            if "postcopy-active" in events:
                res["outcome"] = "late-failure"
                res["detail"] = f"failed after the guest could start: {events}"
            elif run_state == "running":
                res["outcome"] = "error"
                res["detail"] = "failed, yet the guest runs"
            else:
                res["outcome"] = "refused"
        else:
            res["outcome"] = "paused" if status == "postcopy-paused" else "error"
            res["detail"] = f"status {status}: {info}"
        if "WL " in dst.console():
            res["outcome"] = "error"
            res["detail"] += "; the guest ran"
    except Exception as e:  # pylint: disable=broad-except
        # QEMU died, or the watchdog killed it: let it be reaped
        res["outcome"] = "error"
        res["detail"] = f"{type(e).__name__}: {str(e)[:300]}"
        dst.exited_within(5)
    finally:
        timer.cancel()
        timer.join()
    if hung:
        res["outcome"] = "hang"
        res["detail"] = (f"no final status within {LOAD_TIMEOUT} s (last status "
                         f"{status}); killed.\n--- gdb ---\n{hung['bt']}")
        dst.expect_exit(-signal.SIGKILL)
    elif not dst.vm.is_running():
        code = dst.vm.exitcode()
        res["outcome"] = "crash" if code is not None and code < 0 else "exit"
        res["detail"] = f"QEMU ended by itself: {exit_status(code)}; " + res["detail"]
        dst.expect_exit(code)
    elif res["outcome"] == "paused":
        dst.kill()
    try:
        dst.shutdown()
    except Exception as e:  # pylint: disable=broad-except
        if dst.vm.exitcode() == 0 and any(isinstance(x, UnicodeDecodeError)
                                          for x in exception_chain(e)):
            # QEMU quit with 0, but its log is not UTF-8: it printed bytes
            # of the corrupted file (a RAM block or machine type name), and
            # QEMUMachine cannot read the log back
            res["raw_log"] = True
        else:
            if res["outcome"] in OK_OUTCOMES:
                res["outcome"] = "bad-quit"
            res["detail"] += f"; at quit: {str(e)[:600]}"
    log = dst.qemu_log()
    res["log"] = tail(log, 2000)
    res["reason"] = first_error(log) or res["error"]
    stat1 = os.stat(path)
    if (stat1.st_size, stat1.st_mtime_ns) != (stat0.st_size, stat0.st_mtime_ns):
        res["outcome"] = "error"
        res["detail"] += "; the load changed the file"
    return res


# -- the test ---------------------------------------------------------------

@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    """
    A mapped-ram file of a stopped guest, its layout, and the guest's
    pc.ram and pc.bios as they were when it was saved.
    """
    workdir = str(tmp_path_factory.mktemp("corruptsnap", numbered=True))
    path = os.path.join(workdir, "snap.mig")
    ram_path = os.path.join(workdir, "src.ram")
    bios_path = os.path.join(workdir, "src.bios")
    with Guest(workdir, ram_mb=RAM_MB, wl_mb=WL_MB) as src:
        src.wait_ready()
        src.wait_progress()
        src.cmd("stop")
        src.dump_ram(ram_path)
        src.cmd("pmemsave", val=BIOS_GPA, size=256 << 10, filename=bios_path)
        src.migrate_to_file(path, mapped_ram=True)
    with open(ram_path, "rb") as f:
        ram = f.read()
    with open(bios_path, "rb") as f:
        bios = f.read()
    os.unlink(ram_path)
    os.unlink(bios_path)
    layout = parse_layout(path)
    # What predict() assumes: pc.ram is the pages the bitmap has, read
    # from the file, and zero elsewhere
    rb = layout["blocks"][0]
    zero = bytes(PAGE)
    with open(path, "rb") as f:
        for p in range(rb["used"] // PAGE):
            have = ram[p * PAGE:(p + 1) * PAGE]
            if bit(rb["bitmap"], p):
                f.seek(rb["pages_offset"] + p * PAGE)
                assert f.read(PAGE) == have, f"pc.ram page {p:#x} is not the file's"
            else:
                assert have == zero, f"pc.ram page {p:#x} is absent but not zero"
    return {"dir": workdir, "path": path, "ram": ram, "bios": bios, "layout": layout}


@pytest.fixture
def scratch(workdir):
    """A scratch directory in memory if there is one, for files of 256 MiB."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else workdir
    path = tempfile.mkdtemp(prefix="qis-corrupt-", dir=base)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_clean_file_loads_exactly(workdir, scratch, snap):
    """The oracle itself: the uncorrupted file loads byte-exact both ways."""
    for mode in MODES:
        r = load(workdir, scratch, snap["path"], mode, snap["ram"], snap["bios"], {})
        assert r["outcome"] == "exact", r


@pytest.mark.parametrize("mode", list(MODES))
def test_bitmap_moved_by_one_byte(workdir, scratch, snap, mode):
    """
    One flipped bit in the index, aimed rather than drawn: the low bit of
    pc.bios's bitmap_offset.  The bitmap is then read one byte further
    on, still before the pages, so no check refuses it, and the last 8
    pages of pc.bios (the reset vector) load as zero.  QEMU always writes
    the bitmap right after its header, so a loader can tell; the file
    must be refused, or load exactly.
    """
    bios = next(b for b in snap["layout"]["blocks"] if b["name"] == "pc.bios")
    # MappedRamHeader (28 bytes, just before the bitmap): be32 version,
    # be64 page_size, be64 bitmap_offset, be64 pages_offset
    low = bios["bitmap_offset"] - 28 + 4 + 8 + 7
    c = {"case": None, "seed": None, "region": "index", "kind": "flip",
         "flips": [(low, 0x01)]}
    path = os.path.join(scratch, "moved.mig")
    write_case(snap["path"], c, path)
    r = load(workdir, scratch, path, mode, snap["ram"], snap["bios"], {})
    assert r["outcome"] in ("refused", "exact"), \
        f"{describe(c)}: {r['outcome']}: {r['detail']}\n{r['log']}"


def summary(results, elapsed):
    cols = ("refused", "exact", "as-predicted", "FAIL")
    lines = [f"corruption campaign: {len(results)} files x 2 loads, seed {SEED}, "
             f"{elapsed:.0f} s",
             f"{'region':8} {'kind':9} {'n':>3} | " +
             " | ".join(f"{m:^33}" for m in MODES) + " | agree",
             f"{'':8} {'':9} {'':>3} | " +
             " | ".join(" ".join(f"{c:>7.7}" for c in ("refused", "exact", "diff", "FAIL"))
                        + " " for _ in MODES) + " |"]
    total = {m: dict.fromkeys(cols, 0) for m in MODES}
    total_dis = 0
    for region in REGIONS:
        for kind in KINDS:
            rs = [r for r in results if (r["region"], r["kind"]) == (region, kind)]
            if not rs:
                continue
            cells = []
            for m in MODES:
                cnt = dict.fromkeys(cols, 0)
                for r in rs:
                    o = r[m]["outcome"]
                    cnt[o if o in OK_OUTCOMES else "FAIL"] += 1
                for k in cols:
                    total[m][k] += cnt[k]
                cells.append(" ".join(f"{cnt[c]:>7}" for c in cols) + " ")
            dis = sum(1 for r in rs if not r["agree"])
            total_dis += dis
            lines.append(f"{region:8} {kind:9} {len(rs):>3} | " + " | ".join(cells)
                         + f" | {len(rs) - dis}/{len(rs)}")
    lines.append(f"{'total':18} {len(results):>3} | " + " | ".join(
        " ".join(f"{total[m][c]:>7}" for c in cols) + " " for m in MODES)
        + f" | {len(results) - total_dis}/{len(results)}")
    lines.append("(diff: loaded with pc.ram differing from the source exactly "
                 "where the flipped bytes predict)")
    return "\n".join(lines)


def reasons(results):
    """How often each refusal reason came, per region (numbers and names elided)."""
    count = {}
    for r in results:
        for m in MODES:
            if r[m]["outcome"] == "refused":
                why = re.sub(r"'[^']*'|\"[^\"]*\"", "'*'", r[m]["reason"])
                why = re.sub(r"0x[0-9a-fA-F]+|\d+", "N", why)
                why = re.sub(r"[^ -~]", "?", why)[:100]
                n = count.setdefault((r["region"], why), dict.fromkeys(MODES, 0))
                n[m] += 1
    lines = ["refusal reasons (region, " + "/".join(MODES) + " count, first error):"]
    for (region, why), n in sorted(count.items()):
        lines.append(f"  {region:7} " + "/".join(f"{n[m]:<2}" for m in MODES) + f"  {why}")
    raw = sum(1 for r in results for m in MODES if r[m].get("raw_log"))
    if raw:
        lines.append(f"{raw} loads printed bytes of the file that are not UTF-8 "
                     "(names from the index) in QEMU's log")
    return "\n".join(lines)


def agree(a, b):
    if a["outcome"] in OK_OUTCOMES and b["outcome"] in OK_OUTCOMES:
        if a["outcome"] == "refused" or b["outcome"] == "refused":
            return a["outcome"] == b["outcome"]
        return a.get("digest") == b.get("digest")
    return a["outcome"] == b["outcome"]


def test_corruption_campaign(workdir, scratch, snap):
    layout = snap["layout"]
    start = time.monotonic()
    results = []
    failures = []
    corrupt = os.path.join(scratch, "corrupt.mig")
    kept = 0
    try:
        for case in range(len(CASES)):
            c = make_case(case, layout)
            write_case(snap["path"], c, corrupt)
            expect = predict(layout, c, corrupt)
            r = dict(c, what=describe(c))
            for mode in MODES:
                r[mode] = load(workdir, scratch, corrupt, mode, snap["ram"],
                               snap["bios"], expect)
            r["agree"] = agree(r["lazy"], r["eager"])
            results.append(r)
            bad = [m for m in MODES if r[m]["outcome"] not in OK_OUTCOMES]
            if bad:
                failures.append(r)
                if kept < 3:
                    kept += 1
                    shutil.copyfile(corrupt, os.path.join(workdir, f"case{case}.mig"))
            print(f"case {case:3} {c['region']:6} {c['kind']:8} "
                  f"lazy={r['lazy']['outcome']:12} eager={r['eager']['outcome']:12} "
                  f"{'' if r['agree'] else 'DISAGREE '}{r['what'][:70]}", flush=True)
    finally:
        elapsed = time.monotonic() - start
        print()
        print(summary(results, elapsed))
        print(f"{elapsed / max(1, 2 * len(results)):.2f} s per load")
        print(reasons(results))
        dis = [r for r in results if not r["agree"]]
        if dis:
            print("lazy and eager disagree:")
            for r in dis:
                print(f"  case {r['case']} ({r['seed']}) {r['region']} {r['kind']}: "
                      f"{r['what'][:80]}\n"
                      f"    lazy {r['lazy']['outcome']}: "
                      f"{(r['lazy']['reason'] or r['lazy']['detail'])[:140]}\n"
                      f"    eager {r['eager']['outcome']}: "
                      f"{(r['eager']['reason'] or r['eager']['detail'])[:140]}")
        with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
            json.dump([{k: v for k, v in r.items() if k != "insert_bytes"}
                       for r in results], f, indent=1, default=str)
    report = []
    for r in failures:
        for m in MODES:
            x = r[m]
            if x["outcome"] in OK_OUTCOMES:
                continue
            report.append(
                f"case {r['case']} (seed {r['seed']}), {r['region']} {r['kind']}: "
                f"{r['what']}\n  {m}: {x['outcome']}: {x['detail']}\n"
                f"  status {x.get('status')}, events {x.get('events')}, "
                f"error {x['error']!r}\n  --- QEMU log (tail) ---\n"
                + "\n".join("  " + l for l in x["log"].splitlines()[-15:]))
    if report:
        print("\n\n".join(report))
    assert not failures, (
        f"{len(failures)} of {len(results)} corrupted files crashed, hung or "
        f"loaded wrong RAM (snapshot {snap['path']}, details in "
        f"{workdir}/results.json):\n" + "\n\n".join(report)[:20000])


def main(argv):
    """Rebuild case CASE of the campaign from snapshot SNAP into OUT."""
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    snap_path, case, out = argv[1], int(argv[2]), argv[3]
    layout = parse_layout(snap_path)
    c = make_case(case, layout)
    write_case(snap_path, c, out)
    print(json.dumps({k: v for k, v in c.items() if k != "insert_bytes"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
