"""Bad input is never a 5xx: every route fed malformed headers, multipart framing, encodings and
sizes (a table of raw requests) answers 4xx, and the daemon serves normally afterwards. Plus the
specific cases: a NUL in an upload's file name, argument lists past the kernel's ARG_MAX, a
percent-looking name sent as filename*=, bounded concurrent bodies, stalled uploads."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ._util import assert_daemon_fine, run_raw, store_of

pytestmark = pytest.mark.jail

ID = "A" * 21


def _multipart(parts: bytes, boundary: bytes = b"b") -> bytes:
    return parts + b"--" + boundary + b"--\r\n"


def _file_part(disposition: bytes, data: bytes = b"hello", boundary: bytes = b"b") -> bytes:
    return b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + data + b"\r\n"


def _req(method: str, path: str, body: bytes = b"", headers: tuple[bytes, ...] = (),
         content_type: bytes | None = None, length: int | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: x", b"Connection: close"]
    if content_type is not None:
        head.append(b"Content-Type: " + content_type)
    if body or length is not None:
        head.append(b"Content-Length: " + str(len(body) if length is None else length).encode())
    head += list(headers)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


MP = b"multipart/form-data; boundary=b"
JSON = b"application/json"
BIG_ARGS = json.dumps({"lang": "py", "code": "print(1)", "args": ["a" * 65536] * 40}).encode()

CASES: list[tuple[str, bytes]] = [
    # headers
    ("non-utf8 api key", _req("GET", "/files/" + ID, headers=(b"X-API-Key: \xff\xfe\x80",))),
    ("non-utf8 bearer", _req("GET", "/files/" + ID, headers=(b"Authorization: Bearer \xff\xfe",))),
    ("nul in header", _req("GET", "/health", headers=(b"X-Thing: a\x00b",))),
    ("header without colon", _req("GET", "/health", headers=(b"NoColonHere",))),
    ("huge header", _req("GET", "/health", headers=(b"X-Big: " + b"a" * 200_000,))),
    ("bad content length", _req("POST", "/exec", b"{}", content_type=JSON, headers=(b"Content-Length: -5",))),
    ("huge content length", _req("POST", "/exec", b"{}", content_type=JSON, length=10**12)),
    ("bad chunked framing", b"POST /exec HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
                            b"Content-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
    ("bad request line", b"GET /\x00health HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("unknown method", _req("BREW", "/exec")),
    ("wrong method", _req("PUT", "/exec", b"{}", content_type=JSON)),
    # JSON bodies
    ("invalid utf-8 json", _req("POST", "/exec", b'{"lang": "py", "code": "\xff"}', content_type=JSON)),
    ("bom json", _req("POST", "/exec", b'\xef\xbb\xbf{"lang": "py", "code": "1"}', content_type=JSON)),
    ("lone surrogate", _req("POST", "/exec", b'{"lang": "py", "code": "\\udc80"}', content_type=JSON)),
    ("nested json", _req("POST", "/exec", b"[" * 50_000, content_type=JSON)),
    ("huge timeout", _req("POST", "/exec", b'{"lang": "py", "code": "1", "timeout": 1e400}', content_type=JSON)),
    ("args past ARG_MAX", _req("POST", "/exec", BIG_ARGS, content_type=JSON)),
    ("nul in args", _req("POST", "/exec", b'{"lang": "py", "code": "1", "args": ["a\\u0000b"]}', content_type=JSON)),
    ("nul in code", _req("POST", "/exec", b'{"lang": "py", "code": "1\\u0000"}', content_type=JSON)),
    ("bad file ref", _req("POST", "/exec", b'{"lang": "py", "code": "1", "files": [{"id": "\\u0000", '
                                          b'"session_id": "' + ID.encode() + b'", "name": "../x"}]}', content_type=JSON)),
    ("form body to exec", _req("POST", "/exec", b"lang=py&code=1", content_type=b"application/x-www-form-urlencoded")),
    # multipart
    ("no boundary", _req("POST", "/upload", b"x", content_type=b"multipart/form-data")),
    ("not multipart", _req("POST", "/upload", b"hello", content_type=MP)),
    ("boundary mismatch", _req("POST", "/upload", _multipart(_file_part(b'form-data; name="file"; filename="a"'),
                                                            b"zzz"), content_type=MP)),
    ("nul filename", _req("POST", "/upload", _multipart(_file_part(b'form-data; name="file"; filename="a\x00b.txt"')),
                          content_type=MP)),
    ("nul filename batch", _req("POST", "/upload/batch",
                                _multipart(_file_part(b'form-data; name="file"; filename="a\x00b.txt"')), content_type=MP)),
    ("traversal filename", _req("POST", "/upload", _multipart(_file_part(b'form-data; name="file"; filename="../x"')),
                                content_type=MP)),
    ("bad filename* encoding", _req("POST", "/upload", _multipart(_file_part(
        b"form-data; name=\"file\"; filename*=UTF-8''%ff%fe")), content_type=MP)),
    ("no file part", _req("POST", "/upload", _multipart(_file_part(b'form-data; name="other"')), content_type=MP)),
    ("nested multipart", _req("POST", "/upload", b"--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n"
                                                 b"--c\r\n\r\nx\r\n--c--\r\n--b--\r\n", content_type=MP)),
    ("huge part header", _req("POST", "/upload", _multipart(_file_part(b'form-data; name="file"; filename="'
                                                                       + b"a" * 100_000 + b'"')), content_type=MP)),
    ("truncated multipart", _req("POST", "/upload", b'--b\r\nContent-Disposition: form-data; name="file"; '
                                                    b'filename="a"\r\n\r\nhel', content_type=MP)),
    ("upload too large", _req("POST", "/upload", b"", content_type=MP, length=10**11)),
    # paths and queries
    ("encoded nul in path", _req("GET", "/download/%00/%00")),
    ("long ids", _req("GET", "/download/" + "a" * 5000 + "/" + "b" * 5000)),
    ("bad detail", _req("GET", f"/files/{ID}?detail=%ff")),
    ("bad delete", _req("DELETE", f"/files/{ID}/%2e%2e")),
    ("object info", _req("GET", f"/v1/sessions/{ID}/objects/..%2f..")),
]


async def _status(client: Any, raw: bytes) -> int | None:
    """The status of the first response on a fresh connection, or None if it was closed first."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(raw)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 60)
    except ConnectionError:
        return None
    finally:
        writer.close()
    if not line:
        return None
    return int(line.split()[1])


