"""Dedicated, bounded thread pools for the daemon's blocking work, so none of it runs on the
event loop or on the loop's shared default pool (6 threads on a 2-core host).

Two pools, because their work differs in kind: a kill loop or a cgroup removal can take
seconds under a fork bomb and must not make downloads and input copies wait behind it, and a
burst of large file copies must not delay the kill that ends a run at its time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["KILL_THREADS", "FILE_THREADS", "in_kill_pool", "in_file_pool"]

T = TypeVar("T")

# Kills and cgroup removal: one per run slot would be ideal; a few cover bursts, and a run's
# own kill waits at most for the ones queued ahead of it.
KILL_THREADS = 4
# File work: input copies, walks, downloads' opens, session mounts and unmounts, cache seals.
FILE_THREADS = 4

_kill_pool = ThreadPoolExecutor(KILL_THREADS, thread_name_prefix="sandboxd-kill")
_file_pool = ThreadPoolExecutor(FILE_THREADS, thread_name_prefix="sandboxd-file")


async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
    """Run fn in pool. If the caller is cancelled, still wait for the thread to finish before
    propagating: the work touches state (a session, a cgroup) the caller's cleanup then uses."""
    future = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


async def in_kill_pool(fn: Callable[..., T], *args: object) -> T:
    return await _run(_kill_pool, fn, *args)


async def in_file_pool(fn: Callable[..., T], *args: object) -> T:
    return await _run(_file_pool, fn, *args)
