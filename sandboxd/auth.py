"""Who is calling: nobody in particular (mode none, trusted loopback), a static API key
(`X-API-Key`, LibreChat <= 0.8.5), a LibreChat JWT (`Authorization: Bearer`, LibreChat >= 0.8.6),
or either of the last two (mode api_key+jwt).

The result is a principal string that owns the sessions a caller creates; a session is
invisible to every other principal. Principals cannot collide across kinds: "" (mode none),
"key:<digest prefix>" for a key, "jwt:" + a JSON array [tenant, subject] for a token (JSON
quoting keeps every (tenant, subject) pair distinct, whatever characters a claim holds).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

from aiohttp import web

from .errors import BadRequest, Unauthorized
from .jwtauth import JwtVerifier, load_keys
from .settings import Settings

__all__ = ["Authenticator"]

log = logging.getLogger(__name__)


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth.mode
        self.accepts_key = self.mode in ("api_key", "api_key+jwt")
        self.accepts_jwt = self.mode in ("jwt", "api_key+jwt")
        # Keep digests only: comparing digests is constant-time and keeps keys out of dumps.
        self._digests = [hashlib.sha256(k.encode()).digest() for k in settings.api_keys()] if self.accepts_key else []
        self._verifier: JwtVerifier | None = None
        if self.accepts_jwt:
            a = settings.auth
            keys = load_keys(a.jwt_public_key_files, a.jwks_file)  # once, at start; ConfigError names the file
            self._verifier = JwtVerifier(keys, issuer=a.jwt_issuer, audience=a.jwt_audience, leeway_s=a.jwt_leeway_s)
            log.info("JWT keys loaded: %s", ", ".join(f"{k.kid} ({k.algorithm}, {k.source})" for k in keys.values()))

    def principal(self, request: web.Request) -> str:
        if self.mode == "none":
            return ""
        keys = request.headers.getall("X-API-Key", [])
        bearers = request.headers.getall("Authorization", [])
        # Two credentials could name two callers; guessing which one counts is how bypasses start.
        if len(keys) + len(bearers) > 1:
            raise BadRequest("Ambiguous authentication headers")
        if bearers:
            return self._from_bearer(bearers[0])
        if keys:
            return self._from_key(keys[0])
        if not self.accepts_jwt:
            raise Unauthorized("Missing or invalid API key")
        if not self.accepts_key:
            raise Unauthorized("Bearer token is required")
        raise Unauthorized("Missing credentials: send X-API-Key or Authorization: Bearer <JWT>")

    def _from_key(self, key: str) -> str:
        if not self.accepts_key:
            raise Unauthorized("Bearer token is required")
        # aiohttp hands undecodable header bytes over surrogate-escaped: encode them back to the
        # bytes that were sent (they can never equal a configured key) instead of failing.
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        matched = None
        for known in self._digests:  # no early exit: timing does not reveal which key matched
            if hmac.compare_digest(digest, known):
                matched = known
        if not key or matched is None:
            raise Unauthorized("Missing or invalid API key")
        return "key:" + matched.hex()[:16]

    def _from_bearer(self, value: str) -> str:
        if not self.accepts_jwt or self._verifier is None:
            raise Unauthorized("Missing or invalid API key (Authorization is not accepted in api_key mode)")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer":  # auth schemes are case-insensitive (RFC 9110 section 11.1)
            raise Unauthorized("Authorization must use the Bearer scheme")
        who = self._verifier.verify(token.strip())
        return "jwt:" + json.dumps([who.tenant, who.subject], ensure_ascii=True, separators=(",", ":"))
