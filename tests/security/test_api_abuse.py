"""Abuse of the HTTP API: authentication bypass attempts, malformed and oversized bodies,
slow clients, a burst of concurrent executions, and a daemon killed in the middle of runs."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandboxd.settings import MiB
from tests.conftest import LiveDaemon, procs_in_uid_range

from ._util import assert_daemon_fine, run, settings_of, store_of
from .conftest import UID_BLOCK, unique_uid_base

pytestmark = pytest.mark.jail

KEY = "sk-live-" + os.urandom(16).hex()


@pytest.fixture
async def keyed(make_client: Any) -> Any:
    return await make_client(auth={"mode": "api_key", "api_keys": [KEY]})


async def _a_file(client: Any) -> tuple[str, str]:
    resp = await client.post("/exec", headers={"X-API-Key": KEY},
                             json={"lang": "py", "code": "open('f.txt','w').write('f')"})
    body = await resp.json()
    return body["session_id"], body["files"][0]["id"]


def _routes(sid: str, fid: str) -> list[tuple[str, str]]:
    routes = []
    for prefix in ("", "/v1"):
        routes += [("POST", f"{prefix}/exec"), ("POST", f"{prefix}/upload"), ("POST", f"{prefix}/upload/batch"),
                   ("GET", f"{prefix}/download/{sid}/{fid}"), ("GET", f"{prefix}/files/{sid}"),
                   ("GET", f"{prefix}/sessions/{sid}/objects/{fid}"),
                   ("DELETE", f"{prefix}/files/{sid}/{fid}"), ("DELETE", f"{prefix}/sessions/{sid}/objects/{fid}")]
    return routes


def _body_for(method: str, path: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    if path.endswith("/exec"):
        return {"json": {"lang": "py", "code": "print('ran')", **(extra or {})}}
    if "/upload" in path:
        form = aiohttp.FormData()
        for k, v in (extra or {}).items():
            form.add_field(k, str(v))
        form.add_field("file", b"data", filename="u.txt")
        return {"data": form}
    return {}


BYPASSES: dict[str, dict[str, Any]] = {
    "missing_key": {},
    "empty_key": {"headers": {"X-API-Key": ""}},
    "wrong_key": {"headers": {"X-API-Key": "sk-wrong"}},
    "key_prefix": {"headers": {"X-API-Key": KEY[:-1]}},
    "key_with_suffix": {"headers": {"X-API-Key": KEY + "x"}},
    "key_uppercased": {"headers": {"X-API-Key": KEY.upper()}},
    "key_in_body": {"body": {"api_key": KEY, "apiKey": KEY, "X-API-Key": KEY, "x_api_key": KEY}},
    "key_in_query": {"query": {"api_key": KEY, "x-api-key": KEY, "X-API-Key": KEY, "key": KEY}},
    "key_as_bearer": {"headers": {"Authorization": f"Bearer {KEY}"}},
    "key_as_basic": {"headers": {"Authorization": "Basic " + __import__("base64").b64encode(f"{KEY}:".encode()).decode()}},
    "key_in_cookie": {"headers": {"Cookie": f"X-API-Key={KEY}; api_key={KEY}"}},
    "other_header_name": {"headers": {"X-API-Key2": KEY, "API-Key": KEY, "X-Api-Token": KEY}},
    "nul_suffix": {"headers": {"X-API-Key": KEY + "%00"}},
    "very_long_key": {"headers": {"X-API-Key": "k" * 7000}},
}


@pytest.mark.parametrize("attempt", sorted(BYPASSES))
async def test_auth_bypass_is_refused_on_every_route(keyed: Any, attempt: str) -> None:
    sid, fid = await _a_file(keyed)
    spec = BYPASSES[attempt]
    for method, path in _routes(sid, fid):
        kw = _body_for(method, path, spec.get("body"))
        resp = await keyed.request(method, path, headers=spec.get("headers", {}), params=spec.get("query"), **kw)
        assert resp.status == 401, (attempt, method, path, resp.status, await resp.text())
        body = await resp.json()
        assert set(body) == {"error", "message"} and KEY not in json.dumps(body)
    # twin: the right key still works, the object was not deleted by any attempt
    got = await keyed.get(f"/download/{sid}/{fid}", headers={"X-API-Key": KEY})
    assert got.status == 200 and await got.read() == b"f"


@pytest.mark.parametrize("header", ["x-api-key", "X-API-KEY", "x-Api-kEY"])
async def test_header_name_case_is_irrelevant_but_the_key_is_exact(keyed: Any, header: str) -> None:
    """HTTP header names are case-insensitive: every spelling carries the key; the key is not."""
    ok = await keyed.post("/exec", headers={header: KEY}, json={"lang": "py", "code": "print('ok')"})
    assert ok.status == 200 and (await ok.json())["stdout"] == "ok\n"
    bad = await keyed.post("/exec", headers={header: KEY.swapcase()}, json={"lang": "py", "code": "print(1)"})
    assert bad.status == 401


async def test_oversized_key_header_is_rejected_without_error(keyed: Any) -> None:
    resp = await keyed.get("/files/" + "A" * 21, headers={"X-API-Key": "k" * 100_000})
    # aiohttp's parser refuses a header line over its 8190-byte limit before any handler runs.
    assert resp.status == 400, (resp.status, await resp.text())
    assert (await keyed.get("/health")).status == 200


MALFORMED = {
    "not_json": (b"{lang: py", 400),
    "json_array": (b"[1,2,3]", 400),
    "json_string": (b'"print(1)"', 400),
    "missing_code": (b'{"lang":"py"}', 400),
    "code_not_string": (b'{"lang":"py","code":123}', 400),
    "args_not_list": (b'{"lang":"py","code":"1","args":"a"}', 400),
    "negative_timeout": (b'{"lang":"py","code":"1","timeout":-5}', 400),
    "nan_timeout": (b'{"lang":"py","code":"1","timeout":NaN}', 400),
    "huge_number": (b'{"lang":"py","code":"1","timeout":1' + b"0" * 5000 + b"}", 400),
    "unknown_lang": (b'{"lang":"cobol","code":"1"}', 400),
    "path_lang": (b'{"lang":"../../../bin/sh","code":"1"}', 400),
    "nul_in_code": (b'{"lang":"py","code":"print(1)\\u0000"}', 400),
    "nul_in_args": (b'{"lang":"py","code":"1","args":["a\\u0000b"]}', 400),
    "too_many_args": (json.dumps({"lang": "py", "code": "1", "args": ["a"] * 5000}).encode(), 400),
    "lone_surrogate": (b'{"lang":"py","code":"print(\'\\ud800\')"}', 400),  # no UTF-8 form: refused, never run
    "deeply_nested": (b'{"lang":"py","code":"1","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
    "deeply_nested_unclosed": (b"[" * 1_000_000, 400),
    "bad_file_ref": (b'{"lang":"py","code":"1","files":[{"id":"../../etc/passwd","name":"x"}]}', 422),
    "empty_body": (b"", 400),
}


MALFORMED_CASES = [pytest.param(k, id=k) for k in sorted(MALFORMED)] + [
    pytest.param("invalid_utf8", id="invalid_utf8"),
]
MALFORMED["invalid_utf8"] = (b'{"lang":"py","code":"\xff\xfe"}', 400)


@pytest.mark.parametrize("kind", MALFORMED_CASES)
async def test_malformed_exec_body_is_a_clean_4xx(client: Any, kind: str) -> None:
    payload, expected = MALFORMED[kind]
    resp = await client.post("/exec", data=payload, headers={"Content-Type": "application/json"})
    text = await resp.text()
    assert resp.status == expected, (resp.status, text[:500])
    body = json.loads(text)
    if expected >= 400:
        assert set(body) == {"error", "message"} and "Traceback" not in text
    assert (await client.get("/health")).status == 200


async def test_oversized_bodies_are_413(make_client: Any) -> None:
    client = await make_client(storage={"upload_max_bytes": 4 * MiB})
    storage = settings_of(client).storage
    big = b'{"lang":"py","code":"' + b"#" * (storage.json_body_max_bytes + 1024) + b'"}'
    resp = await client.post("/exec", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413

    async def chunks() -> Any:  # no Content-Length: the cap must hold for chunked bodies too
        yield b'{"lang":"py","code":"'
        for _ in range(storage.json_body_max_bytes // 65536 + 4):
            yield b"#" * 65536
        yield b'"}'

    resp = await client.post("/exec", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413
    code = "x = 1\n" + "#" * storage.code_max_bytes
    resp = await client.post("/exec", json={"lang": "py", "code": code})
    # The body fits json_body_max_bytes; the code field over its own limit is a bad request.
    assert resp.status == 400, (resp.status, await resp.text())
    form = aiohttp.FormData()
    form.add_field("file", b"u" * (storage.upload_max_bytes + 1), filename="big.bin")
    resp = await client.post("/upload", data=form)
    assert resp.status == 413
    form = aiohttp.FormData()
    form.add_field("file", b"u" * storage.upload_max_bytes, filename="at_cap.bin")
    assert (await client.post("/upload", data=form)).status == 200
    twin = await run(client, "x = 1\n" + "#" * (storage.code_max_bytes // 2) + "\nprint(x)")
    assert twin["stdout"] == "1\n"
    await assert_daemon_fine(client)


async def test_upload_larger_than_session_storage_is_413_not_500(make_client: Any) -> None:
    client = await make_client(storage={"session_max_bytes": 4 * MiB, "upload_max_bytes": 16 * MiB})
    storage = settings_of(client).storage
    assert storage.session_max_bytes < storage.upload_max_bytes
    form = aiohttp.FormData()
    form.add_field("file", b"u" * (storage.session_max_bytes + MiB), filename="big.bin")
    resp = await client.post("/upload", data=form)
    try:
        assert resp.status == 413, (resp.status, await resp.text())
    finally:
        form = aiohttp.FormData()
        form.add_field("file", b"small", filename="small.txt")
        assert (await client.post("/upload", data=form)).status == 200  # twin
        await assert_daemon_fine(client)


MALFORMED_UPLOADS = {
    "not_multipart": ({"data": b"plain", "headers": {"Content-Type": "text/plain"}}, 400),
    "no_boundary": ({"data": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}}, 400),
    "truncated": ({"data": b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nabc',
                   "headers": {"Content-Type": "multipart/form-data; boundary=xx"}}, 400),
    "no_file_part": ({"data": b'--xx\r\nContent-Disposition: form-data; name="kind"\r\n\r\nuser\r\n--xx--\r\n',
                      "headers": {"Content-Type": "multipart/form-data; boundary=xx"}}, 400),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED_UPLOADS))
async def test_malformed_upload_is_a_clean_4xx(client: Any, kind: str) -> None:
    kw, expected = MALFORMED_UPLOADS[kind]
    resp = await client.post("/upload", **kw)
    assert resp.status == expected, (resp.status, await resp.text())
    sessions_before = len(store_of(client).sessions)
    form = aiohttp.FormData()
    form.add_field("file", b"fine", filename="ok.txt")
    ok = await client.post("/upload", data=form)
    assert ok.status == 200 and len(store_of(client).sessions) == sessions_before + 1


async def test_invalid_ids_in_paths_are_plain_404(client: Any) -> None:
    body = await run(client, "open('a.txt','w').write('a')")
    sid, fid = body["session_id"], body["files"][0]["id"]
    for path in (f"/download/{sid}/..%2f..%2fetc%2fpasswd", f"/download/..%2f{sid}/{fid}",
                 f"/download/{sid}/{fid}%00", f"/download/{sid.lower()}/{fid.upper()}",
                 "/download/" + "A" * 5000 + "/x", f"/download/{fid}/{sid}"):
        resp = await client.get(path)
        assert resp.status == 404, (path, resp.status)
        assert (await resp.json())["error"] == "not_found"
    assert await (await client.get(f"/download/{sid}/{fid}")).read() == b"a"


async def test_stalled_clients_do_not_block_others(client: Any) -> None:
    """Clients that send headers (or part of a body) and then stall hold no run slot and do not
    delay anyone else."""
    port = client.server.port
    stalled = []
    try:
        for i in range(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if i % 3 == 0:
                writer.write(b"POST /exec HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100000\r\n\r\n{\"lang\":\"py\",")
            elif i % 3 == 1:
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never end
            else:
                writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                             b"Content-Length: 99999999\r\n\r\n--b\r\nContent-Disposition: form-data; "
                             b"name=\"file\"; filename=\"s.txt\"\r\n\r\nsome")
            await writer.drain()
            stalled.append(writer)
        started = time.monotonic()
        assert (await client.get("/health")).status == 200
        body = await run(client, "print('not blocked')")
        assert body["stdout"] == "not blocked\n"
        # Blocked behind the stalled bodies it would wait for their 30 s idle timeouts.
        assert time.monotonic() - started < 20
        assert store_of(client).admission.running == 0
    finally:
        for w in stalled:
            w.close()
    await assert_daemon_fine(client)


async def test_forty_concurrent_executions_get_200_or_429(client: Any) -> None:
    s = settings_of(client)
    code = "import time; time.sleep(0.3); print('done')"
    started = time.monotonic()
    resps = await asyncio.gather(*(client.post("/exec", json={"lang": "py", "code": code}) for _ in range(40)))
    statuses = [r.status for r in resps]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= min(40, s.max_concurrent_runs)
    for r in resps:
        body = await r.json()
        if r.status == 200:
            assert body["stdout"] == "done\n"
        else:
            assert body["error"] == "rate_limited" and body["retry_after_seconds"] >= 1
    assert time.monotonic() - started < s.queue_wait_s + 40 * 2
    assert store_of(client).admission.running == 0 and store_of(client).admission.waiting == 0
    await assert_daemon_fine(client)


async def test_queue_overflow_is_429_not_unbounded_waiting(make_client: Any) -> None:
    client = await make_client(max_concurrent_runs=1, queue_max=2, queue_wait_s=20)
    s = settings_of(client)
    resps = await asyncio.gather(*(client.post("/exec", json={"lang": "bash", "code": "sleep 0.5; echo ok"})
                                   for _ in range(8)))
    statuses = [r.status for r in resps]
    assert statuses.count(200) <= s.max_concurrent_runs + s.queue_max + 1
    assert statuses.count(429) >= 8 - (s.max_concurrent_runs + s.queue_max + 1)
    assert set(statuses) <= {200, 429}
    await assert_daemon_fine(client)


# ---- a daemon killed mid-run ---------------------------------------------------------------------

def test_sigkill_during_concurrent_forking_runs_leaves_nothing_after_restart(tmp_path: Path) -> None:
    """Unlike the lifecycle test (one sleeping run), this kills the daemon while several runs
    fork process trees and write into their sessions; the next start must clear all of it."""
    base = unique_uid_base()
    daemon = LiveDaemon(tmp_path, uid_base=base, uid_count=UID_BLOCK, max_concurrent_runs=3)
    busy = ("import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n        os.setsid()\n"
            "        while True:\n            open('/mnt/data/beat.txt', 'a').write('.'); time.sleep(0.01)\n"
            "open('/mnt/data/big.bin', 'wb').write(b'b' * 8_000_000)\ntime.sleep(30)\n")
    threads = [threading.Thread(target=lambda: _swallow(daemon.exec, busy)) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(procs_in_uid_range(base, UID_BLOCK)) < 3 * 9 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(procs_in_uid_range(base, UID_BLOCK)) >= 3 * 9, "the runs should be in flight"
    daemon.crash()
    for t in threads:
        t.join(timeout=10)
    mounts, cgroups = daemon.leftovers()
    assert mounts and cgroups, "a crash leaves mounts and cgroups (else this test proves nothing)"

    daemon.start()
    try:
        assert daemon.leftovers(running=True) == ([], [])
        deadline = time.monotonic() + 5
        while procs_in_uid_range(base, UID_BLOCK) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs_in_uid_range(base, UID_BLOCK) == []
        body = daemon.exec("import os; print(os.listdir('.'))")
        assert body["stdout"] == "[]\n"  # a fresh session, nothing of the killed runs
    finally:
        assert daemon.stop() == 0
    assert daemon.leftovers() == ([], [])


def _swallow(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        pass
