"""Graceful stop for `sandboxd serve`: on SIGTERM the daemon keeps its listener but takes no
new runs (503, /health 503), lets the runs in flight finish for `shutdown_drain_s`, kills what
is left (those requests answer 503: the daemon stopped them, their code did not fail), and
only then closes the listener and cleans up. A second SIGTERM cuts the drain short; SIGINT
stops at once, as before.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .executors import in_kill_pool
from .http import READY, STORE
from .systemd import notify

__all__ = ["install", "drain"]

log = logging.getLogger(__name__)

# After the kill: how long the killed runs get to reap their jails and send their 503.
KILLED_REPLY_S = 10.0


async def drain(app: web.Application, drain_s: float, cut_short: asyncio.Event) -> None:
    store = app[STORE]
    notify("STOPPING=1")  # the service manager learns now, not after the drain
    store.closing = True
    app[READY].update(ok=False, why="shutting down")
    log.info("stopping: draining %d run(s) in flight for up to %g s", store.admission.running, drain_s)
    idle = asyncio.ensure_future(store.admission.wait_idle(drain_s))
    cut = asyncio.ensure_future(cut_short.wait())
    await asyncio.wait((idle, cut), return_when=asyncio.FIRST_COMPLETED)
    cut.cancel()
    if not (idle.done() and idle.result()):
        idle.cancel()
        log.warning("stopping: killing %d run(s) still in flight", store.admission.running)
        await in_kill_pool(store.runner.kill_all)
        if not await store.admission.wait_idle(KILLED_REPLY_S):
            log.error("stopping: runs still in flight after the kill")


def _exit() -> None:
    raise web.GracefulExit()  # what aiohttp's own handler raises: run_app then cleans up


def install(app: web.Application, drain_s: float) -> None:
    """Replace aiohttp's SIGTERM handler (it closes the listener at once) with the drain."""

    async def on_startup(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        cut_short = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []

        def on_sigterm() -> None:
            if tasks:
                cut_short.set()
                return

            async def run() -> None:
                try:
                    await drain(app, drain_s, cut_short)
                finally:
                    loop.call_soon(_exit)

            tasks.append(loop.create_task(run()))

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    app.on_startup.append(on_startup)
