"""The JWT verifier and key loading (sandboxd/jwtauth.py) against tokens signed the way
LibreChat signs them. Every refusal has a harmless twin that the same verifier accepts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from sandboxd.errors import ConfigError, Unauthorized
from sandboxd.jwtauth import MAX_TOKEN_LIFETIME_S, Identity, JwtVerifier, load_keys
from tests.jwt_signer import LIBRECHAT_KID, Signer, b64url, forge

LEEWAY_S = 30


@pytest.fixture(scope="module")
def ed() -> Signer:
    return Signer("EdDSA")


@pytest.fixture(scope="module")
def rs() -> Signer:
    return Signer("RS256", kid="rsa-2026", slot=0)


@pytest.fixture
def verifier(tmp_path: Path, ed: Signer, rs: Signer) -> JwtVerifier:
    """EdDSA key from a PEM file (kid = file stem), RS256 key from a JWKS file."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [rs.public_jwk()]}))
    keys = load_keys([ed.write_pem(tmp_path)], str(jwks))
    return JwtVerifier(keys, issuer="librechat", audience="codeapi", leeway_s=LEEWAY_S)


def refused(verifier: JwtVerifier, token: str, why: str) -> None:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(token)
    assert why.lower() in info.value.message.lower(), info.value.message
    assert token not in info.value.message


def test_librechat_tokens_are_accepted_with_both_algorithms(verifier: JwtVerifier, ed: Signer, rs: Signer) -> None:
    assert verifier.verify(ed.mint(sub="64f0c0ffee", tenant="acme")) == Identity(tenant="acme", subject="64f0c0ffee")
    assert verifier.verify(rs.mint(sub="64f0c0ffee", tenant="acme")) == Identity(tenant="acme", subject="64f0c0ffee")


def test_absent_tenant_is_legacy(verifier: JwtVerifier, ed: Signer) -> None:
    assert verifier.verify(ed.mint(sub="u", tenant=None)) == Identity(tenant="legacy", subject="u")


def test_expired_token_is_refused_within_leeway_accepted(verifier: JwtVerifier, ed: Signer) -> None:
    now = int(time.time())
    refused(verifier, ed.mint(now=now - 400, ttl_s=300), "expired")  # expired 100 s ago
    assert verifier.verify(ed.mint(now=now - 310, ttl_s=300)).subject == "user-a"  # 10 s ago: skew


def test_not_yet_valid_token_is_refused_within_leeway_accepted(verifier: JwtVerifier, ed: Signer) -> None:
    now = int(time.time())
    refused(verifier, ed.mint(nbf=now + 120, iat=now, exp=now + 200), "not yet valid")
    refused(verifier, ed.mint(iat=now + 120, nbf=now, exp=now + 200), "not yet valid")
    assert verifier.verify(ed.mint(nbf=now + 10, iat=now + 10, exp=now + 200)).subject == "user-a"


def test_wrong_audience_is_refused(verifier: JwtVerifier, ed: Signer) -> None:
    refused(verifier, ed.mint(aud="someone-else"), "audience")
    refused(verifier, ed.mint(aud=["someone-else", "codeapi"]), "audience")  # one exact string only
    refused(verifier, ed.mint(aud=None), "aud")
    assert verifier.verify(ed.mint(aud="codeapi")).subject == "user-a"


def test_wrong_issuer_is_refused(verifier: JwtVerifier, ed: Signer) -> None:
    refused(verifier, ed.mint(iss="librechat-evil"), "issuer")
    refused(verifier, ed.mint(iss="Librechat"), "issuer")
    refused(verifier, ed.mint(iss=None), "iss")
    assert verifier.verify(ed.mint(iss="librechat")).subject == "user-a"


def test_configured_issuer_and_audience_replace_the_defaults(tmp_path: Path, ed: Signer) -> None:
    v = JwtVerifier(load_keys([ed.write_pem(tmp_path)], None), issuer="lc-prod", audience="sbx", leeway_s=0)
    refused(v, ed.mint(), "issuer")
    assert v.verify(ed.mint(iss="lc-prod", aud="sbx")).subject == "user-a"


