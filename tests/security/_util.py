"""Helpers shared by the security tests: run code through the HTTP API, read the loaded
settings and jail profiles, and prove the daemon is still serving after an attack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sandboxd.http import STORE
from sandboxd.pbtext import parse

__all__ = ["run", "run_raw", "settings_of", "store_of", "profile_of", "tmpfs_size_of", "profile_env",
           "assert_daemon_fine", "jail_json"]


async def run_raw(client: Any, code: str, lang: str = "py", **extra: Any) -> Any:
    return await client.post("/exec", json={"lang": lang, "code": code, **extra})


async def run(client: Any, code: str, lang: str = "py", **extra: Any) -> dict[str, Any]:
    resp = await run_raw(client, code, lang, **extra)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def jail_json(client: Any, code: str, lang: str = "py", **extra: Any) -> Any:
    """Run code whose last stdout line is JSON; return that value (fails with the stderr)."""
    body = await run(client, code, lang, **extra)
    lines = body["stdout"].strip().splitlines()
    assert lines, f"no output: status={body['status']} stderr={body['stderr'][-2000:]}"
    return json.loads(lines[-1])


def store_of(client: Any) -> Any:
    return client.server.app[STORE]


def settings_of(client: Any) -> Any:
    return store_of(client).settings


def profile_of(client: Any, name: str = "python") -> dict[str, Any]:
    """The jail profile exactly as the app loads it (from its own jail_configs_dir)."""
    path = Path(settings_of(client).jail_configs_dir) / f"{name}.cfg"
    parsed: dict[str, Any] = parse(path.read_text())
    return parsed


def tmpfs_size_of(client: Any, dst: str, name: str = "python") -> int:
    """The size= option of the profile's tmpfs mounted at dst, in bytes."""
    for m in profile_of(client, name).get("mount", []):
        if isinstance(m, dict) and m.get("dst", [None])[-1] == dst and "options" in m:
            for opt in str(m["options"][-1]).split(","):
                if opt.startswith("size="):
                    v = opt[5:].lower()
                    mult = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(v[-1], 1)
                    return int(v.rstrip("kmg")) * mult
    raise AssertionError(f"profile has no sized tmpfs at {dst}")


def profile_env(client: Any, name: str = "python") -> dict[str, str]:
    env = {}
    for kv in profile_of(client, name).get("envar", []):
        k, _, v = str(kv).partition("=")
        env[k] = v
    return env


async def assert_daemon_fine(client: Any) -> None:
    """After an attack: /health answers 200 and a brand-new session runs code normally."""
    health = await client.get("/health")
    assert health.status == 200, await health.text()
    body = await run(client, "import os; print('alive', os.getcwd())")
    assert body["status"] == "ok" and body["stdout"] == "alive /mnt/data\n", body
    assert store_of(client).admission.running == 0

