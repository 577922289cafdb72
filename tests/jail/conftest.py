"""Jail tests check "no process of this session's uid is left" on a host where other sandboxd
test runs may be jailing code at the same time: every app here gets its own outside-uid range
(the same blocks as the security tier's), so those checks neither see nor disturb another run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.security.conftest import UID_BLOCK, unique_uid_base


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