def test_token_signed_by_another_key_is_refused(verifier: JwtVerifier, ed: Signer) -> None:
    impostor = Signer("EdDSA", kid=ed.kid)  # same kid, different private key
    refused(verifier, impostor.mint(), "signature")
    assert verifier.verify(ed.mint()).subject == "user-a"


def test_keys_named_inside_the_token_are_ignored(verifier: JwtVerifier, ed: Signer) -> None:
    """A token cannot bring its own key: `jwk`, `jku` and `x5u` headers select nothing."""
    attacker = Signer("EdDSA", kid=ed.kid)
    jwk = {k: v for k, v in attacker.public_jwk().items() if k in ("kty", "crv", "x")}
    for extra in ({"jwk": jwk}, {"jku": "http://127.0.0.1:9/jwks.json"}, {"x5u": "http://127.0.0.1:9/c.pem"}):
        refused(verifier, attacker.mint(headers=extra), "signature")
    assert verifier.verify(ed.mint(headers={"jwk": jwk})).subject == "user-a"  # ignored, not an error


def test_tampered_claims_are_refused(verifier: JwtVerifier, ed: Signer) -> None:
    header, _, sig = ed.mint(sub="alice").split(".")
    payload = b64url(json.dumps(ed.claims(sub="bob")).encode())
    refused(verifier, f"{header}.{payload}.{sig}", "signature")


def test_unknown_or_missing_kid_is_refused(verifier: JwtVerifier, ed: Signer) -> None:
    refused(verifier, ed.mint(headers={"kid": "lc-codeapi-2025-01"}), "matches no configured key")
    refused(verifier, ed.mint(headers={"kid": "lc-codeapi-2026-05.pem"}), "matches no configured key")
    refused(verifier, ed.mint(headers={"kid": None}), "no key id")
    assert verifier.verify(ed.mint(headers={"kid": LIBRECHAT_KID})).subject == "user-a"


def test_token_living_longer_than_librechat_mints_is_refused(verifier: JwtVerifier, ed: Signer) -> None:
    now = int(time.time())
    refused(verifier, ed.mint(ttl_s=3600), "lives too long")
    refused(verifier, ed.mint(ttl_s=MAX_TOKEN_LIFETIME_S + LEEWAY_S + 5), "lives too long")
    # minted long ago, still unexpired: its lifetime (exp - iat) gives it away
    refused(verifier, ed.mint(iat=now - 600, nbf=now - 600, exp=now + 100), "lives too long")
    assert verifier.verify(ed.mint(ttl_s=MAX_TOKEN_LIFETIME_S)).subject == "user-a"
    assert verifier.verify(ed.mint(iat=now - 200, nbf=now - 200, exp=now + 100)).subject == "user-a"


def test_missing_or_odd_claims_are_refused(verifier: JwtVerifier, ed: Signer) -> None:
    refused(verifier, ed.mint(exp=None), "exp")
    refused(verifier, ed.mint(sub=""), "sub")
    refused(verifier, ed.mint(sub=None), "sub")
    refused(verifier, ed.mint(exp=str(int(time.time()) + 60)), "invalid token")
    refused(verifier, ed.mint(tenant=""), "tenant_id")
    refused(verifier, ed.mint(tenant=7), "tenant_id")  # type: ignore[arg-type]
    refused(verifier, ed.mint(sub="x" * 513), "sub")
    assert verifier.verify(ed.mint(sub="x" * 512)).subject == "x" * 512


def test_alg_none_is_refused(verifier: JwtVerifier, ed: Signer) -> None:
    claims = ed.claims()
    refused(verifier, forge({"alg": "none", "typ": "JWT", "kid": ed.kid}, claims, None), "malformed")
    # with a signature segment present, it is the algorithm policy that refuses it
    token = forge({"alg": "none", "typ": "JWT", "kid": ed.kid}, claims, None) + "AAAA"
    refused(verifier, token, "algorithm not accepted")
    refused(verifier, forge({"alg": "None", "kid": ed.kid}, claims, None) + "AAAA", "algorithm not accepted")
    assert verifier.verify(ed.mint()).subject == "user-a"


