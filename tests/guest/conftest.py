"""The systemd + cgroup v2 tier, run inside the test guest (scripts/guest/run.sh) against the
sandboxd that the README's install command installed and started there as `sandboxd.service`.

Skipped everywhere else: these tests stop, crash and restart the system's sandboxd unit.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

UNIT = "sandboxd.service"
URL = "http://127.0.0.1:8000"
STATE_DIR = "/opt/sandboxd/run"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Emulated (no KVM), a jailed print(1) takes about a second and the start-up canaries several
# jails: bounds here are generous, and every wait polls a condition.
READY_TIMEOUT_S = 400.0


def in_guest_tier() -> bool:
    return (os.environ.get("SANDBOXD_GUEST_TIER") == "1" and os.path.isdir("/run/systemd/system")
            and (CGROUP_ROOT / "cgroup.controllers").exists())


guest_only = pytest.mark.skipif(
    not in_guest_tier(), reason="runs only in the systemd + cgroup v2 test guest (scripts/guest/run.sh)")


def unit_props(*names: str) -> dict[str, str]:
    out = subprocess.run(["systemctl", "show", UNIT, "-p", ",".join(names)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def unit_cgroup() -> Path:
    return CGROUP_ROOT / unit_props("ControlGroup")["ControlGroup"].lstrip("/")


def jails_cgroup() -> Path:
    return unit_cgroup() / "sandboxd"


def wait_for(what: str, cond: Any, timeout_s: float = READY_TIMEOUT_S, every_s: float = 0.5) -> Any:
    end = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def wait_ready() -> dict[str, str]:
    """active/running: with Type=notify systemd reports running only after READY=1."""
    def ready() -> dict[str, str] | None:
        p = unit_props("ActiveState", "SubState", "MainPID", "NRestarts")
        return p if (p["ActiveState"], p["SubState"]) == ("active", "running") else None
    props: dict[str, str] = wait_for("sandboxd.service active/running", ready)
    return props


def exec_code(code: str, lang: str = "py", timeout_s: float = 300, **extra: Any) -> dict[str, Any]:
    req = urllib.request.Request(URL + "/exec", data=json.dumps({"lang": lang, "code": code, **extra}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


def run_groups() -> list[Path]:
    jails = jails_cgroup()
    return sorted(jails.glob("run-*")) if jails.is_dir() else []


def keyed(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def state_mounts(pid: int | str) -> list[str]:
    """Mount points under the daemon's state dir, as the process `pid` sees them (the unit has
    its own mount namespace: PrivateTmp, ProtectSystem)."""
    lines = Path(f"/proc/{pid}/mounts").read_text().splitlines()
    return sorted(line.split()[1] for line in lines if line.split()[1].startswith(STATE_DIR + "/"))


@pytest.fixture
def ready_unit() -> dict[str, str]:
    return wait_ready()
