"""Who is calling: none (trusted loopback), or static API keys compared in constant time.

The result is a principal string that owns the sessions a caller creates; a session is
invisible to every other principal.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from .errors import Unauthorized
from .settings import Settings

__all__ = ["Authenticator"]


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth.mode
        # Keep digests only: comparing digests is constant-time and keeps keys out of dumps.
        self._digests = [hashlib.sha256(k.encode()).digest() for k in settings.api_keys()]

    def principal(self, request: web.Request) -> str:
        if self.mode == "none":
            return ""
        key = request.headers.get("X-API-Key", "")
        digest = hashlib.sha256(key.encode()).digest()
        matched = None
        for known in self._digests:  # no early exit: timing does not reveal which key matched
            if hmac.compare_digest(digest, known):
                matched = known
        if not key or matched is None:
            raise Unauthorized("Missing or invalid API key")
        return "key:" + matched.hex()[:16]
