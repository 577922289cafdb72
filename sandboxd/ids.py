"""Session and file IDs: 21-character nanoids, which LibreChat requires and treats as capabilities."""

from __future__ import annotations

import re

from nanoid import generate

__all__ = ["new_id", "is_valid_id", "redact"]

ID_LENGTH = 21
_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{21}\Z")


def new_id() -> str:
    # nanoid's default alphabet (64 symbols) and size from os.urandom: 126 bits, unguessable.
    value: str = generate(size=ID_LENGTH)
    return value


def is_valid_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def redact(value: str) -> str:
    """The form of an ID that may appear in logs: enough to correlate, too little to use."""
    return value[:6] + "…"
