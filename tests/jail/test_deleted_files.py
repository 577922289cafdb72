"""deleted_files names only files a run really removed: hidden inputs and known files past the
walk's entry budget are not "deleted" (LibreChat drops a reference only when told so)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.jail


async def _upload(client: Any, name: str, data: bytes) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name)
    resp = await client.post("/upload", data=form)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def _exec(client: Any, **body: Any) -> dict[str, Any]:
    resp = await client.post("/exec", json={"lang": "py", **body})
    assert resp.status == 200, await resp.text()
    reply: dict[str, Any] = await resp.json()
    return reply


async def test_hidden_input_left_alone_is_not_deleted_and_removing_it_is(client: Any) -> None:
    up = await _upload(client, ".env", b"KEY=1\n")
    ref = {"id": up["files"][0]["fileId"], "session_id": up["session_id"], "name": ".env"}
    body = await _exec(client, code="print(open('.env').read().strip())", files=[ref])
    assert body["stdout"] == "KEY=1\n" and body["deleted_files"] == [], body
    # Twin: a run that removes it reports it deleted.
    body = await _exec(client, code="import os; os.remove('.env')", session_id=body["session_id"])
    assert body["deleted_files"] == [".env"], body


async def test_many_new_files_do_not_delete_a_known_file(make_client: Any) -> None:
    client = await make_client(storage={"session_max_inodes": 30000})
    body = await _exec(client, code="import os; os.makedirs('zz'); open('zz/data.csv','w').write('1,2\\n')")
    sid = body["session_id"]
    assert [f["name"] for f in body["files"]] == ["zz/data.csv"]
    # 20,500 names sorting before zz/: more entries than one walk looks at.
    code = "import os\nos.makedirs('a')\nfor i in range(20500): open(f'a/{i:05d}', 'w').close()\n"
    body = await _exec(client, code=code, session_id=sid)
    assert body["status"] == "ok", body
    assert body["deleted_files"] == [], body["deleted_files"][:5]
    # Twin: removing it is reported.
    body = await _exec(client, code="import os; os.remove('zz/data.csv')", session_id=sid)
    assert body["deleted_files"] == ["zz/data.csv"]
