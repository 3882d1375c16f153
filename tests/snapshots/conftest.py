"""pytest configuration for the QEMU Instant Snapshots tests."""

import os
import shutil
import tempfile

import pytest

import snaptest


@pytest.fixture
def workdir(request):
    """A scratch directory on disk (RAM dumps can be GiB-sized); kept on failure."""
    base = os.environ.get("QIS_TEST_TMP", "/var/tmp")
    path = tempfile.mkdtemp(prefix=f"qis-{request.node.name[:40]}-", dir=base)
    yield path
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\nkept {path} for inspection")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_report_header(config):
    return [f"qemu: {snaptest.QEMU}", f"accel: {snaptest.ACCEL}"]


def pytest_configure(config):
    config.addinivalue_line("markers", "gate: upstream's own tests run against our build")


@pytest.fixture(autouse=True)
def no_qemu_left_behind():
    """
    A test must end every QEMU it launched (with blocks or shutdown()):
    one still running afterwards is shut down, and the test fails.
    """
    before = set(snaptest.LIVE_GUESTS)
    yield
    left = [g for g in snaptest.LIVE_GUESTS if g not in before]
    errors = []
    for g in left:
        try:
            g.shutdown()
        except snaptest.ShutdownError as e:
            errors.append(str(e))
    if left:
        pytest.fail(f"the test left QEMU running: {', '.join(g.name for g in left)}"
                    + "".join("\n" + e for e in errors), pytrace=False)
