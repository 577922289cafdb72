"""HTTP tier, authentication as LibreChat >= 0.8.6 does it: `Authorization: Bearer <JWT>`.

The real app (real jail) in modes jwt and api_key+jwt, keys made fresh per test run, tokens
signed the way LibreChat signs them (tests/jwt_signer.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.jwt_signer import Signer, forge

pytestmark = pytest.mark.jail

API_KEY = "sk-test-" + "7" * 24
CODE = {"lang": "py", "code": "print('ran')"}


@pytest.fixture(scope="module")
def ed() -> Signer:
    return Signer("EdDSA")


@pytest.fixture(scope="module")
def rs() -> Signer:
    return Signer("RS256", kid="rsa-2026", slot=1)


@pytest.fixture
def key_files(tmp_path: Path, ed: Signer, rs: Signer) -> dict[str, Any]:
    """The EdDSA key as a PEM file named after LibreChat's default kid, the RSA one in a JWKS."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "jwks.json").write_text(json.dumps({"keys": [rs.public_jwk()]}))
    return {"jwt_public_key_files": [ed.write_pem(keys)], "jwks_file": str(keys / "jwks.json")}


def _routes(sid: str, fid: str) -> list[tuple[str, str]]:
    out = []
    for prefix in ("", "/v1"):
        out += [("POST", f"{prefix}/exec"), ("POST", f"{prefix}/upload"), ("POST", f"{prefix}/upload/batch"),
                ("GET", f"{prefix}/download/{sid}/{fid}"), ("GET", f"{prefix}/files/{sid}"),
                ("GET", f"{prefix}/sessions/{sid}/objects/{fid}"),
                ("DELETE", f"{prefix}/files/{sid}/{fid}"), ("DELETE", f"{prefix}/sessions/{sid}/objects/{fid}")]
    return out


def _body(path: str) -> dict[str, Any]:
    if path.endswith("/exec"):
        return {"json": CODE}
    if "/upload" in path:
        form = aiohttp.FormData()
        form.add_field("file", b"data", filename="u.txt")
        return {"data": form}
    return {}


