"""The systemd side: sd_notify over a real datagram socket, the watchdog settings, and the shipped
unit as systemd itself reads it (`systemd-analyze verify` and `security`)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd import systemd
from sandboxd.errors import ConfigError
from sandboxd.settings import read_secret_file

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "sandboxd.service"
# Exposure score systemd-analyze gives the unit; 5.0 and lower reads "OK" there.
EXPOSURE_MAX = 5.0


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_notify_sends_each_state_as_one_datagram(notify_socket: socket.socket) -> None:
    assert systemd.notify("READY=1")
    assert systemd.notify("STOPPING=1")
    assert notify_socket.recv(4096) == b"READY=1"
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sandboxd-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_without_a_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not systemd.notify("READY=1")


def test_watchdog_interval_is_half_the_timeout_for_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == 15.0


def test_watchdog_is_off_when_not_configured_or_meant_for_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert systemd.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # inherited from a parent: not ours to ping
    assert systemd.watchdog_interval_s() is None


def test_a_credential_is_read_from_the_credentials_directory(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    (tmp_path / "sandboxd_api-keys").write_text("k1\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_secret_file("credential:sandboxd_api-keys") == "k1\n"
    plain = tmp_path / "plain"
    plain.write_text("k2\n")
    assert read_secret_file(str(plain)) == "k2\n"


@pytest.mark.parametrize("ref", ["credential:../etc/shadow", "credential:a/b", "credential:", "credential:.."])
def test_a_credential_name_cannot_leave_the_credentials_directory(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path, ref: str) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ConfigError):
        read_secret_file(ref)


def test_a_credential_outside_systemd_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="LoadCredential"):
        read_secret_file("credential:sandboxd_api-keys")


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("needs systemd-analyze (Debian package systemd; scripts/test.sh installs it)")
    return tool


def test_unit_passes_systemd_analyze_verify() -> None:
    if not Path("/opt/sandboxd/venv/bin/sandboxd").exists():
        pytest.skip("verify checks ExecStart= exists: needs scripts/setup-host.sh")
    proc = subprocess.run([_analyze(), "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    # verify prints warnings for what it cannot load; any line naming the unit is a finding.
    findings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if UNIT.name in ln]
    assert proc.returncode == 0 and not findings, proc.stdout + proc.stderr


def test_unit_exposure_score_is_ok() -> None:
    proc = subprocess.run([_analyze(), "security", "--offline=true", "--no-pager", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    assert float(m.group(1)) <= EXPOSURE_MAX, proc.stdout


def _directives(text: str) -> list[tuple[str, bool]]:
    """(directive, has a comment right above it or above its group) for every setting line."""
    out: list[tuple[str, bool]] = []
    commented = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            commented = True
        elif not stripped or stripped.startswith("["):
            commented = False
        else:
            out.append((stripped.split("=", 1)[0], commented))
    return out


def test_every_hardening_directive_says_why() -> None:
    """An auditor reads the reason next to each choice; plain identity lines need none."""
    self_explaining = {"Description", "Documentation", "After", "WantedBy", "ExecStart", "RestartSec",
                       "ReadWritePaths", "IPAddressAllow", "SystemCallErrorNumber", "AmbientCapabilities",
                       "ProtectHome", "PrivateTmp", "ProtectClock",
                       "LockPersonality", "RestrictRealtime", "Restart", "KillMode", "TimeoutStopSec",
                       "LimitNOFILE", "PrivateIPC"}
    missing = [d for d, why in _directives(UNIT.read_text()) if not why and d not in self_explaining]
    assert not missing, f"directives without a comment: {missing}"


@pytest.mark.parametrize("directive", ["ProtectKernelTunables", "ProtectKernelLogs", "ProtectProc", "ProcSubset",
                                       "ProtectControlGroups", "RestrictNamespaces", "PrivateUsers",
                                       "MemoryDenyWriteExecute", "PrivateDevices", "ProtectHostname",
                                       "ProtectKernelModules"])
def test_directives_nsjail_cannot_live_with_stay_off_and_say_why(directive: str) -> None:
    text = UNIT.read_text()
    assert not re.search(rf"^{directive}=(yes|true|strict|invisible|pid|ptraceable|noaccess)", text, re.M)
    off = text.split("--- stays OFF", 1)[1]
    assert directive + "=" in off, f"{directive} is not explained in the unit's 'stays OFF' part"


def test_unit_is_hardened_where_nsjail_allows() -> None:
    settings = dict((d, v) for d, v in (ln.split("=", 1) for ln in UNIT.read_text().splitlines()
                                        if "=" in ln and not ln.lstrip().startswith("#")))
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["OOMPolicy"] == "continue"
    assert settings["Delegate"] == "yes"
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["SystemCallArchitectures"] == "native"
    assert settings["ProtectSystem"] == "strict"
    assert "CAP_SYS_ADMIN" in settings["CapabilityBoundingSet"]
    assert "CAP_SYS_PTRACE" not in settings["CapabilityBoundingSet"]
    assert "Environment" not in settings, "secrets come through LoadCredential=, never Environment="
    assert settings["LoadCredential"].startswith("sandboxd:")
