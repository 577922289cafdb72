"""Admission control: a fixed number of run slots and a short, bounded queue in front of them."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from .errors import RateLimited

__all__ = ["Admission"]


class Admission:
    def __init__(self, slots: int, queue_max: int, queue_wait_s: float, retry_after_s: float,
                 on_wait: Callable[[float], None] | None = None) -> None:
        self._sem = asyncio.Semaphore(slots)
        self.slots = slots
        self.queue_max = queue_max
        self.queue_wait_s = queue_wait_s
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        self.waiting = 0
        self.running = 0
        self._on_wait = on_wait  # told how long each admitted request waited (seconds)
        self._idle = asyncio.Event()  # no run holds a slot and none waits for one
        self._idle.set()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.waiting >= self.queue_max and self._sem.locked():
            raise RateLimited(self.retry_after_s)
        self.waiting += 1
        self._idle.clear()
        started = time.monotonic()
        try:
            if not self._sem.locked():
                await self._sem.acquire()  # a free slot: no wait_for (it times out at 0 s)
            else:
                await asyncio.wait_for(self._sem.acquire(), timeout=self.queue_wait_s)
            self.running += 1  # before `waiting` drops, so the admission never looks idle
        except TimeoutError:
            raise RateLimited(self.retry_after_s) from None
        finally:
            self.waiting -= 1
            self._check_idle()
        try:
            if self._on_wait is not None:
                self._on_wait(time.monotonic() - started)
            yield
        finally:
            self.running -= 1
            self._sem.release()
            self._check_idle()

    def _check_idle(self) -> None:
        if not self.waiting and not self.running:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Until no run holds or waits for a slot (True), or timeout_s passed (False)."""
        if self._idle.is_set():  # wait_for with a 0 s timeout would report False even when idle
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True
