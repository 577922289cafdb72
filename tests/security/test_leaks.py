"""Leaks: host files, host processes, the daemon's environment and secrets, other sessions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandboxd.policy import JAIL_INIT

from ._util import jail_json, profile_env, run, settings_of, store_of

pytestmark = pytest.mark.jail

SECRET_ENV = "SANDBOXD_TEST_SECRET_TOKEN"
SECRET_VALUE = "s3cr3t-" + os.urandom(8).hex()
API_KEY = "sk-security-test-" + os.urandom(12).hex()
OTHER_KEY = "sk-other-tenant-" + os.urandom(12).hex()

# Scans every file the jail can read in these trees (bounded) for a needle; prints hits.
SCAN = r"""
import os, json, sys
needles = [n.encode() for n in sys.argv[1:]]
hits, seen = [], 0
roots = ['/etc', '/opt/sandboxd/jail-lib', '/tmp', '/dev/shm', '/mnt/data', '/proc/self', '/proc/1']
for root in roots:
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        if dirpath.startswith(('/proc/self/task', '/proc/1/task', '/proc/self/net', '/proc/1/net')):
            dirs[:] = []
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or p.endswith(('/mem', '/pagemap', '/clear_refs', '/kcore')):
                continue
            try:
                with open(p, 'rb', buffering=0) as f:
                    data = f.read(1 << 20)
            except OSError:
                continue
            seen += 1
            if any(n in data for n in needles):
                hits.append(p)
for p in ('/proc/self/environ', '/proc/self/cmdline', '/proc/1/environ', '/proc/1/cmdline'):
    data = open(p, 'rb').read()
    if any(n in data for n in needles):
        hits.append(p)
print(json.dumps({'hits': hits, 'seen': seen}))
"""


@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/gshadow", "/etc/ssh", "/root", "/home", "/var", "/run",
                                  "/srv", "/boot", "/sys", "/etc/sandboxd", "/opt/sandboxd/run"])
async def test_host_path_is_not_visible(client: Any, path: str) -> None:
    code = (f"import os, json\nprint(json.dumps([os.path.lexists({path!r}),"
            " sorted(os.listdir('/etc')) != [], open('/etc/passwd').read().count('\\n')]))\n")
    exists, etc_listable, passwd_lines = await jail_json(client, code)
    assert exists is False
    assert etc_listable is True and passwd_lines <= 3  # twin: the synthesized /etc works, host users absent


async def test_host_processes_are_invisible_and_proc_1_is_the_jail(client: Any) -> None:
    host_init = Path("/proc/1/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    code = ("import os, json\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "print(json.dumps([pids, open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0].decode(),"
            " os.getpid(), sorted(open('/proc/1/environ', 'rb').read().split(b'\\0'))[-1].decode()]))\n")
    pids, init_cmd, mypid, _ = await jail_json(client, code)
    # Only the jail's own two processes: its init (tini, pid 1) and the program.
    assert pids == [1, 2] and mypid == 2
    assert init_cmd == JAIL_INIT[0] and init_cmd != host_init
    env1 = await jail_json(client, "import json; print(json.dumps(open('/proc/1/environ').read().split('\\0')))")
    try:  # the host's init may hide its environment even from root here
        host_env1 = {e for e in Path("/proc/1/environ").read_bytes().decode(errors="replace").split("\0") if e}
    except PermissionError:
        host_env1 = set()
    allow = {f"{k}={v}" for k, v in profile_env(client).items()}
    assert {e for e in env1 if e} == allow and not (host_env1 - allow) & set(env1)
    twin = await jail_json(client, "import subprocess, json, os\n"
                                   "p = subprocess.Popen(['sleep', '1'])\n"
                                   "print(json.dumps(sorted(int(x) for x in os.listdir('/proc') if x.isdigit())))\n"
                                   "p.kill()\n")
    assert twin[0] == 1 and len(twin) == 3  # init, the program and its own child are visible


async def test_jail_environment_is_exactly_the_allowlist(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable set in the daemon's own environment never reaches a jail, for py and bash."""
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    assert os.environ[SECRET_ENV] == SECRET_VALUE  # the daemon (this process) has it
    env = await jail_json(client, "import os, json; print(json.dumps(dict(os.environ)))")
    assert env == profile_env(client, "python")
    bash = await run(client, "env -0 | tr '\\0' '\\n' | cut -d= -f1 | sort", lang="bash")
    names = set(bash["stdout"].split())
    assert SECRET_ENV not in names and names <= set(profile_env(client, "bash")) | {"PWD", "SHLVL", "_", "OLDPWD"}


