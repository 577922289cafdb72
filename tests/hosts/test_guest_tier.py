"""The systemd + cgroup v2 tier, driven from the host: build (cached) and boot the Debian 12
guest under qemu (scripts/guest/run.sh), where the README's install command installs sandboxd
as a systemd service and pytest runs tests/guest and the real-client checks for py and bash.
This test reads their results from the share and fails naming every failed in-guest test,
with the tail of the guest's journal for sandboxd."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
RUN = REPO / "scripts" / "guest" / "run.sh"
# Emulated on 2 cores: image build from scratch about 8 min (cached afterwards), the guest's
# boot, install and tests about 20 min. The guest is bounded by run.sh; this bounds the rest.
GUEST_TIMEOUT_S = 1800
PREPARE_TIMEOUT_S = 1200

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("qemu-system-x86_64", "debootstrap", "npm")),
    reason="needs root, qemu-system-x86, debootstrap and npm (scripts/test.sh installs them)",
)


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path.name}: {exc})"


def failed_tests(junit: Path) -> tuple[int, list[str]]:
    """(tests run, ids of the failed or errored ones) from the in-guest junit report."""
    root = ET.parse(junit).getroot()
    failed, total = [], 0
    for case in root.iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    return total, failed


def qemu_alive(pid: int) -> bool:
    try:
        return "qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_systemd_cgroup_v2_guest_tier(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(RUN), str(results), str(GUEST_TIMEOUT_S)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=PREPARE_TIMEOUT_S + GUEST_TIMEOUT_S + 60)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            # Only what this test started: run.sh (by its pid) and the qemu it started (by
            # the pid qemu wrote).
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            pidfile = results / "qemu.pid"
            if pidfile.exists():
                pid = int(pidfile.read_text().split()[0])
                if qemu_alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    for _ in range(100):  # poll, bounded: its parent reaps it
                        if not qemu_alive(pid):
                            break
                        time.sleep(0.1)
                assert not qemu_alive(pid), f"qemu {pid} is still running"

    timings = tail(results / "host-timings.txt", 20) + "\n" + tail(results / "guest-timings.txt", 20)
    print("guest tier timings:\n" + timings)
    journal = tail(results / "sandboxd-journal.txt", 60)
    status = (results / "status").read_text().strip() if (results / "status").exists() else None
    context = (f"run.sh exit {rc}, in-guest status {status}\n--- timings\n{timings}\n"
               f"--- run.log\n{tail(log, 30)}\n--- guest console\n{tail(results / 'console.log', 30)}\n"
               f"--- sandboxd journal (tail)\n{journal}")
    if not (results / "junit.xml").exists():
        pytest.fail(f"the guest produced no test results\n--- install.log\n{tail(results / 'install.log', 40)}\n"
                    + context)
    total, failed = failed_tests(results / "junit.xml")
    if failed:
        pytest.fail(f"{len(failed)} of {total} in-guest tests failed:\n  " + "\n  ".join(failed)
                    + f"\n--- pytest.log (tail)\n{tail(results / 'pytest.log', 80)}\n" + context)
    assert total >= 10, f"only {total} in-guest tests ran\n" + context
    assert status == "0" and rc == 0, context
