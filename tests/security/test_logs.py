"""The daemon's own log output, as an operator's journal receives it: every line one JSON
object, every request line with its id and route pattern, and no whole session ID, file ID or
API key anywhere, after driving every route of a real `sandboxd serve` once."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import LiveDaemon
from tests.security.conftest import UID_BLOCK, unique_uid_base

pytestmark = pytest.mark.jail

KEY = "log-test-api-key-" + "s" * 24
AUTH = {"X-API-Key": KEY}
NANOID = re.compile(r"^[A-Za-z0-9_-]{21}$")


async def _upload(http: aiohttp.ClientSession, url: str, files: dict[str, bytes]) -> dict[str, Any]:
    form = aiohttp.FormData()
    for name, data in files.items():
        form.add_field("file", data, filename=name)
    async with http.post(url, data=form, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def test_every_route_logs_json_lines_without_ids_or_secrets(tmp_path: Path, monkeypatch: Any) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(KEY + "\n")
    # The environment overrides as an operator (or systemd's LoadCredential=) would set them.
    monkeypatch.setenv("SANDBOXD_AUTH_MODE", "api_key")
    monkeypatch.setenv("SANDBOXD_API_KEYS_FILE", str(keys))
    daemon = LiveDaemon(tmp_path, uid_base=unique_uid_base(), uid_count=UID_BLOCK)
    ids: set[str] = set()
    routes: set[str] = set()
    url = daemon.url
    try:
        async with aiohttp.ClientSession() as http:
            async def call(method: str, path: str, route: str, status: int, **kw: Any) -> tuple[Any, bytes]:
                kw.setdefault("headers", AUTH)
                async with http.request(method, url + path, **kw) as resp:
                    data = await resp.read()
                    assert resp.status == status, (method, route, data)
                    assert re.fullmatch(r"[A-Za-z0-9._:-]{8,64}", resp.headers["X-Request-Id"])
                    routes.add(route)
                    return resp.headers, data

            _, data = await call("POST", "/exec", "/exec", 200, json={
                "lang": "py", "code": "open('/mnt/data/out.txt', 'w').write('result')"})
            body = json.loads(data)
            sid, fid = body["session_id"], body["files"][0]["id"]
            up = await _upload(http, url + "/upload", {"in.csv": b"a,b\n1,2\n"})
            up_sid, up_fid = up["session_id"], up["files"][0]["fileId"]
            batch = await _upload(http, url + "/upload/batch", {"x.txt": b"x", "y.txt": b"y"})
            b_sid, b_fids = batch["session_id"], [f["fileId"] for f in batch["files"]]
            ids |= {sid, fid, up_sid, up_fid, b_sid, *b_fids}
            assert all(NANOID.match(i) for i in ids) and len(ids) == 7
            routes |= {"/upload", "/upload/batch"}

            await call("POST", "/v1/exec", "/v1/exec", 200, json={
                "lang": "py", "code": "print(open('in.csv').read())", "session_id": sid,
                "files": [{"id": up_fid, "session_id": up_sid, "name": "in.csv"}]})
            await call("GET", f"/download/{sid}/{fid}", "/download/{sid}/{fid}", 200)
            for detail in ("simple", "summary", "full", "normalized"):
                await call("GET", f"/files/{sid}?detail={detail}", "/files/{sid}", 200)
            await call("GET", f"/sessions/{sid}/objects/{fid}", "/sessions/{sid}/objects/{fid}", 200)
            await call("DELETE", f"/files/{up_sid}/{up_fid}", "/files/{sid}/{fid}", 200)
            await call("DELETE", f"/v1/sessions/{b_sid}/objects/{b_fids[0]}", "/v1/sessions/{sid}/objects/{fid}", 200)
            await call("GET", "/health", "/health", 200, headers={})
            await call("GET", "/metrics", "/metrics", 200, headers={})
            # Error paths: no key and a wrong key on an ID-bearing path, malformed JSON,
            # an unknown file, an unknown route holding an ID, a wrong method.
            await call("GET", f"/download/{sid}/{fid}", "/download/{sid}/{fid}", 401, headers={})
            await call("GET", f"/files/{sid}", "/files/{sid}", 401, headers={"X-API-Key": "not-" + KEY})
            await call("POST", "/exec", "/exec", 400, data=b"{not json",
                       headers={**AUTH, "Content-Type": "application/json"})
            await call("GET", f"/download/{sid}/{b_fids[0]}", "/download/{sid}/{fid}", 404)
            await call("GET", f"/nothing/{sid}/{fid}", "unmatched", 404)
            await call("PUT", f"/files/{sid}", "unmatched", 405)
            # A caller's own request id is kept, one shaped like an ID is cut like one,
            # and an odd one is replaced.
            headers, _ = await call("GET", "/health", "/health", 200, headers={"X-Request-Id": "proxy-req-0001"})
            assert headers["X-Request-Id"] == "proxy-req-0001"
            await call("GET", "/health", "/health", 200, headers={"X-Request-Id": sid})
            headers, _ = await call("GET", "/health", "/health", 200, headers={"X-Request-Id": "abc" + "z" * 80})
            assert "z" * 20 not in headers["X-Request-Id"]
            # A download the client abandons mid-stream (the daemon's error path for it).
            big = await _upload(http, url + "/upload", {"big.bin": b"\0" * (8 << 20)})
            ids |= {big["session_id"], big["files"][0]["fileId"]}
            async with http.get(f"{url}/download/{big['session_id']}/{big['files'][0]['fileId']}",
                                headers=AUTH) as resp:
                assert resp.status == 200
                await resp.content.read(1024)
                resp.close()
    finally:
        assert daemon.stop() == 0

    text = (tmp_path / "daemon.log").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # each one JSON
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    for secret in ids | {KEY}:
        assert secret not in text, f"{secret[:6]}… appears in the log"
    access = [line for line in lines if line["logger"] == "sandboxd.access"]
    for line in access:
        assert {"request_id", "method", "route", "status", "duration_ms"} <= set(line), line
        assert line["route"] in routes | {"/upload", "/download/{sid}/{fid}"}, line
    assert {line["route"] for line in access} >= routes
    assert any(line["request_id"] == "proxy-req-0001" for line in access)
    assert {line["status"] for line in access} >= {200, 400, 401, 404, 405}
    # Lines logged while serving a request carry its id (the session creation notes, say).
    ready = next(i for i, line in enumerate(lines) if line["message"].startswith("sandboxd ready"))
    created = [line for line in lines[ready:] if line["message"].startswith("session ") and
               "created" in line["message"]]
    assert created and all(line.get("request_id") for line in created)
