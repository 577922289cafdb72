"""The daemon as an operator runs it: `sandboxd serve`, SIGTERM, a crash, `doctor`, `policy show`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sandboxd.languages import RECIPES
from sandboxd.settings import load_settings

from tests.conftest import JAIL_CONFIGS, LiveDaemon, procs_in_uid_range, state_dir_for
from tests.security.conftest import UID_BLOCK, unique_uid_base

pytestmark = pytest.mark.jail


def _post_exec(url: str, code: str, timeout_s: float = 120) -> tuple[int, dict[str, Any]]:
    """POST /exec; (status, parsed body) for any answer, 503 included."""
    req = urllib.request.Request(url + "/exec", data=json.dumps({"lang": "py", "code": code}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# The run tells the host it started, then waits for the host's go-ahead: the test decides
# when it ends, with no guess about timing.
_GATED = ("import os, time\nopen('/mnt/data/started', 'w').close()\n"
          "while not os.path.exists('/mnt/data/go'):\n    time.sleep(0.02)\nprint('finished')\n")


def _start_gated_run(daemon: LiveDaemon) -> tuple[threading.Thread, dict[str, Any], Path]:
    result: dict[str, Any] = {}

    def run() -> None:
        result["status"], result["body"] = _post_exec(daemon.url, _GATED)

    t = threading.Thread(target=run)
    t.start()
    sessions = Path(state_dir_for(daemon.tmp)) / "sessions"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        started = list(sessions.glob("*/started"))
        if started:
            return t, result, started[0].parent
        assert t.is_alive(), result
        time.sleep(0.02)
    raise AssertionError("the run did not start")


def _until(predicate: Any, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_sigterm_drains_a_run_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    base = unique_uid_base()
    daemon = LiveDaemon(tmp_path, shutdown_drain_s=120, uid_base=base, uid_count=UID_BLOCK)
    t, result, session_dir = _start_gated_run(daemon)
    daemon.proc.send_signal(signal.SIGTERM)
    # Draining: the listener stays up, says why it takes no work, and refuses new runs.
    _until(lambda: _health(daemon.url) == 503, "health did not turn 503 on SIGTERM")
    status, body = _post_exec(daemon.url, "print('too late')")
    assert (status, body["error"]) == (503, "unavailable")
    assert t.is_alive() and daemon.proc.poll() is None  # the run in flight is still waited for
    (session_dir / "go").touch()
    t.join(timeout=60)
    assert result["status"] == 200, result
    assert (result["body"]["status"], result["body"]["stdout"]) == ("ok", "finished\n")
    assert daemon.proc.wait(timeout=60) == 0
    assert daemon.leftovers() == ([], [])
    assert procs_in_uid_range(base, UID_BLOCK) == []
    daemon.stop()


def test_a_run_longer_than_the_drain_is_killed_and_answers_503(tmp_path: Path) -> None:
    base = unique_uid_base()
    daemon = LiveDaemon(tmp_path, shutdown_drain_s=1, uid_base=base, uid_count=UID_BLOCK)
    t, result, _ = _start_gated_run(daemon)  # never given its go-ahead
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=60) == 0
    t.join(timeout=30)
    assert result["status"] == 503, result  # not a 200 claiming the user's code died
    assert result["body"]["error"] == "unavailable"
    assert time.monotonic() - started < 25  # the 30 s wall limit did not end it
    assert daemon.leftovers() == ([], [])
    assert procs_in_uid_range(base, UID_BLOCK) == []
    daemon.stop()


def test_a_second_sigterm_ends_the_drain_at_once(tmp_path: Path) -> None:
    base = unique_uid_base()
    daemon = LiveDaemon(tmp_path, shutdown_drain_s=600, uid_base=base, uid_count=UID_BLOCK)
    t, result, _ = _start_gated_run(daemon)
    daemon.proc.send_signal(signal.SIGTERM)
    _until(lambda: _health(daemon.url) == 503, "health did not turn 503 on SIGTERM")
    daemon.proc.send_signal(signal.SIGTERM)  # the operator does not want to wait
    assert daemon.proc.wait(timeout=60) == 0
    t.join(timeout=30)
    assert result["status"] == 503, result
    assert daemon.leftovers() == ([], [])
    assert procs_in_uid_range(base, UID_BLOCK) == []
    daemon.stop()


def test_crash_leftovers_are_cleaned_by_the_next_start(tmp_path: Path) -> None:
    base = unique_uid_base()  # its own range: another test run's jails are not this one's
    first = LiveDaemon(tmp_path, uid_base=base, uid_count=UID_BLOCK)
    t = threading.Thread(target=lambda: _swallow(first.exec, "sleep 25", "bash"))
    t.start()
    _until(lambda: procs_in_uid_range(base, UID_BLOCK), "the run did not start")
    first.crash()
    t.join(timeout=10)
    mounts, cgroups = first.leftovers()
    assert mounts and cgroups, "a crash should leave its mounts and cgroups (else this test proves nothing)"

    # Same state dir and cgroup name: the next instance removes exactly those leftovers.
    first.start()
    try:
        mounts, cgroups = first.leftovers(running=True)
        assert cgroups == [] and mounts == []
        # Killed jails are reaped by the host's init: poll until they are gone.
        _until(lambda: procs_in_uid_range(base, UID_BLOCK) == [], "jailed processes survived the restart")
        assert first.exec("print('after crash')")["stdout"] == "after crash\n"
    finally:
        assert first.stop() == 0
    assert first.leftovers() == ([], [])


def _swallow(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        pass


def test_doctor_passes_here_and_names_what_is_missing(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    # Its own cgroup name: doctor's probe groups must not meet another test run's on this host.
    good.write_text(f'state_dir = "{state_dir_for(tmp_path)}"\njail_configs_dir = "{JAIL_CONFIGS}"\n'
                    f'cgroup_name = "sandboxd-doctor-test-{os.getpid()}"\n'
                    f'uid_base = {unique_uid_base()}\nuid_count = {UID_BLOCK}\n')
    ok = subprocess.run([sys.executable, "-m", "sandboxd", "doctor", "--config", str(good)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "[ok] every isolation layer holds in a real jail" in ok.stdout
    for layer in ("seccomp filter", "network isolation", "non-root outside uid", "pids limit enforced",
                  "memory limit enforced", "host files hidden"):
        assert f"[ok] canary: {layer}" in ok.stdout
    for profile in sorted({r.profile for r in RECIPES.values()}):  # every profile, not only python's
        for layer in ("static policy check", "jail runs code", "non-root outside uid", "namespaces separate",
                      "seccomp filter", "network isolation", "host files hidden"):
            assert f"[ok] canary: {profile} profile: {layer}" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(f'state_dir = "{state_dir_for(tmp_path)}"\njail_configs_dir = "/nonexistent"\n'
                   'nsjail_path = "/nonexistent/nsjail"\n')
    res = subprocess.run([sys.executable, "-m", "sandboxd", "doctor", "--config", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "[FAIL] nsjail at /nonexistent/nsjail" in res.stdout
    assert "[FAIL] jail profiles" in res.stdout


def test_serve_refuses_an_open_listener_without_auth(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "sandboxd", "serve", "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "without authentication" in res.stderr


def test_policy_show_prints_what_the_runner_uses(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'jail_configs_dir = "{JAIL_CONFIGS}"\nuid_base = 400000\n')
    out = subprocess.run([sys.executable, "-m", "sandboxd", "policy", "show", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "--user 1000:400000:1" in out and "POLICY sandboxd_deny" in out
    assert "namespaces: net=on, user=on, ns=on, pid=on, ipc=on, uts=on, cgroup=on" in out
    assert "/etc/passwd                  ro  synthesized file" in out and "400000..459999" in out
    assert load_settings(str(cfg)).uid_base == 400000


async def test_daemon_refuses_to_serve_when_a_layer_is_missing(tmp_path: Path, make_client: Any) -> None:
    import shutil

    weak = tmp_path / "weak-configs"
    shutil.copytree(JAIL_CONFIGS, weak)
    # A seccomp policy that forgot the namespace rules: everything else still looks fine.
    (weak / "seccomp.kafel").write_text("POLICY p { ERRNO(1) { syslog } }\nUSE p DEFAULT ALLOW\n")
    with pytest.raises(Exception, match="namespace creation denied"):
        await make_client(jail_configs_dir=str(weak))
    # Twin: the shipped policy starts and serves.
    client = await make_client()
    assert (await client.get("/health")).status == 200


# (profile, the weakening edit, the canary layer that must name it, a harmless edit of the same
# kind). An edit is (line to replace, replacement); an empty line to replace appends.
Edit = tuple[str, str]
SLIPPED: list[tuple[str, Edit, str, Edit]] = [
    ("node", ("clone_newnet: true", "clone_newnet: false"), "network isolation",
     ('hostname: "sandbox"', 'hostname: "jail"')),
    ("r", ("", 'mount { dst: "/data" src: "/root" is_bind: true }'), "host files hidden",
     ("", 'mount { dst: "/data" src: "/usr/share/doc" is_bind: true }')),
    ("php", ("", 'mount { dst: "/opt/keys" src: "/etc/ssh" is_bind: true mandatory: false }'), "host files hidden",
     ("", 'mount { dst: "/opt/keys" src: "/etc/ssl" is_bind: true mandatory: false }')),
    # Without pasta on the host the jail cannot even start; with it, it would get a route out.
    ("native", ("", "user_net { enable: true }"), "(network isolation|jail runs code)", ("", 'envar: "EXTRA=1"')),
]


def _edited(tmp: Path, name: str, profile: str, edit: Edit) -> Path:
    import shutil

    configs = tmp / name
    shutil.copytree(JAIL_CONFIGS, configs)
    text = (JAIL_CONFIGS / f"{profile}.cfg").read_text()
    old, new = edit
    assert not old or f"\n{old}\n" in text
    (configs / f"{profile}.cfg").write_text(text.replace(f"\n{old}\n", f"\n{new}\n") if old else f"{text}\n{new}\n")
    return configs


@pytest.mark.parametrize("profile,edit,layer,twin", SLIPPED, ids=[s[0] for s in SLIPPED])
async def test_daemon_refuses_a_profile_that_slipped_past_the_checker(
        tmp_path: Path, make_client: Any, monkeypatch: pytest.MonkeyPatch,
        profile: str, edit: Edit, layer: str, twin: Edit) -> None:
    """The canaries prove every profile in a real jail, so a weakening the static checker
    missed (simulated here by switching the checker off) still stops the daemon, naming the
    profile and the layer."""
    from sandboxd.policy import Policy

    monkeypatch.setattr(Policy, "check_profile", lambda self, name, *a, **kw: self.load(name))
    with pytest.raises(Exception, match=f"{profile} profile: {layer}"):
        await make_client(jail_configs_dir=str(_edited(tmp_path, "weak", profile, edit)))
    # Twin: the same unchecked start with a harmless edit serves.
    client = await make_client(jail_configs_dir=str(_edited(tmp_path, "harmless", profile, twin)))
    assert (await client.get("/health")).status == 200
