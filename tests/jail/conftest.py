"""Jail tests check "no process of this session's uid is left" on a host where other sandboxd
test runs may be jailing code at the same time: every app here gets its own outside-uid range
from the security tier's fixtures (the same blocks), so those checks neither see nor disturb
another run."""

from __future__ import annotations

from tests.security.conftest import client, make_client  # noqa: F401 (fixtures, reused as they are)
