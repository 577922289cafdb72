"""Sessions in use stay put: downloads and inputs pin their session, a download never reads a
file a run is writing, requests queued on one session's lock hold no run slot, a dropped
session's fd is never used again, and a failed exec in a new session leaves no session."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from sandboxd.http import STORE

pytestmark = pytest.mark.jail

# A run that says it started (a file the host sees) and then waits for the host's "go" file.
BLOCKING = ("import os, time\nopen('started', 'w').close()\n"
            "while not os.path.exists('go'):\n    time.sleep(0.01)\n")


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Wait for a condition the daemon's own progress makes true (bounded, never a fixed sleep)."""
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _exec(client: Any, **body: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/exec", json={"lang": "py", **body})
    return resp.status, await resp.json()


async def _upload(client: Any, name: str, data: bytes) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name)
    resp = await client.post("/upload", data=form)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


class Blocked:
    """A run in session `sid` (or a new one) held at its start until release()."""

    def __init__(self, client: Any, sid: str | None = None, tail: str = "") -> None:
        self.client = client
        self.store = client.server.app[STORE]
        extra = {"session_id": sid} if sid else {}
        self.task = asyncio.ensure_future(_exec(client, code=BLOCKING + tail, **extra))
        self.path: str | None = None

    async def started(self) -> str:
        def seen() -> bool:
            assert not self.task.done(), self.task.result()
            for s in list(self.store.sessions.values()):
                if s.lock.locked() and os.path.exists(os.path.join(s.path, "started")):
                    self.path = s.path
                    return True
            return False
        await until(seen, "the blocking run to start")
        assert self.path is not None
        return self.path

    async def release(self) -> dict[str, Any]:
        assert self.path is not None
        open(os.path.join(self.path, "go"), "w").close()
        status, body = await asyncio.wait_for(self.task, 120)
        assert status == 200, body
        return body


@pytest.mark.parametrize("run_rewrites", [False, True])
async def test_download_waits_for_a_run_in_its_session(client: Any, run_rewrites: bool) -> None:
    status, body = await _exec(client, code="open('data.txt', 'w').write('v1')")
    assert status == 200
    sid, fid = body["session_id"], body["files"][0]["id"]
    store = client.server.app[STORE]
    s = store.sessions[sid]
    run = Blocked(client, sid, tail="open('data.txt', 'w').write('v2')\n" if run_rewrites else "")
    await run.started()
    dl = asyncio.ensure_future(client.get(f"/download/{sid}/{fid}"))
    await until(lambda: dl.done() or s.busy >= 2, "the download to reach the session")
    assert not dl.done(), "the download was served while a run in its session was going"
    await run.release()
    resp = await asyncio.wait_for(dl, 60)
    if run_rewrites:  # the version it named is gone: never the bytes being written
        assert resp.status == 404
    else:
        assert resp.status == 200 and await resp.read() == b"v1"


async def test_requests_queued_on_one_session_hold_no_run_slot(make_client: Any) -> None:
    client = await make_client(max_concurrent_runs=2, queue_wait_s=3)
    store = client.server.app[STORE]
    first = Blocked(client)
    await first.started()
    sid = next(s.id for s in store.sessions.values() if s.path == first.path)
    s = store.sessions[sid]
    queued = [asyncio.ensure_future(_exec(client, code="print('queued')", session_id=sid)) for _ in range(2)]
    await until(lambda: s.busy + store.admission.waiting >= 3, "both requests to queue")
    # Another tenant still gets the free slot, at once, while the first run holds its own.
    status, body = await _exec(client, code="print('free')")
    assert status == 200 and body["stdout"] == "free\n", body
    assert not first.task.done()
    await first.release()
    for status, body in await asyncio.gather(*queued):
        assert status == 200 and body["stdout"] == "queued\n"


async def test_input_session_cannot_be_evicted_while_the_request_waits(make_client: Any) -> None:
    client = await make_client(max_concurrent_runs=1, queue_wait_s=120, storage={"sessions_max": 4})
    store = client.server.app[STORE]
    up = await _upload(client, "in.csv", b"a,b\n")
    ref = {"id": up["files"][0]["fileId"], "session_id": up["session_id"], "name": "in.csv"}
    first = Blocked(client)
    await first.started()
    waiting = asyncio.ensure_future(_exec(client, code="print(open('in.csv').read())", files=[ref]))
    await until(lambda: store.admission.waiting == 1, "the request to wait for a slot")
    # Storage pressure while it waits: the least recently used idle sessions are evicted.
    uploads = [await _upload(client, f"u{i}.txt", b"x") for i in range(3)]
    evicted = [u["session_id"] for u in uploads if u["session_id"] not in store.sessions]
    assert up["session_id"] in store.sessions
    await first.release()
    status, body = await asyncio.wait_for(waiting, 120)
    assert status == 200 and body["stdout"] == "a,b\n\n", body
    # Twin: the same pressure does evict unpinned idle sessions.
    assert evicted


async def test_dropped_session_fd_is_never_reused(client: Any) -> None:
    store = client.server.app[STORE]
    up = await _upload(client, "f.txt", b"x")
    s = store.sessions[up["session_id"]]
    await store.drop(s)
    assert s.closed and s.fd == -1
    resp = await client.get(f"/download/{s.id}/{up['files'][0]['fileId']}")
    assert resp.status == 404


async def test_failed_exec_in_a_new_session_leaves_no_session(make_client: Any) -> None:
    client = await make_client(storage={"session_max_bytes": 4 * 1024 * 1024, "storage_max_bytes": 64 * 1024 * 1024})
    store = client.server.app[STORE]
    up = await _upload(client, "big.bin", b"x" * (3 * 1024 * 1024))
    ref = {"id": up["files"][0]["fileId"], "session_id": up["session_id"]}
    before = set(store.sessions)
    # Two copies do not fit in a new session: 413.
    status, body = await _exec(client, code="print(1)", files=[{**ref, "name": "a.bin"}, {**ref, "name": "b.bin"}])
    assert status == 413, body
    assert set(store.sessions) == before
    # The input changed on disk since it was registered: 422.
    with open(os.path.join(store.sessions[up["session_id"]].path, "big.bin"), "r+b") as fh:
        fh.write(b"y")
    status, body = await _exec(client, code="print(1)", files=[ref])
    assert status == 422, body
    assert set(store.sessions) == before
    # Twin: a run that succeeds keeps its new session.
    status, body = await _exec(client, code="print(1)")
    assert status == 200 and body["session_id"] in store.sessions


async def test_runs_and_downloads_do_not_need_the_default_executor(client: Any) -> None:
    """Every thread of the loop's default pool is blocked: the daemon's kills, cgroup removal
    and file I/O run on their own pools, so runs, uploads and downloads still complete."""
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    hogs = [loop.run_in_executor(None, gate.wait) for _ in range(64)]
    try:
        status, body = await asyncio.wait_for(
            _exec(client, code="open('o.txt', 'w').write('ok'); print('ran')"), 120)
        assert status == 200 and body["stdout"] == "ran\n"
        resp = await asyncio.wait_for(client.get(f"/download/{body['session_id']}/{body['files'][0]['id']}"), 60)
        assert resp.status == 200 and await resp.read() == b"ok"
        status, body = await asyncio.wait_for(_exec(client, code="import time\ntime.sleep(30)", timeout=500), 120)
        assert status == 200 and body["status"] == "timeout"
    finally:
        gate.set()
        await asyncio.gather(*hogs)
