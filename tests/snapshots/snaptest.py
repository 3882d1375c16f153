"""
Test harness for QEMU Instant Snapshots.

Boots the test guest (Debian's cloud kernel + our busybox initramfs running
the workload from guest/workload.c) under QEMU's own python library
(qemu.machine / qemu.qmp from the assembled tree), and offers helpers for
snapshot jobs, console parsing and RAM dumps.

A test fails when its QEMU ends otherwise than by quitting with code 0
when asked to at the end: killed by a signal (a crash), exited by itself
or with an error code, or hung on the way out (it is then killed).  The
error names the exit status and shows QEMU's log and the console's tail.
A test that means QEMU to end otherwise says so first: Guest.kill(),
Guest.expect_exit(code) or Guest.wait_exit(code).

Environment:
  QIS_BUILD_DIR   build directory of the project (default: <repo>/build)
  QIS_QEMU        qemu-system-x86_64 to test (default: our build)
  QIS_QEMU_IMG    qemu-img to use (default: our build)
  ACCEL           tcg (default) or kvm
"""

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("QIS_BUILD_DIR", os.path.join(TOP, "build"))
TREE = os.path.join(BUILD, "qemu")
sys.path.insert(0, os.path.join(TREE, "python"))

# pylint: disable=wrong-import-position
from qemu.machine import QEMUMachine  # noqa: E402
from qemu.qmp.legacy import QEMUMonitorProtocol  # noqa: E402,F401

QEMU = os.environ.get("QIS_QEMU", os.path.join(TREE, "build", "qemu-system-x86_64"))
QEMU_IMG = os.environ.get("QIS_QEMU_IMG", os.path.join(TREE, "build", "qemu-img"))
KERNEL = os.path.join(BUILD, "guest", "vmlinuz")
INITRD = os.path.join(BUILD, "guest", "initramfs.cpio.gz")
ACCEL = os.environ.get("ACCEL", "tcg")
# The unpatched 10.2.2 tree that make check and make bench build beside ours
STOCK_QEMU = os.path.join(BUILD, "stock", "build", "qemu-system-x86_64")

PAGE = 4096

# Capabilities of each way to write a mapped-ram file that a lazy load reads
SAVE_CAPS = {
    "precopy": {"mapped_ram": True},
    "multifd": {"mapped_ram": True, "multifd": True},
    "bg": {"background_snapshot": True, "mapped_ram": True},
}
# Capabilities of a destination that loads such a file lazily (postcopy
# from file)
LAZY_CAPS = {"postcopy_ram": True, "mapped_ram": True}
# Statuses at which a migration has ended
MIGRATION_END = ("completed", "failed", "cancelled")

# Guests launched and not yet shut down (conftest fails a test that
# leaves one behind)
LIVE_GUESTS = set()


class GuestError(Exception):
    pass


class ShutdownError(GuestError):
    """QEMU did not end as the test expected: it died by a signal, exited
    by itself or with an error code, or hung when asked to quit."""


def caps_arg(caps):
    """The capabilities argument of migrate-set-capabilities for CAPS (_ for -)."""
    return [{"capability": k.replace("_", "-"), "state": v} for k, v in caps.items()]


def wait_until(cond, timeout, what, interval=0.05):
    """
    Poll COND until it returns something true, and return that; raise
    GuestError naming WHAT after TIMEOUT seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise GuestError(f"timeout ({timeout} s) waiting for {what}")
        time.sleep(interval)


def exit_status(code):
    """An exit code of subprocess, in words."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (exit code {code})"
    return f"exit code {code}"


def exception_chain(exc):
    """EXC and the exceptions it was raised from or while handling."""
    chain = []
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def tail(text, chars=3000):
    """The end of TEXT, at most CHARS characters of it."""
    text = (text or "").rstrip()
    if not text:
        return "(empty)"
    return text if len(text) <= chars else "[...]\n" + text[-chars:]


def qemu_img(*args):
    subprocess.run([QEMU_IMG, *args], check=True, stdout=subprocess.DEVNULL)


