"""Session storage: TTL expiry, LRU eviction under the session and byte budgets, output caps."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import pytest

from sandboxd.http import STORE
from sandboxd.settings import MiB

pytestmark = pytest.mark.jail


async def upload(client: Any, data: bytes, name: str = "f.bin") -> tuple[str, str]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name)
    resp = await client.post("/upload", data=form)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return body["session_id"], body["files"][0]["fileId"]


async def test_idle_sessions_expire_and_are_unmounted(make_client: Any) -> None:
    client = await make_client(storage={"session_ttl_s": 0.5, "sweep_interval_s": 0.1})
    sid, fid = await upload(client, b"short-lived")
    path = client.server.app[STORE].sessions[sid].path
    assert os.path.ismount(path)
    deadline = asyncio.get_running_loop().time() + 20
    while os.path.ismount(path) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)  # poll for the sweeper's unmount
    assert (await client.get(f"/download/{sid}/{fid}")).status == 404
    assert not os.path.ismount(path)
    sid2, fid2 = await upload(client, b"fresh")  # twin: new sessions still work
    assert await (await client.get(f"/download/{sid2}/{fid2}")).read() == b"fresh"


async def test_least_recently_used_session_is_evicted_at_the_session_cap(make_client: Any) -> None:
    client = await make_client(storage={"sessions_max": 3})
    ids = [await upload(client, f"n{i}".encode()) for i in range(3)]
    # Touch the first so the second becomes the least recently used.
    assert (await client.get(f"/download/{ids[0][0]}/{ids[0][1]}")).status == 200
    ids.append(await upload(client, b"n3"))
    status = [(await client.get(f"/download/{s}/{f}")).status for s, f in ids]
    assert status == [200, 404, 200, 200]
    assert len(client.server.app[STORE].sessions) == 3


async def test_byte_budget_evicts_oldest_sessions(make_client: Any) -> None:
    client = await make_client(storage={"session_max_bytes": 16 * MiB, "storage_max_bytes": 24 * MiB})
    a = await upload(client, b"a" * (10 * MiB))
    b = await upload(client, b"b" * (10 * MiB))
    c = await upload(client, b"c" * (10 * MiB))
    status = [(await client.get(f"/download/{s}/{f}")).status for s, f in (a, b, c)]
    assert status == [404, 200, 200]
    assert client.server.app[STORE].total_usage() <= 24 * MiB


async def test_replies_list_at_most_the_output_cap(make_client: Any) -> None:
    client = await make_client(limits={"output_files_max": 5})
    code = "for i in range(8):\n    open(f'f{i}.txt', 'w').write(str(i))\n"
    body = await (await client.post("/exec", json={"lang": "py", "code": code})).json()
    assert len(body["files"]) == 5
    twin = await (await client.post("/exec", json={"lang": "py", "code": "open('one.txt','w').write('1')"})).json()
    assert [f["name"] for f in twin["files"]] == ["one.txt"]


async def test_files_cannot_grow_past_the_size_cap(make_client: Any) -> None:
    client = await make_client(limits={"file_max_bytes": 1 * MiB})
    code = ("try:\n    open('big.bin','wb').write(b'x' * (2 * 1024 * 1024))\n"
            "except OSError as e:\n    print('fsize', e.errno)\nopen('small.bin','wb').write(b'y' * 1000)\n")
    body = await (await client.post("/exec", json={"lang": "py", "code": code})).json()
    files = {f["name"]: f for f in body["files"]}
    assert body["stdout"] == "fsize 27\n"  # EFBIG from RLIMIT_FSIZE
    big = await (await client.get(f"/download/{body['session_id']}/{files['big.bin']['id']}")).read()
    assert len(big) == 1 * MiB  # stopped at the cap, never past it
    small = await (await client.get(f"/download/{body['session_id']}/{files['small.bin']['id']}")).read()
    assert small == b"y" * 1000