@pytest.fixture
async def tight(make_client: Any) -> Any:
    return await make_client(storage={"upload_idle_timeout_s": 2.0})


@pytest.mark.parametrize("name,raw", CASES, ids=[c[0] for c in CASES])
async def test_malformed_request_is_never_a_5xx(tight: Any, name: str, raw: bytes) -> None:
    before = set(store_of(tight).sessions)
    status = await _status(tight, raw)
    assert status is None or 400 <= status < 500, (name, status)
    assert set(store_of(tight).sessions) == before  # nothing half-made stays behind
    await assert_daemon_fine(tight)


async def test_nul_in_an_upload_file_name_is_400(client: Any) -> None:
    raw = _req("POST", "/upload", _multipart(_file_part(b'form-data; name="file"; filename="a\x00b.txt"')),
               content_type=MP)
    assert await _status(client, raw) == 400
    # Twin: the same upload with a plain name works.
    ok = _req("POST", "/upload", _multipart(_file_part(b'form-data; name="file"; filename="ab.txt"')), content_type=MP)
    assert await _status(client, ok) == 200


async def test_argument_lists_past_the_kernel_limit_are_400(client: Any) -> None:
    resp = await run_raw(client, "print(1)", args=["a" * 65536] * 40)
    assert resp.status == 400 and "args" in (await resp.json())["message"]
    # Twin: arguments within the bound reach the program.
    resp = await run_raw(client, "import sys; print(len(sys.argv[1:]), sum(map(len, sys.argv[1:])))",
                         args=["a" * 1000] * 200)
    body = await resp.json()
    assert resp.status == 200 and body["stdout"] == "200 200000\n", body


async def test_percent_looking_name_sent_as_filename_star_is_kept(client: Any) -> None:
    raw = _req("POST", "/upload", _multipart(_file_part(
        b"form-data; name=\"file\"; filename*=UTF-8''100%2525%20done.csv")), content_type=MP)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    assert json.loads(body)["files"][0]["filename"] == "100%25 done.csv"
    # Twin: aiohttp's own writer percent-encodes a plain filename=, which is decoded once.
    raw = _req("POST", "/upload", _multipart(_file_part(b'form-data; name="file"; filename="in%2Fa%25.csv"')),
               content_type=MP)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    assert json.loads(data.partition(b"\r\n\r\n")[2])["files"][0]["filename"] == "in/a%.csv"


async def test_concurrent_exec_bodies_are_bounded_and_stalled_bodies_time_out(make_client: Any) -> None:
    client = await make_client(queue_wait_s=1, storage={"json_body_max_bytes": 64 * 1024,
                                                       "json_bodies_max_bytes": 64 * 1024,
                                                       "upload_idle_timeout_s": 3.0})
    from sandboxd.http import BODIES

    bodies = client.server.app[BODIES]
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        # A body that never arrives in full holds the only body slot...
        writer.write(_req("POST", "/exec", b'{"lang": "py", ', content_type=JSON, length=60_000))
        await writer.drain()
        while not bodies.locked():
            await asyncio.sleep(0.01)
        # ...so a second body waits for queue_wait_s and is refused with 429, not read.
        resp = await run_raw(client, "print(1)")
        assert resp.status == 429, await resp.text()
        # The stalled one times out with 408.
        line = await asyncio.wait_for(reader.readline(), 60)
        assert line.startswith(b"HTTP/1.1 408"), line
    finally:
        writer.close()
    await assert_daemon_fine(client)


async def test_upload_session_is_made_on_the_first_file_part_and_a_stall_times_out(make_client: Any) -> None:
    client = await make_client(storage={"sessions_max": 1, "upload_idle_timeout_s": 3.0})
    store = store_of(client)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        # Headers only (Expect: 100-continue tells us the handler got the request), no body.
        head = _req("POST", "/upload", b"", content_type=MP, length=100_000).replace(
            b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
        writer.write(head)
        assert (await asyncio.wait_for(reader.readline(), 60)).startswith(b"HTTP/1.1 100")
        await asyncio.wait_for(reader.readline(), 60)
        # It holds no session: another client's upload still gets the only one.
        ok = _req("POST", "/upload", _multipart(_file_part(b'form-data; name="file"; filename="a.txt"')),
                  content_type=MP)
        assert await _status(client, ok) == 200
        await store.drop(next(iter(store.sessions.values())))
        # The stalled one: a file part begun, then nothing: 408, and its session is gone.
        writer.write(b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.txt"\r\n\r\npartial')
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 60)
        assert line.startswith(b"HTTP/1.1 408"), line
    finally:
        writer.close()
    assert not store.sessions
    await assert_daemon_fine(client)


async def test_a_free_body_slot_is_taken_without_waiting_even_with_no_queue_wait(make_client: Any) -> None:
    """Twin of the bound: with queue_wait_s = 0, a request that finds a free body slot runs."""
    client = await make_client(queue_wait_s=0)
    body = await (await run_raw(client, "print('ok')")).json()
    assert body["stdout"] == "ok\n", body
