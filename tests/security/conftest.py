"""Security tests run beside other test runs on the same host: give every app of this run its
own outside-uid range, so "no process of this session's uid is left" cannot be confused by
(or confuse) another daemon's jails."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest

# Far above the shipped default (300000 + 60000) and other test runs; one block per app.
UID_BLOCK = 1000
_blocks = itertools.count()


def unique_uid_base() -> int:
    return 20_000_000 + (os.getpid() % 4000) * 200 * UID_BLOCK + next(_blocks) % 200 * UID_BLOCK


@pytest.fixture
async def make_client(make_client: Callable[..., Any]) -> Callable[..., Any]:
    async def factory(**overrides: Any) -> Any:
        overrides.setdefault("uid_base", unique_uid_base())
        overrides.setdefault("uid_count", UID_BLOCK)
        return await make_client(**overrides)

    return factory


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> Any:
    return await make_client()