async def test_api_key_and_daemon_env_appear_in_no_readable_file(make_client: Any,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(API_KEY + "\n")
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    client = await make_client(auth={"mode": "api_key", "api_keys": [OTHER_KEY], "api_keys_file": str(keys_file)})
    headers = {"X-API-Key": API_KEY}
    resp = await client.post("/exec", json={"lang": "py", "code": SCAN, "args": [API_KEY, OTHER_KEY, SECRET_VALUE]},
                             headers=headers)
    assert resp.status == 200
    body = await resp.json()
    r = json.loads(body["stdout"].strip().splitlines()[-1])
    # The needles are argv of this very run, so its own cmdline holds them: that's the control.
    assert set(r["hits"]) <= {"/proc/self/cmdline", "/proc/1/cmdline"}, r
    assert r["seen"] > 20  # the scan did read files
    assert settings_of(client).state_dir not in body["stdout"]
    path_probe = await client.post("/exec", headers=headers, json={"lang": "py", "code": (
        f"import os; print(os.path.exists({str(keys_file)!r}), os.path.exists({str(tmp_path)!r}))")})
    assert (await path_probe.json())["stdout"] == "False False\n"


async def test_other_sessions_files_and_mount_are_unreachable(client: Any) -> None:
    first = await run(client, "open('private.txt','w').write('tenant-a-data'); print('a')")
    store = store_of(client)
    a = store.sessions[first["session_id"]]
    code = (
        "import os, json\n"
        f"r = {{'listing': os.listdir('/mnt/data'), 'a_path': os.path.lexists({a.path!r}),"
        f" 'state': os.path.lexists({settings_of(client).state_dir!r})}}\n"
        "r['found'] = [os.path.join(d, f) for root in ('/tmp', '/dev/shm', '/opt', '/mnt')"
        " for d, _, fs in os.walk(root) for f in fs if f == 'private.txt']\n"
        "r['uid_map'] = open('/proc/self/uid_map').read().split()\n"
        "open('mine.txt', 'w').write('b'); r['own'] = open('mine.txt').read()\n"
        "print(json.dumps(r))\n"
    )
    r = await jail_json(client, code)
    assert r["listing"] == [] and r["a_path"] is False and r["state"] is False and r["found"] == [], r
    assert int(r["uid_map"][1]) != a.uid  # a different outside uid than session A
    assert r["own"] == "b"


async def test_session_directories_are_private_to_their_uid_on_the_host(client: Any) -> None:
    first = await run(client, "open('x.txt','w').write('x')")
    second = await run(client, "open('y.txt','w').write('y')")
    store = store_of(client)
    a, b = store.sessions[first["session_id"]], store.sessions[second["session_id"]]
    assert a.uid != b.uid
    for s in (a, b):
        st = os.stat(s.path)
        assert st.st_uid == s.uid and (st.st_mode & 0o077) == 0


async def test_another_principal_cannot_use_or_run_in_a_session(make_client: Any) -> None:
    client = await make_client(auth={"mode": "api_key", "api_keys": [API_KEY, OTHER_KEY]})
    mine, theirs = {"X-API-Key": API_KEY}, {"X-API-Key": OTHER_KEY}
    resp = await client.post("/exec", headers=mine, json={"lang": "py", "code": "open('a.txt','w').write('A')"})
    body = await resp.json()
    sid, fid = body["session_id"], body["files"][0]["id"]
    assert (await client.get(f"/download/{sid}/{fid}", headers=theirs)).status == 404
    assert (await client.get(f"/files/{sid}", headers=theirs)).status == 404
    assert (await client.get(f"/sessions/{sid}/objects/{fid}", headers=theirs)).status == 404
    assert (await client.delete(f"/files/{sid}/{fid}", headers=theirs)).status == 404
    ref = [{"id": fid, "name": "a.txt", "storage_session_id": sid}]
    stolen = await client.post("/exec", headers=theirs, json={"lang": "py", "code": "print(1)", "files": ref})
    assert stolen.status == 422
    hijack = await client.post("/exec", headers=theirs, json={"lang": "py", "session_id": sid,
                                                              "code": "import os; print(os.listdir('.'))"})
    hb = await hijack.json()
    assert hb["session_id"] != sid and hb["stdout"] == "[]\n"
    # twin: the owner still has everything
    assert await (await client.get(f"/download/{sid}/{fid}", headers=mine)).read() == b"A"
    again = await client.post("/exec", headers=mine, json={"lang": "py", "code": "print(open('a.txt').read())",
                                                           "files": ref})
    assert (await again.json())["stdout"] == "A\n"


async def test_kernel_log_and_keyring_are_not_readable(client: Any) -> None:
    code = (
        "import errno, json\nr = {}\n"
        "for p in ('/proc/kmsg', '/proc/kcore', '/proc/self/mem'):\n"
        "    try:\n        open(p, 'rb').read(16); r[p] = 'read'\n"
        "    except OSError as e:\n        r[p] = errno.errorcode[e.errno]\n"
        "r['twin'] = len(open('/proc/cpuinfo').read()) > 0\n"
        "print(json.dumps(r))\n"
    )
    r = await jail_json(client, code)
    assert r["/proc/kmsg"] != "read" and r["/proc/kcore"] != "read", r
    assert r["twin"] is True


async def test_daemon_source_and_config_paths_are_not_exposed(client: Any) -> None:
    repo = str(Path(__file__).resolve().parents[2])
    jail_configs = settings_of(client).jail_configs_dir
    code = f"import os, json; print(json.dumps([os.path.lexists(p) for p in ({repo!r}, {jail_configs!r})]))"
    assert await jail_json(client, code) == [False, False]


async def test_mountinfo_reveals_no_host_state_paths(client: Any) -> None:
    state = settings_of(client).state_dir
    body = await run(client, "print(open('/proc/self/mountinfo').read())")
    assert "/mnt/data" in body["stdout"]  # twin: mountinfo itself is readable
    assert state not in body["stdout"], [l for l in body["stdout"].splitlines() if state in l]


async def test_upload_name_cannot_reach_outside_the_session(client: Any) -> None:
    for name in ("../../escape.txt", "/etc/passwd", "a/../../b.txt", "..", "./.."):
        form = aiohttp.FormData()
        form.add_field("file", b"evil", filename=name)
        resp = await client.post("/upload", data=form)
        assert resp.status == 400, (name, resp.status, await resp.text())
    state = Path(settings_of(client).state_dir)
    assert not any(p.name == "escape.txt" for p in state.rglob("escape.txt"))
    form = aiohttp.FormData()
    form.add_field("file", b"good", filename="input/ok.txt")
    resp = await client.post("/upload", data=form)
    assert resp.status == 200 and (await resp.json())["files"][0]["filename"] == "input/ok.txt"