def create_qcow2(path, size="4G"):
    qemu_img("create", "-q", "-f", "qcow2", path, size)


def snapshots_in(path):
    """Internal snapshots of a qcow2 image, as qemu-img reports them."""
    out = subprocess.run([QEMU_IMG, "snapshot", "-l", "-U", path],
                         check=True, capture_output=True, text=True).stdout
    tags = []
    for line in out.splitlines()[2:]:
        fields = line.split()
        if len(fields) >= 2:
            tags.append(fields[1])
    return tags


class Guest:
    """
    One QEMU process running the test guest.

    ram_mb: guest RAM; wl_mb: memory the workload fills and keeps rewriting;
    wl_rate: page rewrites per second (0: as fast as it can).
    wl_report_ms: how often the workload prints its progress.
    disk: path of a qcow2 image attached as block node "disk0" (created if
    missing), or None.
    accel: tcg or kvm (default: $ACCEL).  kernel: False boots no kernel:
    the firmware finds no boot device and idles (no workload runs).
    """

    def __init__(self, workdir, name="vm", ram_mb=512, wl_mb=64, seed=1,
                 wl_rate=0, wl_report_ms=1000, disk=None, qemu=None, extra_args=(),
                 incoming=None, paused=False, machine="pc", accel=None, kernel=True):
        self.workdir = workdir
        self.name = name
        self._launched = False
        self._ended = False
        self._expected_exit = None      # see expect_exit()
        self.ram_mb = ram_mb
        self.wl_mb = wl_mb
        self.console_path = os.path.join(workdir, f"{name}-console.log")
        self._console_pos = 0
        self._console_buf = ""
        self.disk = disk
        if disk and not os.path.exists(disk):
            create_qcow2(disk)
        accel = accel or ACCEL
        args = [
            "-machine", machine, "-accel", accel, "-cpu", "max" if accel == "tcg" else "host",
            "-m", str(ram_mb), "-smp", "1", "-nodefaults",
            "-serial", f"file:{self.console_path}",
            "-no-reboot",
        ]
        if kernel:
            args += ["-kernel", KERNEL, "-initrd", INITRD,
                     "-append", f"console=ttyS0 panic=-1 quiet wl.mb={wl_mb} wl.seed={seed} "
                                f"wl.rate={wl_rate} wl.report={wl_report_ms}"]
        else:
            args += ["-boot", "reboot-timeout=-1"]
        if disk:
            args += ["-blockdev", f"driver=file,filename={disk},node-name=file0",
                     "-blockdev", "driver=qcow2,file=file0,node-name=disk0"]
        if incoming:
            args += ["-incoming", incoming]
        if paused:
            args += ["-S"]
        args += list(extra_args)
        self.vm = QEMUMachine(qemu or QEMU, args=args, name=name,
                              base_temp_dir=workdir, log_dir=workdir,
                              qmp_timer=600)

    # -- life cycle --------------------------------------------------------
    # A Guest ends once: shutdown(), wait_exit() or kill().  Any end other
    # than "QEMU quit with code 0 when asked to" raises ShutdownError,
    # unless the test said beforehand that it wants it (expect_exit(),
    # or kill()).

    def launch(self):
        self.vm.launch()
        self._launched = True
        LIVE_GUESTS.add(self)
        return self

    def expect_exit(self, code):
        """
        QEMU is meant to end with exit code CODE (negative: killed by
        signal -CODE): by itself, or when asked to quit.  Without this,
        shutdown() fails unless QEMU quits with 0 when asked to.
        """
        self._expected_exit = code

    def shutdown(self, timeout=30):
        """
        Ask QEMU to quit (or reap it, if it has already exited) and check
        how it ended.  A QEMU that has not exited within TIMEOUT seconds of
        the quit (the command's reply and then the exit each get TIMEOUT)
        is killed.  Raises ShutdownError, with QEMU's exit status, its log
        and the console's tail, if QEMU hung, died by a signal, exited by
        itself or exited with an error code, and that was not expected.
        Does nothing if the Guest has already ended.
        """
        self._end(timeout, ask=True)

    def wait_exit(self, code, timeout=60):
        """
        QEMU is to exit by itself now with exit code CODE: wait for it,
        without asking it to quit.  Raises ShutdownError (and kills QEMU)
        if it does not exit within TIMEOUT seconds, or ends otherwise.
        """
        self.expect_exit(code)
        self._end(timeout, ask=False)

    def kill(self, sig=signal.SIGKILL, timeout=30):
        """
        Kill QEMU with signal SIG on purpose (as a crash or a power cut
        would) and wait until it is gone; its death by SIG is expected.
        """
        pid = self.vm.get_pid()
        if pid is None:
            raise GuestError(f"{self.name}: QEMU is not running, cannot kill it")
        self.expect_exit(-sig)
        os.kill(pid, sig)
        self._end(timeout, ask=False)

    def _end(self, timeout, ask):
        if not self._launched or self._ended:
            return
        self._ended = True
        LIVE_GUESTS.discard(self)
        popen = self.vm._popen  # pylint: disable=protected-access
        exited_before = popen.poll() is not None
        start = time.monotonic()
        error = None
        try:
            conn = self.vm._qmp_connection  # pylint: disable=protected-access
            if conn is not None:
                # bound the quit command too: by default it waits forever
                conn.settimeout(timeout)
            if ask and not exited_before:
                self.vm.shutdown(timeout=timeout)
            else:
                self.vm.wait(timeout=timeout)
        except Exception as e:  # pylint: disable=broad-except
            error = e
        finally:
            # Whatever happened above, leave no QEMU behind
            if popen.poll() is None:
                popen.kill()
                try:
                    popen.wait(timeout=60)
                except subprocess.TimeoutExpired as e:
                    error = e
        elapsed = time.monotonic() - start
        if popen.poll() is None:
            problem = "QEMU is still there 60 s after SIGKILL (stuck in the kernel?)"
        else:
            problem = self._end_problem(error, exited_before, ask, timeout, elapsed)
        if problem:
            raise ShutdownError(self._end_report(problem, popen.pid, error)) from error

    def _end_problem(self, error, exited_before, ask, timeout, elapsed):
        """What is wrong with how QEMU ended, or None."""
        code = self.vm.exitcode()
        expected = self._expected_exit
        causes = exception_chain(error)
        if any(isinstance(c, (subprocess.TimeoutExpired, TimeoutError)) for c in causes):
            how = "after it was asked to quit" if ask and not exited_before else \
                "while the test waited for it to exit"
            return (f"QEMU hung: it did not exit within {timeout} s {how} "
                    f"({elapsed:.1f} s in all), so it was killed")
        if expected is not None:
            if code != expected:
                return (f"QEMU ended with {exit_status(code)}; "
                        f"the test expected {exit_status(expected)}")
            return None
        if code is not None and code < 0:
            return f"QEMU died: {exit_status(code)}"
        if exited_before:
            return f"QEMU exited by itself before the test ended, with {exit_status(code)}"
        if code != 0:
            return f"QEMU exited with {exit_status(code)} when asked to quit"
        if error is not None:
            return "QEMU did not shut down gracefully"
        return None

    def _end_report(self, problem, pid, error):
        lines = [f"{self.name} (pid {pid}): {problem}",
                 f"exit status: {exit_status(self.vm.exitcode())}"]
        if error is not None:
            lines.append("QEMUMachine: " + " <- ".join(
                f"{type(e).__name__}: {e}".strip() for e in exception_chain(error)))
        lines += ["--- QEMU log (tail) ---", tail(self.qemu_log()),
                  "--- console (tail) ---", tail(self.console())]
        return "\n".join(lines)

    @contextlib.contextmanager
    def ended_on_error(self):
        """
        Shut QEMU down if the block raises, keeping the block's exception
        (for helpers that hand a launched Guest to their caller).
        """
        try:
            yield self
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise

    def __enter__(self):
        """Launch QEMU, unless a helper already did; shut it down at the end."""
        if not self._launched:
            self.launch()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            self.shutdown()
            return False
        # The block failed already: its exception is the one to report;
        # say what went wrong at shutdown beside it
        try:
            self.shutdown()
        except Exception as err:  # pylint: disable=broad-except
            note = f"and then, at shutdown of {self.name}: {err}"
            if hasattr(exc, "add_note"):
                exc.add_note(note)
            print(note, file=sys.stderr)
        return False

    def cmd(self, name, **args):
        return self.vm.cmd(name, **args)

    def qmp(self, name, **args):
        return self.vm.qmp(name, **args)

    def cmd_oob(self, name, **args):
        """
        Run NAME out-of-band: it does not wait for the main loop, which a
        TCG vCPU waiting for a postcopy page can hold.
        """
        self._oob_id = getattr(self, "_oob_id", 0) + 1
        r = self.vm._qmp.cmd_obj({"exec-oob": name, "arguments": args,  # pylint: disable=protected-access
                                  "id": f"oob-{self._oob_id}"})
        if "error" in r:
            raise GuestError(f"{name}: {r['error']['desc']}")
        return r["return"]

    def status(self):
        return self.cmd("query-status")["status"]

    def qemu_log(self):
        """What QEMU printed on stdout and stderr so far (also while it runs)."""
        log = self.vm.get_log()
        if log is not None:
            return log
        try:
            with open(os.path.join(self.workdir, f"{self.name}.log"),
                      encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- console -----------------------------------------------------------
    def console(self):
        """Everything the guest printed so far."""
        try:
            with open(self.console_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern, timeout=300, since=None):
        """
        Wait for a console line matching regex PATTERN that appears after
        offset SINCE (default: after the last match), return the match.
        """
        regex = re.compile(pattern)
        pos = self._console_pos if since is None else since
        deadline = time.monotonic() + timeout
        while True:
            text = self.console()
            m = regex.search(text, pos)
            if m:
                self._console_pos = m.end()
                return m
            self.check_no_corruption(text)
            if not self.vm.is_running():
                raise GuestError(f"QEMU exited ({exit_status(self.vm.exitcode())}) while "
                                 f"waiting for {pattern!r}:\n"
                                 f"{tail(self.qemu_log())}\n{text[-2000:]}")
            if time.monotonic() > deadline:
                raise GuestError(f"timeout waiting for {pattern!r}; console tail:\n"
                                 f"{text[-2000:]}")
            time.sleep(0.1)

    def console_mark(self):
        return len(self.console())

    @staticmethod
    def corruption_lines(text):
        return [l for l in text.splitlines() if "WL CORRUPT" in l or "WL ERROR" in l]

    def check_no_corruption(self, text=None):
        bad = self.corruption_lines(self.console() if text is None else text)
        if bad:
            raise GuestError("the guest workload found corrupt pages:\n" + "\n".join(bad[:20]))

    def wait_ready(self, timeout=600):
        return self.wait_console(r"WL READY pages=(\d+)", timeout=timeout, since=0)

    def wait_progress(self, timeout=120):
        return self.wait_console(r"WL PROGRESS pass=(\d+) rewrites=(\d+) errors=(\d+)",
                                 timeout=timeout)

    def wait_full_pass(self, timeout=600):
        """Wait until the workload has verified every page once more."""
        m = self.wait_console(r"WL PASS k=(\d+) errors=(\d+)", timeout=timeout)
        first = int(m.group(1))
        m = self.wait_console(rf"WL PASS k={first + 1} errors=(\d+)", timeout=timeout)
        return int(m.group(1))

    # -- RAM ---------------------------------------------------------------
    def dump_ram(self, path):
        """
        Write all of guest RAM (guest-physical 0 .. ram size; the pc machine
        maps up to 3 GiB of RAM contiguously from 0) to PATH and return its
        sha256.  The guest must be stopped for a meaningful result.
        """
        assert self.ram_mb <= 3072, "dump_ram only handles RAM below 4 GiB"
        self.cmd("pmemsave", val=0, size=self.ram_mb * 1024 * 1024, filename=path)
        return file_sha256(path)

    def assert_ram_is(self, path, want_sum, want_path):
        """
        Dump guest RAM to PATH (see dump_ram) and fail, naming the first
        differing pages, unless it equals the dump WANT_PATH (sha256
        WANT_SUM).
        """
        got = self.dump_ram(path)
        assert got == want_sum, f"RAM differs at pages {differing_pages(want_path, path)}"

    # -- migration ---------------------------------------------------------
    def set_caps(self, **caps):
        """migrate-set-capabilities; keyword names use _ for -."""
        self.cmd("migrate-set-capabilities", capabilities=caps_arg(caps))

    def wait_migration(self, timeout=1800, until=MIGRATION_END, interval=0.05, each=None):
        """
        Poll query-migrate until its status is one of UNTIL (default: the
        migration has ended); return (status, query-migrate).  EACH, if
        given, is called with every query-migrate answer.
        """
        deadline = time.monotonic() + timeout
        info = {}
        while True:
            if not self.vm.is_running():
                raise GuestError(f"QEMU exited ({exit_status(self.vm.exitcode())}) while "
                                 f"waiting for migration status {until}; last: {info}\n"
                                 f"{tail(self.qemu_log())}")
            info = self.cmd("query-migrate")
            if each:
                each(info)
            if info.get("status") in until:
                return info["status"], info
            if time.monotonic() > deadline:
                raise GuestError(f"timeout ({timeout} s) waiting for migration status "
                                 f"{until}; last: {info}")
            time.sleep(interval)

    def exited_within(self, seconds):
        """
        QEMU's exit code if it exits within SECONDS, else None (it is
        still running).  For checks that QEMU stays: see event_within.
        """
        try:
            return self.vm._popen.wait(timeout=seconds)  # pylint: disable=protected-access
        except subprocess.TimeoutExpired:
            return None

    def event_within(self, name, seconds, match=None):
        """
        The first QMP event NAME (matching MATCH) that comes within
        SECONDS, or None.  For checks that something does NOT happen:
        that can only be shown over a window of time.
        """
        try:
            # a float: the legacy QMP client waits forever for an int
            return self.vm.event_wait(name, timeout=float(seconds), match=match)
        except TimeoutError:
            return None

    def migrate_to_file(self, path, timeout=1800, **caps):
        """Migrate to file:PATH with CAPS set; return query-migrate at the end."""
        self.set_caps(**caps)
        self.cmd("migrate", uri=f"file:{path}")
        status, info = self.wait_migration(timeout)
        if status != "completed":
            raise GuestError(f"migrate to {path}: {status}: {info.get('error-desc')}")
        self.set_caps(**{k: False for k in caps})
        return info

    def incoming_file(self, path, timeout=1800, **caps):
        """
        On a guest started with incoming="defer": load file:PATH with CAPS
        set; return (status, query-migrate).
        """
        self.set_caps(**caps)
        self.cmd("migrate-incoming", uri=f"file:{path}")
        return self.wait_migration(timeout)

    # -- jobs --------------------------------------------------------------
    def run_job(self, command, job_id, timeout=900, **args):
        """
        Start a job-based command, wait for it to conclude and dismiss it.
        Returns None on success or the job's error string.
        """
        self.cmd(command, job_id=job_id, **args)
        return self.wait_job(job_id, timeout)

    def wait_job(self, job_id, timeout=900):
        deadline = time.monotonic() + timeout
        while True:
            # a float: the legacy QMP client waits forever for an int
            ev = self.vm.event_wait("JOB_STATUS_CHANGE",
                                    timeout=max(1.0, deadline - time.monotonic()),
                                    match={"data": {"id": job_id}})
            if ev is None:
                raise GuestError(f"timeout waiting for job {job_id}")
            if ev["data"]["status"] == "concluded":
                break
        return self.dismiss_job(job_id)

    def dismiss_job(self, job_id):
        """Dismiss concluded job JOB_ID; return its error string or None."""
        jobs = [j for j in self.cmd("query-jobs") if j["id"] == job_id]
        err = jobs[0].get("error") if jobs else None
        self.cmd("job-dismiss", id=job_id)
        return err


def save_to_file(workdir, path, ram_mb, wl_mb, stop_first=False, wl_report_ms=1000,
                 ready_timeout=600, **caps):
    """
    Boot a guest whose workload fills WL_MB (reporting its progress every
    WL_REPORT_MS), let it run, and migrate it to file:PATH with CAPS.
    With STOP_FIRST, stop it and dump its RAM first (the snapshot point);
    return (dump path, sha256), else (None, None).
    """
    with Guest(workdir, name="src", ram_mb=ram_mb, wl_mb=wl_mb,
               wl_report_ms=wl_report_ms) as src:
        src.wait_ready(timeout=ready_timeout)
        src.wait_progress()
        dump = digest = None
        if stop_first:
            src.cmd("stop")
            dump = os.path.join(workdir, "ram-src")
            digest = src.dump_ram(dump)
        src.migrate_to_file(path, **caps)
        src.check_no_corruption()
    return dump, digest


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def differing_pages(a, b, limit=10):
    """Page indexes at which two RAM dumps differ (at most LIMIT)."""
    out = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        idx = 0
        while len(out) < limit:
            ca, cb = fa.read(PAGE * 256), fb.read(PAGE * 256)
            if not ca and not cb:
                break
            if ca != cb:
                for i in range(0, max(len(ca), len(cb)), PAGE):
                    if ca[i:i + PAGE] != cb[i:i + PAGE]:
                        out.append(idx + i // PAGE)
                        if len(out) >= limit:
                            break
            idx += 256
    return out


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


# -- a throttled image, to hold snapshot I/O while a test looks ------------
# While held, a snapshot's I/O moves this many bytes per second
HOLD_BPS = 256 * 1024


def chain_args(image, hold=False):
    """
    -blockdev arguments: IMAGE (file0) under a throttle node (thr0, group
    tg0) under qcow2 node disk0.  HOLD: start with the write limit set.
    """
    limit = f",x-bps-write={HOLD_BPS}" if hold else ""
    return ["-object", f"throttle-group,id=tg0{limit}",
            "-blockdev", f"driver=file,filename={image},node-name=file0",
            "-blockdev", "driver=throttle,throttle-group=tg0,file=file0,node-name=thr0",
            "-blockdev", "driver=qcow2,file=thr0,node-name=disk0"]


def set_hold(g, hold):
    """Hold writes to thr0 (a background snapshot's) or let them go."""
    g.cmd("qom-set", path="tg0", property="limits",
          value={"bps-write": HOLD_BPS if hold else 0})


def job_of(g, job_id):
    """JOB_ID's entry of query-jobs, or None."""
    jobs = [j for j in g.cmd("query-jobs") if j["id"] == job_id]
    return jobs[0] if jobs else None


def qemu_io(g, node, command):
    """qemu-io COMMAND on NODE through HMP; fails the test on an error."""
    out = g.cmd("human-monitor-command", command_line=f'qemu-io {node} "{command}"')
    assert "failed" not in out.lower() and "error" not in out.lower(), out
    return out


def img_check(path, *args):
    """qemu-img check: (exit code, output).  0 clean, 3 leaks only, 2 corrupt."""
    p = subprocess.run([QEMU_IMG, "check", *args, path], capture_output=True, text=True,
                       check=False)
    return p.returncode, p.stdout + p.stderr


def assert_verified(g):
    """The workload verifies every page once more and finds none corrupt."""
    mark = g.console_mark()
    errors = g.wait_full_pass()
    assert errors == 0
    g.check_no_corruption(g.console()[mark:])