@pytest.mark.parametrize("which", ["ed", "rs"])
def test_hs256_keyed_with_the_public_key_is_refused(verifier: JwtVerifier, which: str, ed: Signer, rs: Signer) -> None:
    """Algorithm confusion: an attacker holding the public key "signs" with HMAC keyed by it."""
    signer = ed if which == "ed" else rs
    pem = signer.public_pem()
    for alg in ("HS256", "HS384", "HS512"):
        refused(verifier, forge({"alg": alg, "typ": "JWT", "kid": signer.kid}, signer.claims(), pem),
                "algorithm not accepted")
    assert verifier.verify(signer.mint()).subject == "user-a"


def test_algorithm_must_match_the_key(verifier: JwtVerifier, ed: Signer, rs: Signer) -> None:
    claims = ed.claims()
    refused(verifier, forge({"alg": "RS256", "kid": ed.kid}, claims, None) + "AAAA", "does not match its key")
    refused(verifier, forge({"alg": "EdDSA", "kid": rs.kid}, claims, None) + "AAAA", "does not match its key")
    refused(verifier, forge({"alg": "ES256", "kid": ed.kid}, claims, None) + "AAAA", "algorithm not accepted")
    refused(verifier, forge({"alg": "PS256", "kid": rs.kid}, claims, None) + "AAAA", "algorithm not accepted")


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "a b.c.d", "ey\udcff.ey.sig", "é.b.c",
                                   "eyJhbGciOiJFZERTQSJ9.e30.AAAA", "!!!!.e30.AAAA", "a." * 5000 + "b",
                                   b64url(b"[" * 3000 + b"]" * 3000) + ".e30.AAAA",
                                   b64url(b'{"alg":"EdDSA","kid":"x","a":' + b"[" * 2000 + b"]" * 2000 + b"}")
                                   + ".e30.AAAA"])
def test_malformed_tokens_are_refused(verifier: JwtVerifier, token: str) -> None:
    with pytest.raises(Unauthorized):
        verifier.verify(token)


# -- key loading: once, at start; a bad file stops the daemon with its name in the message --------

def _pem(key: Any, private: bool = False) -> bytes:
    if private:
        data: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        return data
    data = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def _config_error(tmp_path: Path, name: str, content: bytes | str, as_jwks: bool = False) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as info:
        load_keys([] if as_jwks else [str(path)], str(path) if as_jwks else None)
    assert str(path) in info.value.message
    return info.value.message


def test_bad_pem_files_fail_start_naming_the_file(tmp_path: Path) -> None:
    edkey = ed25519.Ed25519PrivateKey.generate()
    assert "private key" in _config_error(tmp_path, "k1.pem", _pem(edkey, private=True))
    assert "not a PEM public key" in _config_error(tmp_path, "k2.pem", b"-----BEGIN PUBLIC KEY-----\nxx\n")
    assert "exactly one" in _config_error(tmp_path, "k3.pem", b"hello")
    assert "exactly one" in _config_error(tmp_path, "k4.pem", _pem(edkey) + _pem(edkey))
    assert "2048" in _config_error(tmp_path, "k5.pem", _pem(rsa.generate_private_key(65537, 1024)))
    assert "unsupported key type" in _config_error(tmp_path, "k6.pem", _pem(ed448.Ed448PrivateKey.generate()))
    assert "unsupported key type" in _config_error(tmp_path, "k7.pem", _pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ConfigError, match="missing.pem"):
        load_keys([str(tmp_path / "missing.pem")], None)
    # twin: the same kind of file with a public key loads, its stem the key id
    (tmp_path / "lc-codeapi-2026-05.pem").write_bytes(_pem(edkey))
    keys = load_keys([str(tmp_path / "lc-codeapi-2026-05.pem")], None)
    assert list(keys) == ["lc-codeapi-2026-05"] and keys["lc-codeapi-2026-05"].algorithm == "EdDSA"


