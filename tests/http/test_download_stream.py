"""Downloads at the socket level: a file that changes or breaks while it is being served ends
the connection (a short body, then EOF); no second response ever follows on that connection."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import pytest

from sandboxd.http import STORE

pytestmark = pytest.mark.jail

FILE_BYTES = 24 * 1024 * 1024  # far more than loopback socket buffers hold: the server must wait for us


async def _upload(client: Any, name: str, data: bytes) -> tuple[str, str]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name)
    resp = await client.post("/upload", data=form)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return body["session_id"], body["files"][0]["fileId"]


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    return lines[0].encode(), headers


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while chunk := await asyncio.wait_for(reader.read(1 << 20), 30):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("change", ["truncate", "rewrite_in_place"])
async def test_file_changed_mid_download_drops_the_connection(client: Any, change: str) -> None:
    data = b"a" * FILE_BYTES
    sid, fid = await _upload(client, "big.bin", data)
    host_path = os.path.join(client.server.app[STORE].sessions[sid].path, "big.bin")
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        # Keep-alive and a second request already pipelined: a stray answer would show up here.
        request = f"GET /download/{sid}/{fid} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n".encode()
        writer.write(request + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        status, headers = await _read_head(reader)
        assert status == b"HTTP/1.1 200 OK" and int(headers["content-length"]) == FILE_BYTES
        first = await asyncio.wait_for(reader.readexactly(64 * 1024), 30)
        assert first == data[: len(first)]
        # The first chunk arrived, the rest cannot have been written yet (it does not fit in
        # the socket buffers): change the file under the download.
        with open(host_path, "r+b") as fh:
            if change == "truncate":
                fh.truncate(FILE_BYTES // 2)
            else:
                fh.write(b"b" * 4096)
        rest = await _read_to_eof(reader)
    finally:
        writer.close()
    body = first + rest
    assert b"HTTP/1.1" not in body  # no 500 and no answer to the pipelined request
    if change == "truncate":
        assert len(body) < FILE_BYTES
    else:
        assert len(body) <= FILE_BYTES
    # The daemon is fine and the file is now an unknown version (retired), not served.
    assert (await client.get("/health")).status == 200
    assert (await client.get(f"/download/{sid}/{fid}")).status == 404


async def test_unchanged_download_keeps_the_connection_alive(client: Any) -> None:
    """Twin: an intact download completes and the pipelined request gets its own answer."""
    data = os.urandom(1024 * 1024)
    sid, fid = await _upload(client, "ok.bin", data)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(f"GET /download/{sid}/{fid} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                     + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status, headers = await _read_head(reader)
        assert status == b"HTTP/1.1 200 OK"
        assert await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 30) == data
        status, _ = await _read_head(reader)
        assert status == b"HTTP/1.1 200 OK"
    finally:
        writer.close()


async def test_a_client_that_stops_reading_a_download_does_not_block_runs(make_client: Any) -> None:
    """A run in a session waits for its downloads in flight; a download whose client stopped
    reading is dropped after storage.upload_idle_timeout_s, so the run goes ahead."""
    client = await make_client(storage={"upload_idle_timeout_s": 2.0})
    sid, fid = await _upload(client, "big.bin", b"a" * FILE_BYTES)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(f"GET /download/{sid}/{fid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        status, _ = await _read_head(reader)
        assert status == b"HTTP/1.1 200 OK"
        # Never read further. A run in the same session still completes.
        resp = await asyncio.wait_for(
            client.post("/exec", json={"lang": "py", "code": "print('ran')", "session_id": sid}), 60)
        body = await resp.json()
        assert resp.status == 200 and body["stdout"] == "ran\n", body
    finally:
        writer.close()
