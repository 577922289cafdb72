"""The signing side of LibreChat's Code API JWT, for tests: fresh keys made with cryptography,
tokens signed with PyJWT carrying the header and claims LibreChat's minting code sends
(`alg`, `typ`, `kid`; `iss`, `aud`, `sub`, `iat`, `nbf`, `exp`, `jti`, `tenant_id`, `role`,
`principal_source`, `auth_context_hash`). Signing is what LibreChat does; the verifier under
test is always sandboxd's own.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

LIBRECHAT_KID = "lc-codeapi-2026-05"


@functools.lru_cache(maxsize=8)
def _rsa_key(slot: int, bits: int = 2048) -> rsa.RSAPrivateKey:
    """RSA generation is slow on a loaded machine: one key per slot per test process."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """A LibreChat instance's signing key: EdDSA (its default) or RS256."""

    def __init__(self, alg: str = "EdDSA", kid: str = LIBRECHAT_KID, slot: int = 0) -> None:
        self.alg, self.kid = alg, kid
        self.private: Any = ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA" else _rsa_key(slot)

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return pem

    def write_pem(self, directory: Path) -> str:
        """The public key as sandboxd wants it: one PEM file named after its key id."""
        path = directory / f"{self.kid}.pem"
        path.write_bytes(self.public_pem())
        return str(path)

    def public_jwk(self) -> dict[str, Any]:
        algo = jwt.algorithms.OKPAlgorithm if self.alg == "EdDSA" else jwt.algorithms.RSAAlgorithm
        jwk: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def claims(self, sub: str = "user-a", tenant: str | None = "legacy", ttl_s: int = 300,
               now: int | None = None, **overrides: Any) -> dict[str, Any]:
        now = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "iss": "librechat", "aud": "codeapi", "sub": sub, "iat": now, "nbf": now, "exp": now + ttl_s,
            "jti": str(uuid.uuid4()), "role": "USER", "principal_source": "librechat_jwt",
            "auth_context_hash": hashlib.sha256(f"{sub}/{tenant}".encode()).hexdigest(),
        }
        if tenant is not None:
            claims["tenant_id"] = tenant
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(self, sub: str = "user-a", tenant: str | None = "legacy", ttl_s: int = 300,
             headers: dict[str, Any] | None = None, **overrides: Any) -> str:
        """A token as LibreChat sends it (override a claim with a value, drop one with None)."""
        header = {k: v for k, v in {"typ": "JWT", "kid": self.kid, **(headers or {})}.items() if v is not None}
        return jwt.encode(self.claims(sub, tenant, ttl_s, **overrides), self.private, algorithm=self.alg,
                          headers=header)

    def bearer(self, **kw: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.mint(**kw)}


def forge(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token no honest signer makes: `alg: none` (secret None, empty signature) or HMAC-SHA256
    keyed with `secret` (the algorithm-confusion attack uses the verifier's public key)."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)
