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

    def wait(self, name, match=None, timeout=3600):
        """Wait for event NAME whose data contains MATCH; return it."""
        deadline = time.monotonic() + timeout
        seen = 0
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
    jobs = [j for j in log.guest.cmd("query-jobs") if j["id"] == job_id]
    err = jobs[0].get("error") if jobs else None
    log.guest.cmd("job-dismiss", id=job_id)
    return err, ev
