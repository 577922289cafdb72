"""Admission control: a fixed number of run slots and a short, bounded queue in front of them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .errors import RateLimited

__all__ = ["Admission"]


class Admission:
    def __init__(self, slots: int, queue_max: int, queue_wait_s: float, retry_after_s: float) -> None:
        self._sem = asyncio.Semaphore(slots)
        self.slots = slots
        self.queue_max = queue_max
        self.queue_wait_s = queue_wait_s
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        self.waiting = 0
        self.running = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.waiting >= self.queue_max and self._sem.locked():
            raise RateLimited(self.retry_after_s)
        self.waiting += 1
        try:
            if not self._sem.locked():
                await self._sem.acquire()  # a free slot: no wait_for (it times out at 0 s)
            else:
                await asyncio.wait_for(self._sem.acquire(), timeout=self.queue_wait_s)
        except TimeoutError:
            raise RateLimited(self.retry_after_s) from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()
