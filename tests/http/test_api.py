"""HTTP tier: the real app (real jail) through aiohttp's test client.

Covers the contract's routes at / and /v1 and its answers to bad input."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.jail
NANOID = re.compile(r"^[A-Za-z0-9_-]{21}$")


async def exec_(client: Any, prefix: str = "", **body: Any) -> Any:
    resp = await client.post(prefix + "/exec", json=body)
    return resp.status, await resp.json()


@pytest.mark.parametrize("prefix", ["", "/v1"])
async def test_health_and_exec_on_both_prefixes(client: Any, prefix: str) -> None:
    resp = await client.get(prefix + "/health")
    assert resp.status == 200
    status, body = await exec_(client, prefix, lang="py", code="print('hi')")
    assert status == 200 and body["stdout"] == "hi\n" and body["status"] == "ok"
    assert NANOID.match(body["session_id"])
    for key in ("exit_code", "code", "signal", "message", "wall_time_ms", "cpu_time_ms", "memory_peak_bytes",
                "files", "deleted_files", "stderr"):
        assert key in body


async def test_unknown_fields_are_ignored(client: Any) -> None:
    status, body = await exec_(client, lang="py", code="print(2)", api_key="x", extra={"a": [1]}, user_id="u")
    assert status == 200 and body["stdout"] == "2\n"


@pytest.mark.parametrize("body,field", [
    ({"code": "print(1)"}, "lang"),
    ({"lang": "py"}, "code"),
    ({"lang": "py", "code": 5}, "code"),
    ({"lang": "py", "code": "1", "args": "notalist"}, "args"),
    ({"lang": "py", "code": "1", "timeout": -5}, "timeout"),
    ({"lang": "py", "code": "1", "files": [{"name": "x"}]}, "files"),
])
async def test_missing_or_wrong_fields_are_400_naming_the_field(client: Any, body: dict[str, Any], field: str) -> None:
    resp = await client.post("/exec", json=body)
    assert resp.status == 400
    err = await resp.json()
    assert field in err["message"] and err["error"]


async def test_unknown_language_is_400(client: Any) -> None:
    status, body = await exec_(client, lang="brainfuck", code="+")
    assert status == 400 and body["message"] == "Unsupported language: brainfuck"


async def test_malformed_json_is_400(client: Any) -> None:
    resp = await client.post("/exec", data=b'{"lang": "py", "code": ', headers={"Content-Type": "application/json"})
    assert resp.status == 400 and "error" in await resp.json()


async def test_deeply_nested_json_is_400_and_harmless(client: Any) -> None:
    body = b'{"lang": "py", "code": "print(1)", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    resp = await client.post("/exec", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400 and "nested" in (await resp.json())["message"]
    status, ok = await exec_(client, lang="py", code="print(1)", x=[[[1]]])
    assert status == 200 and ok["stdout"] == "1\n"


async def test_oversized_json_body_is_413(make_client: Any) -> None:
    client = await make_client(storage={"json_body_max_bytes": 64 * 1024})
    resp = await client.post("/exec", json={"lang": "py", "code": "#" + "x" * 100_000})
    assert resp.status == 413 and (await resp.json())["error"] == "payload_too_large"
    status, body = await exec_(client, lang="py", code="print('small ok')")
    assert status == 200 and body["stdout"] == "small ok\n"


async def test_missing_input_file_is_422(client: Any) -> None:
    status, body = await exec_(client, lang="py", code="1",
                               files=[{"id": "A" * 21, "name": "x.csv", "storage_session_id": "B" * 21}])
    assert status == 422 and body["error"] == "One or more input files are unavailable"


@pytest.mark.parametrize("path", ["/download/{s}/{f}", "/sessions/{s}/objects/{f}"])
async def test_unknown_and_malformed_ids_get_the_same_404(client: Any, path: str) -> None:
    form = aiohttp.FormData()
    form.add_field("file", b"abc", filename="a.txt")
    up = await (await client.post("/upload", data=form)).json()
    sid, fid = up["session_id"], up["files"][0]["fileId"]
    answers = []
    for s, f in [(sid, "Z" * 21), ("Z" * 21, fid), ("..", fid), (sid, "..%2F..%2Fetc%2Fpasswd"), ("x", "y")]:
        resp = await client.get(path.format(s=s, f=f))
        answers.append((resp.status, await resp.read()))
    assert all(a == answers[0] for a in answers), answers
    assert answers[0][0] == 404
    ok = await client.get(path.format(s=sid, f=fid))
    assert ok.status == 200


async def test_upload_nested_name_roundtrip_and_both_deletes(client: Any) -> None:
    payload = "name,score\nada,10\n".encode()
    form = aiohttp.FormData()
    form.add_field("file", payload, filename="input/scores.csv", content_type="text/csv")
    form.add_field("entity_id", "agent_1")
    resp = await client.post("/v1/upload", data=form)
    assert resp.status == 200
    up = await resp.json()
    assert up["message"] == "success" and up["session_id"] == up["storage_session_id"]
    assert NANOID.match(up["session_id"]) and up["files"][0]["filename"] == "input/scores.csv"
    sid, fid = up["session_id"], up["files"][0]["fileId"]
    assert NANOID.match(fid)

    dl = await client.get(f"/download/{sid}/{fid}")
    assert dl.status == 200 and await dl.read() == payload
    assert dl.headers["Content-Type"].startswith("text/csv")
    assert "filename*=UTF-8''scores.csv" in dl.headers["Content-Disposition"]

    obj = await (await client.get(f"/sessions/{sid}/objects/{fid}")).json()
    assert obj["size"] == len(payload) and obj["originalFilename"] == "input/scores.csv"
    assert obj["lastModified"].endswith("Z") and obj["etag"]
    for detail in ("simple", "summary", "full", "normalized"):
        listing = await (await client.get(f"/files/{sid}?detail={detail}")).json()
        assert len(listing) == 1
        if detail == "simple":
            assert listing == [f"{sid}/{fid}"]
        elif detail == "normalized":
            assert listing[0]["id"] == fid and listing[0]["name"] == "input/scores.csv"
        else:
            assert listing[0]["name"] == f"{sid}/{fid}"
        if detail == "full":
            assert listing[0]["metadata"]["original-filename"] == "input/scores.csv"

    # The uploaded file is an input of a run, at its nested path.
    status, body = await exec_(client, lang="py", code="print(open('input/scores.csv').read().splitlines()[1])",
                               files=[{"id": fid, "name": "input/scores.csv", "session_id": sid}])
    assert status == 200 and body["stdout"] == "ada,10\n"
    assert body["files"] == [{"id": fid, "name": "input/scores.csv", "storage_session_id": sid, "inherited": True}]

    assert (await client.delete(f"/files/{sid}/{fid}")).status == 200
    assert (await client.delete(f"/sessions/{sid}/objects/{fid}")).status == 404
    assert (await client.get(f"/download/{sid}/{fid}")).status == 404


async def test_upload_batch_reports_each_file(client: Any) -> None:
    form = aiohttp.FormData()
    form.add_field("kind", "skill")
    form.add_field("file", b"one", filename="skill/a.md")
    form.add_field("file", b"two", filename="../escape.md")
    form.add_field("file", b"three", filename="skill/b.md")
    body = await (await client.post("/upload/batch", data=form)).json()
    assert body["message"] == "partial_success" and body["succeeded"] == 2 and body["failed"] == 1
    statuses = [(f["filename"], f["status"]) for f in body["files"]]
    assert statuses == [("skill/a.md", "success"), ("../escape.md", "error"), ("skill/b.md", "success")]
    sid = body["session_id"]
    fid = body["files"][2]["fileId"]
    assert await (await client.get(f"/download/{sid}/{fid}")).read() == b"three"


async def test_upload_over_limit_is_413_while_streaming_and_keeps_nothing(make_client: Any) -> None:
    client = await make_client(storage={"upload_max_bytes": 100_000})

    async def body() -> Any:
        yield b"x" * 60_000
        yield b"x" * 60_000

    with aiohttp.MultipartWriter("form-data") as mp:
        part = mp.append(body())
        part.set_content_disposition("form-data", name="file", filename="big.bin")
    resp = await client.post("/upload", data=mp)
    assert resp.status == 413 and (await resp.json())["error"] == "payload_too_large"
    store = client.server.app[__import__("sandboxd.http", fromlist=["STORE"]).STORE]
    assert not store.sessions  # the half-written file and its session are gone
    form = aiohttp.FormData()
    form.add_field("file", b"y" * 50_000, filename="small.bin")
    assert (await client.post("/upload", data=form)).status == 200


async def test_upload_without_multipart_is_400(client: Any) -> None:
    resp = await client.post("/upload", json={"file": "x"})
    assert resp.status == 400


async def test_api_key_mode_requires_a_valid_key(make_client: Any) -> None:
    client = await make_client(auth={"mode": "api_key", "api_keys": ["alpha-key", "beta-key"]})
    assert (await client.post("/exec", json={"lang": "py", "code": "print(1)"})).status == 401
    bad = await client.post("/exec", json={"lang": "py", "code": "1"}, headers={"X-API-Key": "alpha-keyx"})
    assert bad.status == 401
    good = await client.post("/exec", json={"lang": "py", "code": "print(1)"}, headers={"X-API-Key": "beta-key"})
    assert good.status == 200
    sid = (await good.json())["session_id"]
    # The session belongs to the key that made it.
    form = aiohttp.FormData()
    form.add_field("file", b"secret", filename="s.txt")
    up = await (await client.post("/upload", data=form, headers={"X-API-Key": "alpha-key"})).json()
    path = f"/download/{up['session_id']}/{up['files'][0]['fileId']}"
    assert (await client.get(path, headers={"X-API-Key": "beta-key"})).status == 404
    assert (await client.get(path, headers={"X-API-Key": "alpha-key"})).status == 200
    assert (await client.get(f"/files/{sid}", headers={"X-API-Key": "alpha-key"})).status == 404
    assert (await client.get("/health")).status == 200  # health needs no key


async def test_busy_slots_answer_429_with_retry_after(make_client: Any) -> None:
    client = await make_client(max_concurrent_runs=1, queue_wait_s=0.3)
    store = client.server.app[__import__("sandboxd.http", fromlist=["STORE"]).STORE]
    slow = asyncio.ensure_future(client.post("/exec", json={"lang": "bash", "code": "sleep 2; echo done"}))
    deadline = asyncio.get_running_loop().time() + 20
    while store.admission.running < 1 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)  # poll until the slow run holds the only slot
    resp = await client.post("/exec", json={"lang": "py", "code": "print(1)"})
    assert resp.status == 429
    body = await resp.json()
    assert body["error"] == "rate_limited" and body["retry_after_seconds"] >= 1
    first = await slow
    assert (await first.json())["stdout"] == "done\n"
    status, again = await exec_(client, lang="py", code="print('after')")
    assert status == 200 and again["stdout"] == "after\n"


async def test_unknown_route_is_json_404(client: Any) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"]
