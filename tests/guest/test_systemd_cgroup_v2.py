"""sandboxd as installed by the README's command on a systemd host with cgroup v2: the unit's
readiness, limits read from the v2 counters, cgroup.kill, reaping, a crash and a stop leaving
nothing behind, and `doctor` leaving its caller's cgroup alone. Runs only in the test guest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sandboxd.settings import MiB, Settings
from tests.conftest import procs_in_uid_range
from tests.guest.conftest import (
    STATE_DIR,
    UNIT,
    URL,
    exec_code,
    guest_only,
    jails_cgroup,
    keyed,
    run_groups,
    state_mounts,
    unit_cgroup,
    unit_props,
    wait_for,
    wait_ready,
)

pytestmark = guest_only
DEFAULTS = Settings()  # the guest's daemon runs the shipped defaults


def jail_processes() -> list[int]:
    return procs_in_uid_range(DEFAULTS.uid_base, DEFAULTS.uid_count)


def own_cgroup() -> str:
    return Path("/proc/self/cgroup").read_text().strip()


def long_run_in_background() -> threading.Thread:
    """A bash run that sleeps; returns once its jailed processes run (nsjail joins the run's
    cgroup before it starts them)."""
    def go() -> None:
        try:
            exec_code("echo started; sleep 600; echo never", lang="bash", timeout_s=900)
        except (urllib.error.URLError, ConnectionError, OSError):
            pass  # the daemon goes away under it: that is the point
    t = threading.Thread(target=go, daemon=True)
    t.start()
    wait_for("the run's jailed processes", jail_processes)
    return t


def test_unit_reaches_ready_with_its_delegated_subtree(ready_unit: dict[str, str]) -> None:
    props = unit_props("Type", "NotifyAccess", "Delegate", "DelegateControllers", "OOMPolicy")
    assert props["Type"] == "notify" and props["Delegate"] == "yes", props
    with urllib.request.urlopen(URL + "/health", timeout=60) as r:
        assert r.status == 200
    # The daemon left the delegated group for a leaf, so its children may have controllers.
    base = unit_cgroup()
    assert (base / "supervisor" / "cgroup.procs").read_text().split() == [ready_unit["MainPID"]]
    assert (base / "cgroup.procs").read_text().split() == []
    assert set((jails_cgroup() / "cgroup.subtree_control").read_text().split()) >= {"memory", "pids", "cpu"}


def test_memory_bomb_is_oom_counted_in_memory_events(ready_unit: dict[str, str]) -> None:
    limit = DEFAULTS.limits.memory_max_bytes
    events = jails_cgroup() / "memory.events"  # hierarchical: counts every run group below
    before = keyed(events)["oom_kill"]
    body = exec_code(f"chunks = []\nwhile True:\n    chunks.append(b'x' * {16 * MiB})\n")
    assert body["status"] == "oom", body
    assert f"{limit // MiB} MiB" in body["message"]
    assert keyed(events)["oom_kill"] > before
    assert limit * 0.9 <= body["memory_peak_bytes"] <= limit * 1.05  # memory.peak of the run's group
    twin = exec_code(f"b = b'x' * {limit // 4}\nprint(len(b))")
    assert twin["status"] == "ok" and twin["stdout"] == f"{limit // 4}\n", twin


def test_unit_survives_a_jail_oom(ready_unit: dict[str, str]) -> None:
    body = exec_code(f"chunks = []\nwhile True:\n    chunks.append(b'x' * {16 * MiB})\n")
    assert body["status"] == "oom", body
    after = unit_props("ActiveState", "SubState", "MainPID", "NRestarts")
    assert (after["ActiveState"], after["SubState"]) == ("active", "running")
    assert after["MainPID"] == ready_unit["MainPID"] and after["NRestarts"] == ready_unit["NRestarts"]
    assert exec_code("print('still here')")["stdout"] == "still here\n"


FORKS = r"""
import os, sys, time
n = 0
try:
    for _ in range(10000):
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        n += 1
except BlockingIOError:
    print(n)
    sys.exit(3)
print(n)
"""


def test_fork_bomb_is_pids_limit_and_every_task_is_reaped(ready_unit: dict[str, str]) -> None:
    body = exec_code(FORKS)
    assert body["status"] == "pids_limit", body
    assert str(DEFAULTS.limits.pids_max) in body["message"]
    assert 0 < int(body["stdout"]) < DEFAULTS.limits.pids_max
    # The reply comes only once the run's group is empty and gone: no sleeper, no zombie.
    assert run_groups() == []
    assert jail_processes() == []
    twin = exec_code("import subprocess\nfor i in range(10):\n    subprocess.run(['true'])\nprint('ok')")
    assert twin["stdout"] == "ok\n", twin


SPIN = r"""
import os, time
end = time.monotonic() + 4.0
if os.fork() == 0:
    while time.monotonic() < end:
        pass
    os._exit(0)
while time.monotonic() < end:
    pass
os.wait()
print('spun')
"""


def test_cpu_spin_on_two_cores_is_held_to_the_quota(ready_unit: dict[str, str]) -> None:
    quota = DEFAULTS.limits.cpu_max_cores
    stat = jails_cgroup() / "cpu.stat"
    before = keyed(stat)["usage_usec"]
    body = exec_code(SPIN)
    used_usec = keyed(stat)["usage_usec"] - before
    assert body["status"] == "ok" and body["stdout"] == "spun\n", body
    # Two spinning processes, one core of quota: at most the quota over the run's wall time
    # (plus a few 100 ms periods of slack), and clearly more than nothing.
    assert body["cpu_time_ms"] <= body["wall_time_ms"] * quota + 300, body
    assert body["cpu_time_ms"] >= 1000, body
    # The reply's figure is the run group's cpu.stat, which the parent's counter includes.
    assert used_usec >= body["cpu_time_ms"] * 1000 * 0.95


KILL_ONLY = r"""
import json, os, subprocess, sys, time
import sandboxd.cgroups as cg

