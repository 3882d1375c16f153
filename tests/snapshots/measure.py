"""
Timing helpers shared by demo.py and bench.py.  QMP events carry QEMU's
own wall-clock timestamps; pause times are taken from STOP/RESUME events,
so they do not include QMP round trips of the harness.
"""

import time


def event_time(ev):
    ts = ev["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


class EventLog:
    """Collects QMP events of one Guest, in order."""

    def __init__(self, guest):
        self.guest = guest
        self.events = []

    def poll(self):
        self.events += self.guest.vm.get_qmp_events(wait=False)

    def clear(self):
        self.poll()
        self.events = []

    def wait(self, name, match=None, timeout=3600, start=0):
        """
        Wait for event NAME whose data contains MATCH, at index START or
        later in self.events; return it.
        """
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            self.poll()
            for ev in self.events[seen:]:
                if ev["event"] == name and all(
                        ev.get("data", {}).get(k) == v for k, v in (match or {}).items()):
                    return ev
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name} {match} event")
            try:
                ev = self.guest.vm.get_qmp_event(
                    wait=min(1.0, max(0.01, deadline - time.monotonic())))
            except TimeoutError:
                ev = None
            if ev:
                self.events.append(ev)

    def wait_resumed(self, timeout=60):
        """
        Wait for the RESUME that follows the last STOP seen, if any (the
        guest runs again); return it, or None if there was no STOP.
        """
        self.poll()
        stops = [i for i, ev in enumerate(self.events) if ev["event"] == "STOP"]
        if not stops:
            return None
        return self.wait("RESUME", timeout=timeout, start=stops[-1] + 1)

    def paused_seconds(self):
        """Total time between STOP and the following RESUME events."""
        total, stopped_at = 0.0, None
        for ev in self.events:
            if ev["event"] == "STOP" and stopped_at is None:
                stopped_at = event_time(ev)
            elif ev["event"] == "RESUME" and stopped_at is not None:
                total += event_time(ev) - stopped_at
                stopped_at = None
        return total


def wait_job(log, job_id, timeout=3600):
    """Wait for job JOB_ID to conclude; return (error or None, concluded event)."""
    ev = log.wait("JOB_STATUS_CHANGE", {"id": job_id, "status": "concluded"}, timeout)
    return log.guest.dismiss_job(job_id), ev
