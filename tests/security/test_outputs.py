"""Serving what the jail wrote: links, special files, huge and sparse files, odd names, floods
of files, and files the jail swaps after they were registered."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
from typing import Any

import pytest

from sandboxd.settings import MiB

from ._util import assert_daemon_fine, jail_json, run, settings_of, store_of

pytestmark = pytest.mark.jail

ORDINARY = "open('ordinary.txt', 'w').write('plain')\n"

SPECIALS = {
    "symlink_to_host_file": "os.symlink('/etc/passwd', 'leak.txt')",
    "symlink_to_dev_zero": "os.symlink('/dev/zero', 'zero.bin')",
    "symlink_dir_to_root": "os.symlink('/', 'rootdir')",
    "dangling_symlink": "os.symlink('/nonexistent/x', 'dangle.txt')",
    "hardlink_pair": "open('h1.txt', 'w').write('h'); os.link('h1.txt', 'h2.txt')",
    "hardlink_across_dirs": "os.makedirs('d'); open('d/a.txt', 'w').write('a'); os.link('d/a.txt', 'b.txt')",
    "fifo": "os.mkfifo('pipe.txt')",
    "unix_socket": "import socket; s = socket.socket(socket.AF_UNIX); s.bind('sock.txt'); s.listen()",
    "hidden_file": "open('.secret', 'w').write('s')",
    "hidden_dir": "os.makedirs('.cache'); open('.cache/c.txt', 'w').write('c')",
}


@pytest.mark.parametrize("kind", sorted(SPECIALS))
async def test_special_output_is_never_served(client: Any, kind: str) -> None:
    """Links, FIFOs, sockets and hidden names are not listed (nor served); an ordinary file
    written by the same run is served with its exact bytes, and the reply is not blocked."""
    started = time.monotonic()
    body = await run(client, "import os\n" + ORDINARY + SPECIALS[kind] + "\nprint('done')\n")
    assert time.monotonic() - started < 10
    assert body["stdout"] == "done\n", body
    names = [f["name"] for f in body["files"]]
    assert names == ["ordinary.txt"], names
    got = await client.get(f"/download/{body['session_id']}/{body['files'][0]['id']}")
    assert got.status == 200 and await got.read() == b"plain"


async def test_symlink_output_not_followed_inside_a_directory(client: Any) -> None:
    body = await run(client, "import os\nos.makedirs('out')\nos.symlink('/etc', 'out/etc')\n"
                             "os.symlink('/etc/hostname', 'out/host.txt')\nopen('out/real.txt','w').write('r')\n")
    assert [f["name"] for f in body["files"]] == ["out/real.txt"]


async def test_ten_gigabyte_sparse_file_fails_with_efbig(client: Any) -> None:
    cap = settings_of(client).limits.file_max_bytes
    code = (
        "import os, errno, json\nr = {}\n"
        "try:\n    f = open('sparse.bin', 'wb'); f.seek(10 * 2 ** 30); f.write(b'x'); f.close(); r['seek'] = 'ok'\n"
        "except OSError as e:\n    r['seek'] = errno.errorcode[e.errno]\n"
        "fd = os.open('trunc.bin', os.O_CREAT | os.O_WRONLY)\n"
        "try:\n    os.ftruncate(fd, 10 * 2 ** 30); r['truncate'] = 'ok'\n"
        "except OSError as e:\n    r['truncate'] = errno.errorcode[e.errno]\n"
        f"os.ftruncate(fd, {cap // 2}); os.close(fd); r['twin'] = os.path.getsize('trunc.bin')\n"
        "print(json.dumps(r))\n"
    )
    r = await jail_json(client, code)
    assert r == {"seek": "EFBIG", "truncate": "EFBIG", "twin": cap // 2}, r
    await assert_daemon_fine(client)


async def test_file_over_the_size_cap_is_cut_at_the_cap_and_served_bounded(make_client: Any) -> None:
    client = await make_client(limits={"file_max_bytes": 2 * MiB})
    cap = settings_of(client).limits.file_max_bytes
    code = (
        "import errno, json\nn = 0\n"
        "f = open('huge.bin', 'wb', buffering=0)\n"
        f"try:\n    while n < {cap * 4}:\n        n += f.write(b'h' * 65536)\n"
        "except OSError as e:\n    print(json.dumps([n, errno.errorcode[e.errno]]))\n"
    )
    body = await run(client, code)
    n, err = json.loads(body["stdout"])
    assert err == "EFBIG" and n == cap
    # the file was cut at the cap: it is listed and served whole, never more than the cap
    huge = [f for f in body["files"] if f["name"] == "huge.bin"]
    assert len(huge) == 1
    got = await client.get(f"/download/{body['session_id']}/{huge[0]['id']}")
    data = await got.read()
    assert len(data) == cap and got.headers["Content-Length"] == str(cap) and set(data) == {ord("h")}
    twin = await run(client, "open('small.bin','wb').write(b's' * 1000)")
    assert await (await client.get(f"/download/{twin['session_id']}/{twin['files'][0]['id']}")).read() == b"s" * 1000
    await assert_daemon_fine(client)


# One parameter of a header value: a token, then optionally =token or ="quoted string".
DISPOSITION_PARAM = re.compile(r'\s*([^=;\s"]+)(?:=("(?:[^"\\]|\\.)*"|[^;"]*))?\s*(?:;|$)')

ODD_NAMES = {
    "newline": "a\nb.txt",
    "carriage_return": "a\rb.txt",
    "tab": "a\tb.txt",
    "escape_sequence": "\x1b[31mred.txt",
    "unicode": "données-☃-日本.txt",
    "rtl_override": "evil\u202etxt.exe",
    "very_long_component": "L" * 250 + ".txt",
    "too_long_component": None,  # 256 bytes is over NAME_MAX: the kernel itself refuses it
    "leading_dash": "-rf.txt",
    "dots_only": "...",
    "dot_dot_prefix": "..hidden-looking",
    "dot_dot_inside": "a..b.txt",
    "percent_encoded_dots": "%2e%2e%2fescape.txt",
    "quote_and_semicolon": 'x";filename=evil.html;.txt',
    "backslash": "a\\..\\b.txt",
    "space_only": " ",
    "deeply_nested": "/".join(["d"] * 20) + "/deep.txt",
}


@pytest.mark.parametrize("kind", sorted(ODD_NAMES))
async def test_odd_output_name_is_served_safely_or_skipped(client: Any, kind: str) -> None:
    """Each odd name is either skipped or listed under exactly its own name and served with its
    own bytes and a Content-Disposition that cannot inject headers; the reply is never a 500."""
    name = ODD_NAMES[kind]
    if name is None:
        code = ("import errno\ntry:\n    open('N' * 256, 'w')\nexcept OSError as e:\n"
                "    print(errno.errorcode[e.errno])\n" + ORDINARY)
        body = await run(client, code)
        assert body["stdout"] == "ENAMETOOLONG\n"
        assert [f["name"] for f in body["files"]] == ["ordinary.txt"]
        return
    code = ("import os, sys\nname = sys.argv[1]\n"
            "if '/' in name: os.makedirs(os.path.dirname(name), exist_ok=True)\n"
            "open(name, 'w').write('odd:' + name)\n" + ORDINARY)
    body = await run(client, code, args=[name])
    assert body["status"] == "ok", body
    listed = {f["name"]: f for f in body["files"]}
    assert "ordinary.txt" in listed
    for fname, f in listed.items():
        got = await client.get(f"/download/{body['session_id']}/{f['id']}")
        assert got.status == 200
        data = await got.read()
        if fname == "ordinary.txt":
            assert data == b"plain"
            continue
        assert fname == name and data == ("odd:" + name).encode()
        disp = got.headers["Content-Disposition"]
        assert "\n" not in disp and "\r" not in disp
        assert disp.startswith("attachment;")
        star = disp.split("filename*=UTF-8''", 1)[1]
        assert urllib.parse.unquote(star) == name.rsplit("/", 1)[-1]
        params = [k for k, _ in DISPOSITION_PARAM.findall(disp)]
        assert params == ["attachment", "filename", "filename*"], disp  # a quote cannot add a parameter
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        assert name not in listed  # control characters are never offered as names


async def test_hundred_thousand_files_reply_stays_bounded(make_client: Any) -> None:
    client = await make_client(storage={"session_max_inodes": 120_000, "session_max_bytes": 64 * MiB})
    cap = settings_of(client).limits.output_files_max
    code = ("import os\nfor i in range(100_000):\n    os.close(os.open(f'f{i:06d}.txt', os.O_CREAT | os.O_WRONLY))\n"
            "print(len(os.listdir('.')))\n")
    body = await run(client, code, timeout=60000)
    assert body["status"] == "ok" and body["stdout"] == "100000\n", body
    assert len(body["files"]) <= cap
    assert (await client.get("/health")).status == 200
    listing = await client.get(f"/files/{body['session_id']}?detail=summary")
    assert listing.status == 200 and len(await listing.json()) <= cap
    second = await run(client, "print(len(os.listdir('.')))".join(["import os\n", ""]), session_id=body["session_id"])
    assert second["status"] == "ok" and second["stdout"] == "100000\n", second
    await assert_daemon_fine(client)


REPLACEMENTS = {
    "symlink": "os.symlink('/etc/passwd', 'out.txt')",
    "hardlink": "open('other.txt','w').write('other'); os.link('other.txt', 'out.txt')",
    "fifo": "os.mkfifo('out.txt')",
    "directory": "os.makedirs('out.txt')",
}


@pytest.mark.parametrize("kind", sorted(REPLACEMENTS))
async def test_file_swapped_by_a_later_run_is_not_served(client: Any, kind: str) -> None:
    """A later run in the same session replaces a served file with something else: its old ID
    answers 404 (never the new target), quickly even for a FIFO."""
    first = await run(client, "open('out.txt','w').write('original')")
    sid, fid = first["session_id"], first["files"][0]["id"]
    assert await (await client.get(f"/download/{sid}/{fid}")).read() == b"original"
    swap = await run(client, "import os\nos.remove('out.txt')\n" + REPLACEMENTS[kind] + "\nprint('swapped')",
                     session_id=sid)
    assert swap["stdout"] == "swapped\n" and swap["session_id"] == sid
    # A FIFO without writer would block an open(); the bound catches that, not a slow host.
    resp = await asyncio.wait_for(client.get(f"/download/{sid}/{fid}"), timeout=20)
    assert resp.status == 404
    assert (await client.get(f"/sessions/{sid}/objects/{fid}")).status == 404
    twin = await run(client, "open('fresh.txt','w').write('fresh')", session_id=sid)
    f = [x for x in twin["files"] if x["name"] == "fresh.txt"][0]
    assert await (await client.get(f"/download/{sid}/{f['id']}")).read() == b"fresh"


async def test_file_swapped_on_the_host_side_for_a_fifo_does_not_block_download(client: Any) -> None:
    import os
    first = await run(client, "open('out.txt','w').write('mine')")
    sid, fid = first["session_id"], first["files"][0]["id"]
    path = os.path.join(store_of(client).sessions[sid].path, "out.txt")
    os.remove(path)
    os.mkfifo(path)
    resp = await asyncio.wait_for(client.get(f"/download/{sid}/{fid}"), timeout=5)
    assert resp.status == 404
    await assert_daemon_fine(client)


async def test_inputs_are_copied_not_linked(client: Any) -> None:
    """A run that modifies an input in place cannot change the stored version another session
    still serves."""
    first = await run(client, "open('in.txt','w').write('v1')")
    ref = [{"id": first["files"][0]["id"], "name": "in.txt", "storage_session_id": first["session_id"]}]
    second = await run(client, "f = open('in.txt','r+'); f.write('XX'); f.close(); print(open('in.txt').read())",
                       files=ref)
    assert second["stdout"] == "XX\n"
    orig = await client.get(f"/download/{first['session_id']}/{first['files'][0]['id']}")
    assert await orig.read() == b"v1"


async def test_non_utf8_output_name_does_not_break_the_reply(client: Any) -> None:
    code = ("import os\nos.close(os.open(b'\\xff\\xfe.txt', os.O_CREAT | os.O_WRONLY))\n" + ORDINARY
            + "print('done')\n")
    resp = await client.post("/exec", json={"lang": "py", "code": code})
    try:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["stdout"] == "done\n" and "ordinary.txt" in [f["name"] for f in body["files"]]
        again = await run(client, "print('next run')", session_id=body["session_id"])
        assert again["stdout"] == "next run\n"
    finally:
        await assert_daemon_fine(client)


async def test_input_placement_never_follows_a_planted_symlink(client: Any, tmp_path: Any) -> None:
    """The jail plants `evil -> <a host directory>` in its session; a later exec in that session
    asks for an input at `evil/pwned.txt`. The daemon (root on the host) must not write there."""
    import os
    target = tmp_path / "host-target"
    target.mkdir()
    up = aiohttp_form(b"payload")
    resp = await client.post("/upload", data=up)
    up_body = await resp.json()
    src_sid, src_fid = up_body["session_id"], up_body["files"][0]["fileId"]
    plant = await run(client, f"import os\nos.symlink({str(target)!r}, 'evil')\nprint('planted')")
    sid = plant["session_id"]
    ref = [{"id": src_fid, "name": "evil/pwned.txt", "storage_session_id": src_sid}]
    resp = await client.post("/exec", json={"lang": "py", "session_id": sid, "files": ref, "code": "print(1)"})
    # A bad request (the name does not resolve to a directory of the session), not a missing input.
    assert resp.status == 400, await resp.text()
    assert os.listdir(target) == []
    # The symlink's own name as the input name: the link itself is replaced, never followed.
    ref = [{"id": src_fid, "name": "evil", "storage_session_id": src_sid}]
    resp = await client.post("/exec", json={"lang": "py", "session_id": sid, "files": ref, "code": (
        "import os; print(os.path.islink('evil'), os.path.isfile('evil') and open('evil').read())")})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["stdout"] == "False payload\n"
    assert os.listdir(target) == []
    for bad in ("../../pwned.txt", "/tmp/pwned.txt", "a/../../pwned.txt", "evil/../../pwned.txt"):
        ref = [{"id": src_fid, "name": bad, "storage_session_id": src_sid}]
        resp = await client.post("/exec", json={"lang": "py", "files": ref, "code": "print(1)"})
        assert resp.status == 400, (bad, resp.status)
    assert not os.path.exists("/tmp/pwned.txt")
    # twin: an ordinary input name in that session works
    ref = [{"id": src_fid, "name": "inputs/ok.txt", "storage_session_id": src_sid}]
    body = await run(client, "print(open('inputs/ok.txt').read())", session_id=sid, files=ref)
    assert body["stdout"] == "payload\n"


def aiohttp_form(data: bytes, name: str = "in.txt") -> Any:
    import aiohttp
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name)
    return form
