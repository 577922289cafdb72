"""End-to-end fixtures: LibreChat's own client package, installed once, and a driver runner.

The client lives in tests/e2e/client (package.json pins @librechat/agents exactly; the committed
package-lock.json pins the rest). `npm ci` runs only when node_modules is missing or holds another
version, with install scripts off (.npmrc): one of the package's dependencies has an install-time
telemetry hook, and the tests must not send traffic anywhere but loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CLIENT_DIR = Path(__file__).resolve().parent / "client"
AGENTS_VERSION = "3.9.2"
RESULT_MARKER = "E2E-RESULT "

# Environment a driver run must not inherit: proxies (the agents package honours $PROXY), and
# a non-loopback host or an API key from the caller's shell.
_DROP_ENV = ("PROXY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
             "E2E_ALLOWED_HOST", "LIBRECHAT_CODE_API_KEY")


def _installed_agents_version() -> str | None:
    manifest = CLIENT_DIR / "node_modules" / "@librechat" / "agents" / "package.json"
    try:
        version = json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version)


@pytest.fixture(scope="session")
def agents_client_dir() -> Path:
    """tests/e2e/client with its node_modules installed from the lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs node and npm (scripts/test.sh installs them)")
    if _installed_agents_version() != AGENTS_VERSION:
        lock = CLIENT_DIR / "package-lock.json"
        cmd = [npm, "ci"] if lock.exists() else [npm, "install"]
        cmd += ["--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        proc = subprocess.run(
            cmd, cwd=CLIENT_DIR, capture_output=True, text=True, timeout=900,
            env={**os.environ, "npm_config_update_notifier": "false"},
        )
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        installed = _installed_agents_version()
        assert installed == AGENTS_VERSION, f"installed @librechat/agents {installed}, want {AGENTS_VERSION}"
    return CLIENT_DIR


DriverRunner = Callable[..., dict[str, Any]]


@pytest.fixture
def run_driver(agents_client_dir: Path, live_daemon: str) -> DriverRunner:
    """Run `node driver.mjs <scenario>` against the live daemon and return what it observed.

    `suffix` is appended to the daemon's base URL (LibreChat users set it with and without /v1).
    """

    def run(scenario: str, suffix: str = "", timeout: float = 600, extra_env: dict[str, str] | None = None
            ) -> dict[str, Any]:
        return drive(agents_client_dir, live_daemon, scenario, suffix, timeout, extra_env)

    return run


def drive(agents_client_dir: Path, base_url: str, scenario: str, suffix: str = "", timeout: float = 600,
          extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `node driver.mjs <scenario>` against the daemon at `base_url`; what it observed."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(extra_env or {})
    env["LIBRECHAT_CODE_BASEURL"] = base_url.rstrip("/") + suffix
    env["NO_PROXY"] = "*"
    proc = subprocess.run(
        ["node", "driver.mjs", scenario],
        cwd=agents_client_dir, env=env, capture_output=True, text=True, timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if not lines:
        pytest.fail(
            f"driver {scenario} printed no result (exit {proc.returncode})\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER):])
    if proc.returncode != 0 or "fatal" in result:
        pytest.fail(
            f"driver {scenario} failed (exit {proc.returncode}): {result.get('fatal')}\n"
            f"{result.get('stack') or ''}\nstderr:\n{proc.stderr[-3000:]}"
        )
    assert result["scenario"] == scenario
    observed: dict[str, Any] = result["observed"]
    return observed
