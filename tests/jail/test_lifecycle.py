"""The daemon as an operator runs it: `sandboxd serve`, SIGTERM, a crash, `doctor`, `policy show`."""

from __future__ import annotations

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
from sandboxd.settings import Settings, load_settings

from tests.conftest import JAIL_CONFIGS, LiveDaemon, procs_in_uid_range, state_dir_for

pytestmark = pytest.mark.jail


def jail_processes() -> list[int]:
    defaults = Settings()
    return procs_in_uid_range(defaults.uid_base, defaults.uid_count)


def test_sigterm_ends_runs_and_leaves_nothing(tmp_path: Path) -> None:
    daemon = LiveDaemon(tmp_path)
    result: dict[str, Any] = {}

    def long_run() -> None:
        try:
            result["body"] = daemon.exec("echo started; sleep 25; echo never", lang="bash")
        except (urllib.error.URLError, ConnectionError) as exc:
            result["error"] = exc

    t = threading.Thread(target=long_run)
    t.start()
    time.sleep(1.0)
    assert jail_processes(), "the run should be in flight"
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=20) == 0
    assert time.monotonic() - started < 10
    t.join(timeout=10)
    if "body" in result:  # the in-flight run was ended, not completed
        assert "never" not in result["body"]["stdout"]
    assert daemon.leftovers() == ([], [])
    assert jail_processes() == []
    daemon.stop()


def test_crash_leftovers_are_cleaned_by_the_next_start(tmp_path: Path) -> None:
    first = LiveDaemon(tmp_path)
    t = threading.Thread(target=lambda: _swallow(first.exec, "sleep 25", "bash"))
    t.start()
    time.sleep(1.0)
    first.crash()
    t.join(timeout=10)
    mounts, cgroups = first.leftovers()
    assert mounts and cgroups, "a crash should leave its mounts and cgroups (else this test proves nothing)"

    # Same state dir and cgroup name: the next instance removes exactly those leftovers.
    first.start()
    try:
        mounts, cgroups = first.leftovers(running=True)
        assert cgroups == [] and mounts == []
        deadline = time.monotonic() + 5
        while jail_processes() and time.monotonic() < deadline:
            time.sleep(0.1)  # killed jails are reaped by the host's init
        assert jail_processes() == []
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
    good.write_text(f'state_dir = "{state_dir_for(tmp_path)}"\njail_configs_dir = "{JAIL_CONFIGS}"\n')
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
