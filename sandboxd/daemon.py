"""Assembles the daemon (settings -> policy, cgroups, runner, sessions, HTTP) and owns its
lifecycle: single-instance lock, cleanup of a crashed instance's leftovers, the self-test,
the sweeper, and an orderly stop (runs ended, tmpfs unmounted, cgroups removed)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .auth import Authenticator
from .canary import Check, run_canaries
from .cgroups import CgroupManager, detect_cgroups
from .compilecache import CompileCache
from .errors import ConfigError
from .executors import in_kill_pool
from .http import create_app
from .languages import RECIPES
from .policy import Policy, settings_sources
from .runner import Runner
from .sessions import SessionStore
from .settings import Settings, default_nsjail_path
from .systemd import notify, watchdog_forever, watchdog_interval_s

__all__ = ["Daemon", "build_app", "self_test"]

log = logging.getLogger(__name__)


class Daemon:
    """The lower layers, wired once. Used by `serve`, `doctor` and the tests alike."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        os.makedirs(settings.state_dir, mode=0o711, exist_ok=True)
        _check_traversable(settings.state_dir)
        self._lock_fd = _take_lock(os.path.join(settings.state_dir, "sandboxd.lock"))
        try:
            self.policy = Policy(settings.jail_configs_dir, settings.nsjail_path or default_nsjail_path())
            for profile in sorted({r.profile for r in RECIPES.values()}):
                self.policy.check_profile(profile, settings.state_dir, forbidden=settings_sources(settings))
                self.policy.check_submounts(profile)
            self.cgroups: CgroupManager = detect_cgroups(settings.cgroup_name)
            self.cgroups.setup()
            self.runner = Runner(self.policy, self.cgroups, settings.state_dir)
            self.runner.clean_stale()
            _check_traversable(settings.compile_cache_dir, create=True)
            self.cache = CompileCache(settings.compile_cache_dir, settings.compile_cache_max_bytes,
                                      RECIPES.values())
            self.store = SessionStore(settings, self.runner, self.cache)
            self.store.clean_stale()
        except BaseException:
            # Undo what was set up, without hiding the error that stopped the start (the same
            # missing privilege usually makes the undo fail too).
            if hasattr(self, "runner"):
                with contextlib.suppress(OSError):
                    self.runner.close()
            if hasattr(self, "cgroups"):
                with contextlib.suppress(OSError):
                    self.cgroups.teardown()
            os.close(self._lock_fd)
            raise

    async def close(self) -> None:
        await self.store.close()
        self.runner.close()
        self.cgroups.teardown()
        os.close(self._lock_fd)


def _check_traversable(path: str, create: bool = False) -> None:
    """nsjail binds session directories as the jail's uid, which must be able to reach them."""
    path = os.path.abspath(path)
    if create:
        os.makedirs(path, mode=0o755, exist_ok=True)
    while True:
        if not os.stat(path).st_mode & 0o001:
            raise ConfigError(f"state_dir must be reachable by other users: {path} lacks o+x")
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _take_lock(path: str) -> int:
    """One daemon per state directory: the startup cleanup must never touch a live peer."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another sandboxd is running with state_dir {os.path.dirname(path)}") from None
    return fd


async def self_test(daemon: Daemon, report: Callable[[Check], object] | None = None) -> None:
    """Fail closed: refuse to serve unless every isolation layer is proven in a real jail."""
    checks = await run_canaries(daemon.store, report)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise ConfigError("jail self-test failed, refusing to serve: " +
                          "; ".join(f"{c.layer} ({c.detail})" for c in failed))


def build_app(settings: Settings) -> web.Application:
    settings.check_exposure()
    auth = Authenticator(settings)  # loads key files: a bad one fails before anything is mounted
    ready: dict[str, object] = {"ok": False, "why": "starting"}
    holder: dict[str, Daemon] = {}

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        daemon = holder["daemon"]
        # The watchdog runs from the start: systemd counts the canaries' time against it too.
        interval = watchdog_interval_s()
        watchdog = asyncio.create_task(watchdog_forever(interval)) if interval else None
        try:
            await self_test(daemon, lambda c: daemon.store.metrics.canary_result(c.layer, c.ok))
        except BaseException:
            await _cancel(watchdog)
            await daemon.close()
            raise
        sweeper = asyncio.create_task(_sweep_forever(daemon))
        ready["ok"] = True
        notify("READY=1")
        log.info("sandboxd ready on %s:%d (%s)", settings.host, settings.port, daemon.cgroups.describe())
        try:
            yield
        finally:
            ready["ok"] = False
            await _cancel(sweeper)
            await daemon.close()
            await _cancel(watchdog)
            log.info("sandboxd stopped")

    daemon = Daemon(settings)
    holder["daemon"] = daemon
    app = create_app(daemon.store, auth, ready)
    app.cleanup_ctx.append(lifecycle)

    async def announce_stopping(app: web.Application) -> None:
        # `serve`'s drain announces the stop as SIGTERM arrives; this covers every other way in
        # (SIGINT, an embedding app). systemd takes a repeated STOPPING=1 as the same state.
        notify("STOPPING=1")

    app.on_shutdown.append(announce_stopping)

    async def stop_runs(app: web.Application) -> None:
        # Before aiohttp waits for handlers: end in-flight runs so they answer at once.
        daemon.store.closing = True
        ready["ok"] = False
        await in_kill_pool(daemon.runner.kill_all)

    app.on_shutdown.append(stop_runs)
    return app


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sweep_forever(daemon: Daemon) -> None:
    while True:
        await asyncio.sleep(daemon.settings.storage.sweep_interval_s)
        try:
            await daemon.store.sweep()
        except Exception:
            log.exception("session sweep failed")