# Disable the per-pid fallback: cgroup.kill alone must empty the group.
cg._kill_loop = lambda procs_file, deadline_s=5.0, spare=None: None
mgr = cg.CgroupV2("sandboxd-guest-killtest")
mgr.setup()
limits = cg.CgroupLimits(memory_max_bytes=256 << 20, pids_max=64, cpu_max_cores=1.0)
doomed, twin = mgr.create("run-doomed", limits), mgr.create("run-twin", limits)

def start_in(run, script):
    def join():
        with open(run.procs_files[0], "w") as fh:
            fh.write(str(os.getpid()))
    return subprocess.Popen(["/bin/sh", "-c", script], preexec_fn=join)

forker = start_in(doomed, "while :; do sleep 600 & sleep 0.1; done")
sleeper = start_in(twin, "sleep 600")
end = time.monotonic() + 120
while doomed.tasks_left() < 6 and time.monotonic() < end:
    time.sleep(0.1)
before = doomed.tasks_left()
doomed.kill_all()
forker.wait(timeout=60)
end = time.monotonic() + 60
while doomed.tasks_left() and time.monotonic() < end:
    time.sleep(0.1)
out = {"before": before, "left": doomed.tasks_left(), "twin_alive": sleeper.poll() is None}
sleeper.kill()
sleeper.wait()
doomed.remove()
twin.remove()
mgr.teardown()
print(json.dumps(out))
"""


def test_cgroup_kill_alone_empties_a_forking_group() -> None:
    # In a scope of its own with Delegate=yes, as the daemon's unit has: the test's own
    # (undelegated) cgroup is never written to.
    mine = own_cgroup()
    res = subprocess.run(["systemd-run", "--scope", "--quiet", "-p", "Delegate=yes", "--",
                          sys.executable, "-c", KILL_ONLY], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["before"] >= 6, out
    assert out["left"] == 0, out
    assert out["twin_alive"], out  # the kill hit that group only
    assert own_cgroup() == mine


def test_doctor_leaves_the_callers_cgroup_alone() -> None:
    """`doctor` (and `warm-cache`, which the install ran from this same service) must never
    move the processes of a cgroup that was not delegated to it."""
    mine = own_cgroup()
    base = Path("/sys/fs/cgroup") / mine.split("::", 1)[1].lstrip("/")
    procs_before = set((base / "cgroup.procs").read_text().split())
    res = subprocess.run(["/opt/sandboxd/venv/bin/sandboxd", "doctor"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[ok] cgroups (cgroup v2" in res.stdout
    assert "[ok] every isolation layer holds in a real jail" in res.stdout
    assert own_cgroup() == mine
    assert procs_before <= set((base / "cgroup.procs").read_text().split())  # nobody was moved
    assert not [p.name for p in base.iterdir() if p.is_dir()], "no child groups in an undelegated unit"


def test_crash_and_restart_leave_nothing_in_the_delegated_subtree(ready_unit: dict[str, str]) -> None:
    old_pid, restarts = ready_unit["MainPID"], int(ready_unit["NRestarts"])
    t = long_run_in_background()
    assert len(state_mounts(old_pid)) >= 2, "a session is mounted beside the source tmpfs (else this proves nothing)"
    assert jail_processes()
    os.kill(int(old_pid), signal.SIGKILL)

    def restarted() -> dict[str, str] | None:
        p = unit_props("ActiveState", "SubState", "MainPID", "NRestarts")
        ok = int(p["NRestarts"]) > restarts and (p["ActiveState"], p["SubState"]) == ("active", "running")
        return p if ok else None
    after: dict[str, str] = wait_for("the unit restarted and ready again", restarted)
    t.join(timeout=60)
    new_pid = after["MainPID"]
    assert new_pid != old_pid
    base = unit_cgroup()
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["sandboxd", "supervisor"]
    assert (base / "supervisor" / "cgroup.procs").read_text().split() == [new_pid]
    assert run_groups() == []
    assert jail_processes() == []
    assert state_mounts(new_pid) == [f"{STATE_DIR}/src"]
    assert exec_code("print('after crash')")["stdout"] == "after crash\n"


def test_systemctl_stop_leaves_no_mount_cgroup_or_process(ready_unit: dict[str, str]) -> None:
    base = unit_cgroup()
    t = long_run_in_background()
    assert len(state_mounts(ready_unit["MainPID"])) >= 2
    try:
        subprocess.run(["systemctl", "stop", UNIT], check=True, timeout=120)
        props = unit_props("ActiveState", "Result", "ExecMainStatus")
        assert props["ActiveState"] == "inactive" and props["Result"] == "success", props
        t.join(timeout=60)
        assert not base.exists(), sorted(str(p) for p in base.rglob("*") if p.is_dir())
        assert jail_processes() == []
        for pid in ("self", "1"):  # the host's namespaces: nothing ever propagated there
            assert state_mounts(pid) == []
    finally:
        subprocess.run(["systemctl", "start", "--no-block", UNIT], check=True, timeout=60)
        wait_ready()
