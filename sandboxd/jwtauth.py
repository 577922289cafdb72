"""LibreChat's Code API tokens: `Authorization: Bearer <JWT>`, verified against public keys.

Policy, in the order it is applied to a token:
- Only EdDSA (Ed25519) and RS256 are accepted. `none`, HS* and everything else are refused
  before any key is touched, and each key is bound to the one algorithm of its type, so an
  RSA public key can never be used as an HMAC secret (algorithm confusion).
- Every configured key has a key id and every token must name one in its `kid` header:
  a JWKS key's id is its `kid` member; a PEM file's id is its file name without the last
  extension (`lc-codeapi-2026-05.pem` has id `lc-codeapi-2026-05`, LibreChat's default kid).
- The signature, then `iss` and `aud` (exact strings), `exp` (required), `nbf` and `iat`
  are checked with a small clock-skew leeway.
- A token may live at most MAX_TOKEN_LIFETIME_S: `exp` no further than that (plus leeway)
  ahead of now, and no further than that after its own `iat`. LibreChat mints tokens of at
  most 300 s; a longer-lived one was not minted by it.
- The caller is (`tenant_id`, `sub`); `tenant_id` defaults to `legacy`, as LibreChat does
  for single-tenant installs.

Keys are public keys only: a file holding private key material is refused at start, since
a signing key has no business on the host that runs untrusted code.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from .errors import ConfigError, Unauthorized

__all__ = ["ALGORITHMS", "MAX_TOKEN_LIFETIME_S", "DEFAULT_TENANT", "PublicKey", "Identity", "JwtVerifier",
           "load_keys"]

# The algorithms LibreChat signs with (its CODEAPI_JWT_ALGORITHM accepts exactly these two).
ALGORITHMS = ("EdDSA", "RS256")
# LibreChat's MAX_TTL_SECONDS: no token it mints lives longer.
MAX_TOKEN_LIFETIME_S = 300
DEFAULT_TENANT = "legacy"
RSA_MIN_BITS = 2048
# LibreChat's tokens are under 2 KiB; anything far larger is not one of them.
TOKEN_MAX_CHARS = 8192
# Bounds the claims that become the session owner (LibreChat sends ids, not prose).
IDENTITY_CLAIM_MAX_CHARS = 512
KEY_FILE_MAX_BYTES = 1024 * 1024
# A compact JWS: three base64url segments. Checked before PyJWT sees the string, which also
# keeps undecodable header bytes (surrogate-escaped by aiohttp) away from any encoder.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

VerifyingKey = Ed25519PublicKey | RSAPublicKey


class PublicKey(msgspec.Struct, frozen=True):
    kid: str
    algorithm: str  # the one algorithm this key verifies
    key: VerifyingKey
    source: str  # the file it came from, for start-up messages


class Identity(msgspec.Struct, frozen=True):
    tenant: str
    subject: str


def _verifying(key: object, where: str) -> tuple[str, VerifyingKey]:
    """The one algorithm a public key may verify, and the key; anything else is refused."""
    if isinstance(key, Ed25519PublicKey):
        return "EdDSA", key
    if isinstance(key, RSAPublicKey):
        if key.key_size < RSA_MIN_BITS:
            raise ConfigError(f"{where}: RSA key of {key.key_size} bits; at least {RSA_MIN_BITS} are required")
        return "RS256", key
    raise ConfigError(f"{where}: unsupported key type {type(key).__name__}; use an Ed25519 or RSA public key")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(KEY_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read JWT key file {path}: {exc.strerror}") from None
    if len(data) > KEY_FILE_MAX_BYTES:
        raise ConfigError(f"JWT key file {path} is larger than {KEY_FILE_MAX_BYTES} bytes")
    return data


def _load_pem(path: str) -> PublicKey:
    data = _read(path)
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"JWT key file {path} holds a private key; configure the public key only "
                          "(openssl pkey -in PRIVATE.pem -pubout)")
    if data.count(b"-----BEGIN") != 1:
        raise ConfigError(f"JWT key file {path} must hold exactly one PEM public key (one file per key id)")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"JWT key file {path} is not a PEM public key: {exc}") from None
    kid = Path(path).stem
    if not kid:
        raise ConfigError(f"JWT key file {path}: its name (without extension) is its key id and is empty")
    algorithm, verifying = _verifying(key, path)
    return PublicKey(kid=kid, algorithm=algorithm, key=verifying, source=path)


# Members of a JWK that only a private key has (RFC 7518 sections 6.2.2 and 6.3.2).
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def _load_jwk(jwk: object, where: str) -> PublicKey:
    if not isinstance(jwk, dict):
        raise ConfigError(f"{where}: a key must be a JSON object")
    private = [m for m in _PRIVATE_MEMBERS if m in jwk]
    if private:
        raise ConfigError(f"{where}: holds private key material ({', '.join(private)}); publish the public "
                          "members only")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ConfigError(f"{where}: every key needs a non-empty string `kid` (tokens select keys by it)")
    kty, use = jwk.get("kty"), jwk.get("use", "sig")
    if use != "sig":
        raise ConfigError(f"{where}: key {kid!r} has use {use!r}, not 'sig'")
    try:
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            key: object = OKPAlgorithm.from_jwk(jwk)
        elif kty == "RSA":
            key = RSAAlgorithm.from_jwk(jwk)
        else:
            raise ConfigError(f"{where}: key {kid!r} is kty {kty!r} crv {jwk.get('crv')!r}; "
                              "only OKP Ed25519 and RSA keys are accepted")
    except jwt.InvalidKeyError as exc:
        raise ConfigError(f"{where}: key {kid!r} is invalid: {exc}") from None
    algorithm, verifying = _verifying(key, where)
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm:
        raise ConfigError(f"{where}: key {kid!r} declares alg {declared!r} but is a {algorithm} key")
    return PublicKey(kid=kid, algorithm=algorithm, key=verifying, source=where)


def _load_jwks(path: str) -> list[PublicKey]:
    try:
        doc = json.loads(_read(path))
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"JWKS file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise ConfigError(f'JWKS file {path} must be a JSON object {{"keys": [...]}} with at least one key')
    return [_load_jwk(jwk, f"JWKS file {path} key #{i}") for i, jwk in enumerate(doc["keys"])]


def load_keys(pem_files: Iterable[str], jwks_file: str | None) -> dict[str, PublicKey]:
    """Every configured public key by key id. Any unreadable or unsuitable file is a
    ConfigError naming it: the daemon does not start with half its keys."""
    keys = [_load_pem(p) for p in pem_files]
    if jwks_file:
        keys += _load_jwks(jwks_file)
    by_kid: dict[str, PublicKey] = {}
    for k in keys:
        if k.kid in by_kid:
            raise ConfigError(f"JWT key id {k.kid!r} is configured twice ({by_kid[k.kid].source} and {k.source})")
        by_kid[k.kid] = k
    return by_kid


def _number(payload: Mapping[str, Any], claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unauthorized(f"Invalid token: claim {claim} is not a number")
    return float(value)


def _identity_claim(payload: Mapping[str, Any], claim: str, default: str | None) -> str:
    value = payload.get(claim, default)
    if not isinstance(value, str) or not value or len(value) > IDENTITY_CLAIM_MAX_CHARS:
        raise Unauthorized(f"Invalid token: claim {claim} must be a non-empty string of at most "
                           f"{IDENTITY_CLAIM_MAX_CHARS} characters")
    return value


class JwtVerifier:
    """Verifies one compact JWS at a time; holds no per-token state (LibreChat reuses a token
    for up to 30 s, so `jti` is not treated as single-use)."""

    def __init__(self, keys: Mapping[str, PublicKey], *, issuer: str, audience: str, leeway_s: float) -> None:
        if not keys:
            raise ConfigError("JWT authentication needs at least one public key")
        self.keys = dict(keys)
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s

    def verify(self, token: str) -> Identity:
        """The caller a token names, or Unauthorized saying what is wrong (never echoing the token)."""
        if len(token) > TOKEN_MAX_CHARS or not _COMPACT_JWS.fullmatch(token):
            raise Unauthorized("Malformed bearer token: expected a compact JWT")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, ValueError, RecursionError):
            raise Unauthorized("Malformed bearer token: unreadable JWT header") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise Unauthorized("Token algorithm not accepted: only EdDSA and RS256 are")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("Token has no key id (kid)")
        key = self.keys.get(kid)
        if key is None:
            raise Unauthorized("Token key id (kid) matches no configured key")
        if alg != key.algorithm:
            raise Unauthorized("Token algorithm does not match its key")
        try:
            payload: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[key.algorithm], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"], "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("Token is not yet valid (nbf or iat in the future)") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("Token signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"Token audience is not {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(f"Token issuer is not {self.issuer!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"Token lacks the required claim {exc.claim}") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("Invalid token") from None
        self._check_lifetime(payload)
        return Identity(tenant=_identity_claim(payload, "tenant_id", DEFAULT_TENANT),
                        subject=_identity_claim(payload, "sub", None))

    def _check_lifetime(self, payload: Mapping[str, Any]) -> None:
        exp, iat = _number(payload, "exp"), _number(payload, "iat")
        assert exp is not None  # required above
        if exp > time.time() + MAX_TOKEN_LIFETIME_S + self.leeway_s:
            raise Unauthorized(f"Token lives too long: exp is more than {MAX_TOKEN_LIFETIME_S} s ahead")
        if iat is not None and exp - iat > MAX_TOKEN_LIFETIME_S:
            raise Unauthorized(f"Token lives too long: exp - iat exceeds {MAX_TOKEN_LIFETIME_S} s")