async def _exec(client: Any, headers: Any, **body: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/exec", headers=headers, json={**CODE, **body})
    return resp.status, await resp.json()


async def test_valid_tokens_run_code_and_bad_ones_are_401(make_client: Any, key_files: dict[str, Any],
                                                          ed: Signer, rs: Signer) -> None:
    client = await make_client(auth={"mode": "jwt", **key_files})
    for signer in (ed, rs):
        status, body = await _exec(client, signer.bearer(sub="64f0c0ffee0000000000abcd"))
        assert status == 200 and body["stdout"] == "ran\n", (signer.alg, body)

    now = int(time.time())
    impostor = Signer("EdDSA", kid=ed.kid)
    bad: dict[str, dict[str, str]] = {
        "missing": {},
        "expired": ed.bearer(iat=now - 400, nbf=now - 400, exp=now - 100),
        "not_yet_valid": ed.bearer(nbf=now + 120, exp=now + 200),
        "wrong_audience": ed.bearer(aud="another-api"),
        "wrong_issuer": ed.bearer(iss="not-librechat"),
        "wrong_key": impostor.bearer(),
        "unknown_kid": ed.bearer(headers={"kid": "lc-codeapi-1999-01"}),
        "lives_too_long": ed.bearer(ttl_s=86400),
        "alg_none": {"Authorization": "Bearer " + forge({"alg": "none", "kid": ed.kid}, ed.claims(), None)},
        "hs256_public_key": {"Authorization": "Bearer " + forge({"alg": "HS256", "kid": ed.kid}, ed.claims(),
                                                                ed.public_pem())},
        "not_a_jwt": {"Authorization": "Bearer " + API_KEY},
        "empty_bearer": {"Authorization": "Bearer "},
        "basic_scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
        "token_without_scheme": {"Authorization": ed.mint()},
        "api_key_in_jwt_mode": {"X-API-Key": API_KEY},
    }
    for case, headers in bad.items():
        status, body = await _exec(client, headers)
        assert status == 401, (case, status, body)
        assert set(body) == {"error", "message"} and body["error"] == "unauthorized", (case, body)
        token = headers.get("Authorization", "Bearer x").partition(" ")[2]
        assert not token or token not in json.dumps(body), case

    # every route, not only /exec, refuses a missing or expired token
    up = await (await client.post("/exec", headers=ed.bearer(), json={"lang": "py",
                "code": "open('f.txt','w').write('f')"})).json()
    sid, fid = up["session_id"], up["files"][0]["id"]
    for case in ("missing", "expired"):
        for method, path in _routes(sid, fid):
            resp = await client.request(method, path, headers=bad[case], **_body(path))
            assert resp.status == 401, (case, method, path, resp.status)
    got = await client.get(f"/download/{sid}/{fid}", headers=ed.bearer())
    assert got.status == 200 and await got.read() == b"f"  # twin: nothing was deleted


async def test_two_credentials_are_ambiguous_400(make_client: Any, key_files: dict[str, Any], ed: Signer) -> None:
    client = await make_client(auth={"mode": "api_key+jwt", "api_keys": [API_KEY], **key_files})
    token = ed.mint()
    for headers in (
        {"X-API-Key": API_KEY, "Authorization": f"Bearer {token}"},  # what LibreChat's own server refuses
        [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")],
        [("X-API-Key", API_KEY), ("X-API-Key", API_KEY)],
    ):
        status, body = await _exec(client, headers)
        assert status == 400 and body == {"error": "bad_request", "message": "Ambiguous authentication headers"}
    # twins: each credential alone is accepted in this mode
    assert (await _exec(client, {"X-API-Key": API_KEY}))[0] == 200
    assert (await _exec(client, {"Authorization": f"Bearer {token}"}))[0] == 200
    assert (await _exec(client, {"authorization": f"bearer {token}"}))[0] == 200  # scheme is case-insensitive
    status, body = await _exec(client, {})
    assert status == 401 and "X-API-Key or Authorization" in body["message"]


async def test_api_key_mode_refuses_bearer_tokens(make_client: Any, ed: Signer) -> None:
    client = await make_client(auth={"mode": "api_key", "api_keys": [API_KEY]})
    assert (await _exec(client, ed.bearer()))[0] == 401
    assert (await _exec(client, {"X-API-Key": API_KEY}))[0] == 200


async def test_sessions_of_one_subject_are_invisible_to_others(make_client: Any, key_files: dict[str, Any],
                                                              ed: Signer, rs: Signer) -> None:
    client = await make_client(auth={"mode": "api_key+jwt", "api_keys": [API_KEY], **key_files})
    alice = {"sub": "team:alice", "tenant": "acme"}
    status, made = await _exec(client, ed.bearer(**alice), code="open('secret.txt','w').write('alice only')")
    assert status == 200
    sid, fid = made["session_id"], made["files"][0]["id"]
    ref = {"id": fid, "name": "secret.txt", "storage_session_id": sid}
    read = "import os; print(open('/mnt/data/secret.txt').read() if os.path.exists('/mnt/data/secret.txt') else 'absent')"

    others = {
        "other_subject": ed.bearer(sub="bob", tenant="acme"),
        "same_subject_other_tenant": ed.bearer(sub="team:alice", tenant="globex"),
        "same_subject_default_tenant": ed.bearer(sub="team:alice", tenant=None),
        # crafted claims that would collide with alice's under a naive "tenant:sub" join
        "shifted_separator": ed.bearer(sub="alice", tenant="acme:team"),
        "json_lookalike": ed.bearer(sub="alice", tenant='acme","team:'),
        "looks_like_a_key_principal": ed.bearer(sub="key:0000000000000000", tenant="acme"),
        "api_key": {"X-API-Key": API_KEY},
    }
    for who, headers in others.items():
        for method, path in [("GET", f"/files/{sid}"), ("GET", f"/download/{sid}/{fid}"),
                             ("GET", f"/sessions/{sid}/objects/{fid}"), ("DELETE", f"/files/{sid}/{fid}"),
                             ("DELETE", f"/sessions/{sid}/objects/{fid}"), ("GET", f"/v1/files/{sid}")]:
            resp = await client.request(method, path, headers=headers)
            assert resp.status == 404, (who, method, path, resp.status)
            assert await resp.json() == {"error": "not_found", "message": "Not found"}, who
        # naming alice's session in /exec behaves as an unknown session: a fresh one, empty
        status, body = await _exec(client, headers, code=read, session_id=sid)
        assert status == 200 and body["stdout"] == "absent\n" and body["session_id"] != sid, (who, body)
        status, body = await _exec(client, headers, code=read, files=[ref])
        assert status == 422, (who, status, body)

    # twin: alice, with any fresh token and with either of her LibreChat's keys, sees it all
    for signer in (ed, rs):
        headers = signer.bearer(**alice)
        listed = await (await client.get(f"/files/{sid}", headers=headers)).json()
        assert listed == [f"{sid}/{fid}"]
        assert (await client.get(f"/sessions/{sid}/objects/{fid}", headers=headers)).status == 200
        got = await client.get(f"/download/{sid}/{fid}", headers=headers)
        assert got.status == 200 and await got.read() == b"alice only"
        status, body = await _exec(client, headers, code=read, session_id=sid)
        assert status == 200 and body["stdout"] == "alice only\n" and body["session_id"] == sid
        status, body = await _exec(client, headers, code=read, files=[ref])
        assert status == 200 and body["stdout"] == "alice only\n"
    resp = await client.delete(f"/sessions/{sid}/objects/{fid}", headers=ed.bearer(**alice))
    assert resp.status == 200

    # and the API-key caller's own session is its own, invisible to alice
    status, keyed = await _exec(client, {"X-API-Key": API_KEY}, code="open('k.txt','w').write('k')")
    ksid, kfid = keyed["session_id"], keyed["files"][0]["id"]
    assert (await client.get(f"/download/{ksid}/{kfid}", headers={"X-API-Key": API_KEY})).status == 200
    assert (await client.get(f"/download/{ksid}/{kfid}", headers=ed.bearer(**alice))).status == 404


async def _raw(port: int, header_lines: list[bytes]) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 request with header bytes as given (aiohttp's client only sends valid text)."""
    body = json.dumps(CODE).encode()
    head = [b"POST /exec HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: application/json",
            b"Content-Length: " + str(len(body)).encode(), b"Connection: close", *header_lines]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), timeout=60)
    finally:
        writer.close()
    status_line, _, rest = reply.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload)


