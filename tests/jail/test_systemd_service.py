"""The daemon as systemd runs it, reproduced on a host without systemd: the notify protocol over a
real datagram socket (READY=1 only after the canaries, WATCHDOG=1 pings, STOPPING=1 on SIGTERM)
and start-up under SystemCallArchitectures=native's x32 kill filter. The qemu guest tier runs the
real unit under a real systemd."""

from __future__ import annotations

import shutil
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import JAIL_CONFIGS, LiveDaemon

pytestmark = pytest.mark.jail

NATIVE_ARCH_EXEC = Path(__file__).resolve().parent / "native_arch_exec.py"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    yield sock, path
    sock.close()


def _messages(sock: socket.socket, until: bytes, timeout_s: float) -> list[bytes]:
    """Datagrams in arrival order, up to and including the first equal to `until`."""
    got: list[bytes] = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        sock.settimeout(max(0.1, end - time.monotonic()))
        try:
            msg = sock.recv(4096)
        except TimeoutError:
            break
        got.append(msg)
        if msg == until:
            break
    return got


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return int(r.status)
    except OSError:
        return 0


def test_ready_comes_after_the_canaries_then_watchdog_pings_then_stopping(
        tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    daemon = LiveDaemon(tmp_path, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        before_ready = _messages(sock, b"READY=1", timeout_s=60)
        assert before_ready[-1:] == [b"READY=1"], before_ready
        # Only watchdog pings come before READY (the canaries' time counts against the watchdog).
        assert set(before_ready[:-1]) <= {b"WATCHDOG=1"}
        # Pings keep coming from the event loop every WATCHDOG_USEC / 2 = 0.2 s.
        pings = [m for m in _messages(sock, b"never", timeout_s=3) if m == b"WATCHDOG=1"]
        assert len(pings) >= 3, pings
        assert _health(daemon.url) == 200
        daemon.proc.send_signal(signal.SIGTERM)
        after = _messages(sock, b"STOPPING=1", timeout_s=30)
        assert after[-1:] == [b"STOPPING=1"], after
        assert daemon.proc.wait(timeout=60) == 0
    finally:
        daemon.stop()
    assert daemon.leftovers() == ([], [])


def test_no_watchdog_pings_when_systemd_asks_for_none(tmp_path: Path,
                                                      notify_socket: tuple[socket.socket, str]) -> None:
    """The harmless twin of the pings: without WATCHDOG_USEC the daemon sends READY=1 and nothing else."""
    sock, path = notify_socket
    daemon = LiveDaemon(tmp_path, env={"NOTIFY_SOCKET": path})
    try:
        assert _messages(sock, b"READY=1", timeout_s=60) == [b"READY=1"]
        assert _messages(sock, b"never", timeout_s=1.5) == []
    finally:
        assert daemon.stop() == 0


def test_a_failed_canary_never_sends_ready(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    """A seccomp policy that forgot its namespace rules: the daemon must exit without READY=1."""
    sock, path = notify_socket
    weak = tmp_path / "weak-configs"
    shutil.copytree(JAIL_CONFIGS, weak)
    (weak / "seccomp.kafel").write_text("POLICY p { ERRNO(1) { syslog } }\nUSE p DEFAULT ALLOW\n")
    with pytest.raises(RuntimeError, match="namespace creation denied"):
        LiveDaemon(tmp_path, env={"NOTIFY_SOCKET": path}, jail_configs_dir=str(weak))
    assert b"READY=1" not in _messages(sock, b"READY=1", timeout_s=1)


def test_daemon_becomes_ready_under_the_native_architecture_filter(tmp_path: Path) -> None:
    """SystemCallArchitectures=native kills any process making an x32 call: the canary's x32 probe
    must count that death as "x32 unavailable" instead of losing the whole probe."""
    daemon = LiveDaemon(tmp_path, wrapper=(sys.executable, str(NATIVE_ARCH_EXEC)))
    try:
        assert _health(daemon.url) == 200
        reply = daemon.exec("print(6 * 7)")
        assert reply["status"] == "ok" and reply["stdout"] == "42\n"
    finally:
        assert daemon.stop() == 0
