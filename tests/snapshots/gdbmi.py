"""
Stop one thread of a running QEMU at a chosen point and hold it there,
with gdb in non-stop mode (the other threads, the monitor's among them,
keep running): a narrow race window is widened deterministically, with no
test hook in QEMU.  Drives gdb through its machine interface (MI).
"""

import itertools
import queue
import re
import subprocess
import threading
import time


class GdbError(Exception):
    pass


class GdbMI:
    """gdb attached to PID in non-stop mode; all threads keep running."""

    def __init__(self, pid, log=None):
        self.log = log
        self.proc = subprocess.Popen(["gdb", "--interpreter=mi2", "-q", "-nx",
                                      "-iex", "set auto-load safe-path /"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.records = queue.Queue()
        self.seen = []
        self.tokens = itertools.count(1)
        threading.Thread(target=self._read, daemon=True).start()
        self.cmd("-gdb-set mi-async on")
        self.cmd("-gdb-set non-stop on")
        self.cmd("-gdb-set pagination off")
        self.cmd(f"-target-attach {pid}", timeout=120)
        # Attaching stops every thread, reported one by one: let them all
        # stop, then run them all again
        self._until_all("stopped")
        self.cmd("-exec-continue --all")
        self._until_all("running")

    def _until_all(self, state, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            states = re.findall(r'state="(\w+)"', self.cmd("-thread-info"))
            if states and all(st == state for st in states):
                return
            if time.monotonic() > deadline:
                raise GdbError(f"threads did not all get {state}: {states}")
            if state == "running":
                self.cmd("-exec-continue --all")
            time.sleep(0.05)

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if self.log:
                with open(self.log, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            self.records.put(line)

    def _next(self, deadline, what):
        left = deadline - time.monotonic()
        if left <= 0:
            raise GdbError(f"timeout waiting for {what}")
        try:
            line = self.records.get(timeout=left)
        except queue.Empty as e:
            raise GdbError(f"timeout waiting for {what}") from e
        self.seen.append(line)
        return line

    def cmd(self, command, timeout=60):
        """Run an MI command; its result record (^done, ^running)."""
        tok = next(self.tokens)
        self.proc.stdin.write(f"{tok}{command}\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            line = self._next(deadline, command)
            if line.startswith(f"{tok}^error"):
                raise GdbError(f"{command}: {line}")
            if line.startswith(f"{tok}^"):
                return line

    def wait_stopped(self, reason, timeout=120):
        """Wait for a *stopped record with REASON; its thread id."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next(deadline, f"a stop ({reason})")
            if line.startswith("*stopped") and f'reason="{reason}"' in line:
                return re.search(r'thread-id="(\d+)"', line).group(1)

    def thread_id(self, name):
        """gdb's id of the thread named NAME."""
        out = self.cmd("-thread-info")
        for m in re.finditer(r'\{id="(\d+)",target-id="[^"]*",name="([^"]*)"', out):
            if m.group(2) == name:
                return m.group(1)
        raise GdbError(f"no thread named {name!r}: {out}")

    def break_at(self, function, thread=None, condition="1"):
        """
        Stop THREAD (or any thread) when it calls FUNCTION with CONDITION
        true, once.
        """
        only = f"-p {thread} " if thread else ""
        self.cmd(f'-break-insert -t {only}-c "{condition}" {function}')

    def hold_after_return(self, thread, timeout=120):
        """
        Wait until THREAD hits the breakpoint of break_at(), let it return
        from the function and hold it stopped there; the rest of the
        process runs on.
        """
        self.hold_at_break(timeout)
        self.finish(thread, timeout)

    def hold_at_break(self, timeout=120):
        """Wait until a thread hits the breakpoint of break_at(); its id."""
        return self.wait_stopped("breakpoint-hit", timeout)

    def finish(self, thread, timeout=120):
        """Let the held THREAD return from its function, and hold it again."""
        self.cmd(f"-exec-finish --thread {thread}")
        self.wait_stopped("function-finished", timeout)

    def evaluate(self, thread, expression):
        """Evaluate EXPRESSION (an assignment, say) in THREAD's frame 0."""
        return self.cmd(f'-data-evaluate-expression --thread {thread} --frame 0 '
                        f'"{expression}"')

    def resume(self, thread):
        self.cmd(f"-exec-continue --thread {thread}")

    def detach(self):
        try:
            self.cmd("-target-detach", timeout=30)
            self.cmd("-gdb-exit", timeout=10)
        except (GdbError, BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