@pytest.mark.parametrize("mode", ["api_key", "api_key+jwt"])
async def test_undecodable_credential_bytes_are_401_not_500(make_client: Any, key_files: dict[str, Any],
                                                           ed: Signer, mode: str) -> None:
    jwt_keys = key_files if "jwt" in mode else {}
    client = await make_client(auth={"mode": mode, "api_keys": [API_KEY], **jwt_keys})
    port = client.server.port
    for line in (b"X-API-Key: sk-\xff\xfe-not-utf8", b"X-API-Key: " + API_KEY.encode() + b"\xc3",
                 b"Authorization: Bearer \xff" + ed.mint().encode(), b"Authorization: B\xe9arer x.y.z"):
        status, body = await _raw(port, [line])
        assert status == 401 and body["error"] == "unauthorized", (line, status, body)
    # twins over the same raw path: the exact key (and in api_key+jwt a valid token) run
    twins = [b"X-API-Key: " + API_KEY.encode()] + ([b"Authorization: Bearer " + ed.mint().encode()] if jwt_keys else [])
    for line in twins:
        status, body = await _raw(port, [line])
        assert status == 200 and body["stdout"] == "ran\n", (line, body)


async def test_jwt_mode_without_keys_or_with_a_bad_key_file_does_not_start(make_client: Any, tmp_path: Path,
                                                                          ed: Signer) -> None:
    from sandboxd.errors import ConfigError

    with pytest.raises(ConfigError, match="jwt_public_key_files"):
        await make_client(auth={"mode": "jwt"})
    private = tmp_path / "lc-codeapi-2026-05.pem"
    private.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=str(private)):
        await make_client(auth={"mode": "jwt", "jwt_public_key_files": [str(private)]})