def test_bad_jwks_files_fail_start_naming_the_file(tmp_path: Path, ed: Signer, rs: Signer) -> None:
    good = ed.public_jwk()
    private = json.loads(__import__("jwt").algorithms.OKPAlgorithm.to_jwk(ed.private))
    cases = {
        "private": ({"keys": [{**private, "kid": "k"}]}, "private key material"),
        "no_kid": ({"keys": [{k: v for k, v in good.items() if k != "kid"}]}, "kid"),
        "hmac": ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}, "private key material"),
        "ec": ({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "e"}]}, "only OKP Ed25519"),
        "wrong_alg": ({"keys": [{**good, "alg": "RS256"}]}, "declares alg"),
        "enc_use": ({"keys": [{**good, "use": "enc"}]}, "use"),
        "empty": ({"keys": []}, "at least one key"),
        "not_object": ([good], "at least one key"),
        "bad_x": ({"keys": [{**good, "x": "AAAA"}]}, "invalid"),
    }
    for name, (doc, why) in cases.items():
        assert why in _config_error(tmp_path, name + ".json", json.dumps(doc), as_jwks=True), name
    assert "not valid JSON" in _config_error(tmp_path, "garbage.json", "{", as_jwks=True)
    # twin: the public members alone load, both key types
    (tmp_path / "ok.json").write_text(json.dumps({"keys": [good, rs.public_jwk()]}))
    keys = load_keys([], str(tmp_path / "ok.json"))
    assert {k: v.algorithm for k, v in keys.items()} == {ed.kid: "EdDSA", rs.kid: "RS256"}


def test_a_key_id_configured_twice_is_refused(tmp_path: Path, ed: Signer) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [ed.public_jwk()]}))
    with pytest.raises(ConfigError, match="configured twice"):
        load_keys([ed.write_pem(tmp_path)], str(tmp_path / "jwks.json"))


def test_a_verifier_without_keys_is_refused() -> None:
    with pytest.raises(ConfigError):
        JwtVerifier({}, issuer="librechat", audience="codeapi", leeway_s=30)


# -- settings: which modes may start, and where ---------------------------------------------------

def _settings(tmp_path: Path, auth: str) -> Any:
    from sandboxd.settings import load_settings

    cfg = tmp_path / "s.toml"
    cfg.write_text(f'host = "0.0.0.0"\n[auth]\n{auth}\n')
    return load_settings(str(cfg))


def test_jwt_modes_need_their_keys_and_may_then_listen_off_loopback(tmp_path: Path, ed: Signer) -> None:
    pem = ed.write_pem(tmp_path)
    with pytest.raises(ConfigError, match="jwt_public_key_files"):
        _settings(tmp_path, 'mode = "jwt"').check_exposure()
    with pytest.raises(ConfigError, match="no API keys"):
        _settings(tmp_path, f'mode = "api_key+jwt"\njwt_public_key_files = ["{pem}"]').check_exposure()
    with pytest.raises(ConfigError, match="jwks_file"):
        _settings(tmp_path, 'mode = "api_key+jwt"\napi_keys = ["k"]').check_exposure()
    with pytest.raises(ConfigError, match="jwt_leeway_s"):
        _settings(tmp_path, f'mode = "jwt"\njwt_public_key_files = ["{pem}"]\njwt_leeway_s = 3600')
    with pytest.raises(ConfigError, match="jwt_audience"):
        _settings(tmp_path, f'mode = "jwt"\njwt_public_key_files = ["{pem}"]\njwt_audience = ""')
    # twins: with their keys both modes may listen on a network address
    _settings(tmp_path, f'mode = "jwt"\njwt_public_key_files = ["{pem}"]').check_exposure()
    _settings(tmp_path, f'mode = "api_key+jwt"\napi_keys = ["k"]\njwt_public_key_files = ["{pem}"]').check_exposure()


def test_unreadable_api_keys_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="api_keys_file"):
        _settings(tmp_path, f'mode = "api_key"\napi_keys_file = "{tmp_path}/absent"').check_exposure()
    (tmp_path / "keys").write_text("# one per line\nk1\n")
    assert _settings(tmp_path, f'mode = "api_key"\napi_keys_file = "{tmp_path}/keys"').api_keys() == ("k1",)
