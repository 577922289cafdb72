"""Shared fixtures: test settings, the real app (real nsjail, real cgroups), a live daemon.

Every daemon a test starts gets its own state directory and cgroup name, and is stopped by
the test that started it; the session fixture checks nothing was left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sandboxd.settings import MiB, Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
JAIL_CONFIGS = REPO / "jail-configs"
JAIL_PYTHON = Path("/opt/sandboxd/jail-venv/bin/python3")


def _is_root() -> bool:
    return os.geteuid() == 0


requires_jail = pytest.mark.skipif(
    not (_is_root() and JAIL_PYTHON.exists()),
    reason="needs root and the sandbox runtime (scripts/setup-host.sh)",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "jail" in item.keywords or "e2e" in item.keywords:
            item.add_marker(requires_jail)


def state_dir_for(tmp: Path) -> str:
    """A state dir the jail's uid can reach (pytest's own tmp root is mode 0700)."""
    root = Path(f"/tmp/sandboxd-tests-{os.getpid()}")
    root.mkdir(mode=0o711, exist_ok=True)
    os.chmod(root, 0o711)
    path = root / str(abs(hash(str(tmp))))
    path.mkdir(mode=0o711, exist_ok=True)
    return str(path)


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    """Defaults as shipped, with a private state dir and cgroup, and smaller storage for speed."""
    state = state_dir_for(tmp)
    base: dict[str, Any] = {
        "state_dir": state,
        "compile_cache_dir": state + "-cache",
        "jail_configs_dir": str(JAIL_CONFIGS),
        "cgroup_name": f"sandboxd-test-{os.getpid()}",
        "port": 0,
        "storage": {"session_max_bytes": 32 * MiB, "session_max_inodes": 2000},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return msgspec.convert(base, Settings)


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **kw: make_settings(tmp_path, **kw)


@pytest.fixture
async def make_client(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Build the real app (real jail) with test settings and return an aiohttp test client."""
    from sandboxd.daemon import build_app

    async def factory(**overrides: Any) -> Any:
        sub = tmp_path / f"d{len(os.listdir(tmp_path))}"
        sub.mkdir()
        settings = make_settings(sub, **overrides)
        app = build_app(settings)
        return await aiohttp_client(app)

    yield factory


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> Any:
    return await make_client()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveDaemon:
    """`sandboxd serve` as a real subprocess, as an operator runs it."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None, wrapper: tuple[str, ...] = (),
                 **overrides: Any) -> None:
        """`env` is added to the daemon's environment; `wrapper` is an argv prefix it runs under."""
        self.env = {**os.environ, **(env or {})}
        self.wrapper = wrapper
        self.port = _free_port()
        self.tmp = tmp
        config = tmp / "sandboxd.toml"
        storage = {"session_max_bytes": 32 * MiB}
        storage.update(overrides.pop("storage", {}))
        tables = {k: v for k, v in overrides.items() if isinstance(v, dict)}  # e.g. auth = {...}
        top: dict[str, Any] = {
            "state_dir": state_dir_for(tmp),
            "compile_cache_dir": state_dir_for(tmp) + "-cache",
            "jail_configs_dir": str(JAIL_CONFIGS),
            "cgroup_name": f"sandboxd-live-{os.getpid()}-{self.port}",
            "port": self.port,
            **{k: v for k, v in overrides.items() if k not in tables},
        }
        lines = [f"{key} = {msgspec.json.encode(value).decode()}" for key, value in top.items()]
        lines.append("[storage]")
        lines += [f"{k} = {v}" for k, v in storage.items()]
        for name, table in tables.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {msgspec.json.encode(v).decode()}" for k, v in table.items()]
        config.write_text("\n".join(lines) + "\n")
        load_settings(str(config))  # fail here, not in the child, on a bad test config
        self.config = config
        self.log = open(tmp / "daemon.log", "ab")
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        """(Re)start `sandboxd serve` on this config: same port, state dir and cgroup name."""
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "sandboxd", "serve", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
        )
        self._wait_ready()

    def exec(self, code: str, lang: str = "py", timeout_s: float = 60) -> dict[str, Any]:
        """POST /exec as a plain HTTP client; the parsed 200 reply."""
        req = urllib.request.Request(self.url + "/exec", data=json.dumps({"lang": lang, "code": code}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            body: dict[str, Any] = json.loads(r.read())
            return body

    def crash(self) -> None:
        """SIGKILL: the daemon gets no chance to clean up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def leftovers(self, running: bool = False) -> tuple[list[str], list[Path]]:
        """Mounts under this daemon's state dir and its run cgroups. With `running`, the live
        instance's own source tmpfs (state/src, one per daemon) is expected and not counted."""
        state = state_dir_for(self.tmp)
        mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines()
                  if state in line and not (running and line.split()[1] == f"{state}/src")]
        name = f"sandboxd-live-{os.getpid()}-{self.port}"
        return mounts, cgroup_dirs(f"{name}/run-*")

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited: " + (self.tmp / "daemon.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("daemon did not become ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode


def cgroup_dirs(pattern: str, root: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """Cgroup directories matching `pattern` (a relative glob): under each controller's mount on
    v1, anywhere in the unified tree on v2 (a daemon nests its groups in its own cgroup)."""
    if (root / "cgroup.controllers").exists():
        return sorted(p for p in root.rglob(pattern) if p.is_dir())
    return sorted(root.glob(f"*/{pattern}"))


def procs_in_uid_range(base: int, count: int) -> list[int]:
    """Host pids (zombies included) whose uid lies in [base, base + count): jailed processes."""
    out = subprocess.run(["ps", "-eo", "pid=,uid="], capture_output=True, text=True, check=True).stdout
    return [int(p) for p, u in (line.split() for line in out.splitlines()) if base <= int(u) < base + count]


@pytest.fixture(scope="session")
def live_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("SANDBOXD_TEST_DAEMON_URL")
    if url:  # a daemon installed and started outside the test run (the guest tier's unit)
        yield url
        return
    daemon = LiveDaemon(tmp_path_factory.mktemp("live"))
    try:
        yield daemon.url
    finally:
        assert daemon.stop() == 0


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole run: no session mounts and no cgroups of ours remain."""
    base = f"/tmp/sandboxd-tests-{os.getpid()}"
    yield
    if not _is_root():
        return
    pid = str(os.getpid())
    mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines() if base in line]
    cgroups = [p for p in cgroup_dirs("sandboxd-*") if pid in p.name]
    assert not mounts, f"session mounts left behind: {mounts}"
    shutil.rmtree(base, ignore_errors=True)
    assert not cgroups, f"cgroups left behind: {cgroups}"
