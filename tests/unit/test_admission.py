"""Admission: run slots, a bounded queue in front of them, and 429 with a retry hint.

Real asyncio tasks contend for a real Admission; nothing here needs root or a jail."""

from __future__ import annotations

import asyncio

import pytest

from sandboxd.admission import Admission
from sandboxd.errors import RateLimited

# How long a test waits for a condition it polls for; only a broken admission reaches it.
DEADLINE_S = 10.0


async def until(cond: object) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.001)


async def hold(adm: Admission, release: asyncio.Event) -> None:
    async with adm.slot():
        await release.wait()


async def test_free_slots_admit_at_once_even_with_no_queue_wait() -> None:
    adm = Admission(slots=2, queue_max=0, queue_wait_s=0.0, retry_after_s=5)
    async with adm.slot():
        assert adm.running == 1 and adm.waiting == 0
        async with adm.slot():
            assert adm.running == 2
    assert adm.running == 0 and adm.waiting == 0


async def test_full_slots_and_full_queue_refuse_at_once_with_retry_after() -> None:
    adm = Admission(slots=1, queue_max=1, queue_wait_s=DEADLINE_S, retry_after_s=7)
    release = asyncio.Event()
    holder = asyncio.ensure_future(hold(adm, release))
    await until(lambda: adm.running == 1)
    queued = asyncio.ensure_future(hold(adm, release))
    await until(lambda: adm.waiting == 1)
    with pytest.raises(RateLimited) as refused:
        async with adm.slot():
            pytest.fail("admitted past a full queue")
    assert refused.value.status == 429 and refused.value.retry_after_s == 7
    assert adm.waiting == 1 and adm.running == 1  # the refusal took nothing
    release.set()
    await asyncio.gather(holder, queued)  # the queued request got the slot once it was freed
    assert adm.running == 0 and adm.waiting == 0


async def test_a_queued_request_is_refused_after_queue_wait() -> None:
    adm = Admission(slots=1, queue_max=4, queue_wait_s=0.05, retry_after_s=2)
    release = asyncio.Event()
    holder = asyncio.ensure_future(hold(adm, release))
    await until(lambda: adm.running == 1)
    with pytest.raises(RateLimited) as refused:
        async with adm.slot():
            pytest.fail("admitted while the only slot was held")
    assert refused.value.retry_after_s == 2
    assert adm.waiting == 0 and adm.running == 1
    release.set()
    await holder
    async with adm.slot():  # twin: a free slot is admitted again
        assert adm.running == 1


async def test_a_queued_request_takes_the_slot_when_it_is_freed() -> None:
    waited: list[float] = []
    adm = Admission(slots=1, queue_max=4, queue_wait_s=DEADLINE_S, retry_after_s=1, on_wait=waited.append)
    release = asyncio.Event()
    holder = asyncio.ensure_future(hold(adm, release))
    await until(lambda: adm.running == 1)
    entered = asyncio.Event()

    async def queued() -> None:
        async with adm.slot():
            entered.set()

    task = asyncio.ensure_future(queued())
    await until(lambda: adm.waiting == 1)
    assert not entered.is_set()
    release.set()
    await asyncio.gather(holder, task)
    assert entered.is_set() and len(waited) == 2 and all(w >= 0 for w in waited)


@pytest.mark.parametrize(("given", "told"), [(0.2, 1), (1.0, 1), (2.1, 3), (30.0, 30)])
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(given: float, told: int) -> None:
    assert Admission(slots=1, queue_max=1, queue_wait_s=1, retry_after_s=given).retry_after_s == told


async def test_a_cancelled_waiter_leaves_no_count_behind() -> None:
    adm = Admission(slots=1, queue_max=4, queue_wait_s=DEADLINE_S, retry_after_s=1)
    release = asyncio.Event()
    holder = asyncio.ensure_future(hold(adm, release))
    await until(lambda: adm.running == 1)
    waiter = asyncio.ensure_future(hold(adm, release))
    await until(lambda: adm.waiting == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert adm.waiting == 0 and adm.running == 1
    release.set()
    await holder
    assert adm.running == 0 and await adm.wait_idle(DEADLINE_S)


async def test_wait_idle_reports_held_slots_and_then_idleness() -> None:
    adm = Admission(slots=1, queue_max=1, queue_wait_s=1, retry_after_s=1)
    assert await adm.wait_idle(0)  # idle now: True even with no time to wait (shutdown_drain_s = 0)
    release = asyncio.Event()
    holder = asyncio.ensure_future(hold(adm, release))
    await until(lambda: adm.running == 1)
    assert not await adm.wait_idle(0.01)
    idle = asyncio.ensure_future(adm.wait_idle(DEADLINE_S))
    release.set()
    assert await idle
    await holder
