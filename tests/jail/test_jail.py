"""Real-jail tier: real nsjail, real cgroups, real tmpfs, through the HTTP API.

Each property test has a harmless twin that must still work. Limits come from the settings
the app was built with, never from constants repeated here."""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

import aiohttp
import psutil
import pytest

from sandboxd.http import STORE
from sandboxd.settings import MiB

pytestmark = pytest.mark.jail


async def run(client: Any, code: str, lang: str = "py", **extra: Any) -> dict[str, Any]:
    resp = await client.post("/exec", json={"lang": lang, "code": code, **extra})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def settings_of(client: Any) -> Any:
    return client.server.app[STORE].settings


def procs_of_uid(uid: int) -> list[tuple[int, Any]]:
    """(pid, uids) of every process, zombies included, running as `uid` on the host."""
    found = []
    for p in psutil.process_iter(["uids"]):
        uids = p.info["uids"]
        if uids is not None and uid in (uids.real, uids.effective):
            found.append((p.pid, uids))
    return found


async def test_python_hello(client: Any) -> None:
    body = await run(client, "import sys\nprint('hello', sys.argv[1:])", args=["a", "b c"])
    assert body["stdout"] == "hello ['a', 'b c']\n" and body["exit_code"] == 0 and body["status"] == "ok"
    assert body["cpu_time_ms"] >= 0 and body["memory_peak_bytes"] > 0


async def test_bash_hello_with_python3_on_path(client: Any) -> None:
    code = "echo \"hi $1\"\npython3 - <<'PY'\nimport numpy\nprint('py', numpy.arange(3).sum())\nPY"
    body = await run(client, code, lang="bash", args=["there"])
    assert body["stdout"] == "hi there\npy 3\n", body["stderr"]


async def test_error_exit_is_200_with_traceback(client: Any) -> None:
    body = await run(client, "raise ValueError('boom')")
    assert body["status"] == "error" and body["exit_code"] == 1
    assert body["stderr"].rstrip().endswith("ValueError: boom")
    silent = await run(client, "echo partial; exit 3", lang="bash")
    assert silent["exit_code"] == 3 and silent["stderr"] == "[sandboxd] exited with code 3\n"
    killed = await run(client, "kill -SEGV $$", lang="bash")
    assert killed["signal"] == "SIGSEGV" and killed["stderr"].endswith("[sandboxd] killed by SIGSEGV\n")


async def test_programs_behave_as_on_an_ordinary_machine_not_as_pid_1(client: Any) -> None:
    # As the namespace's pid 1 a program would ignore its own default-action signals and
    # collect every orphan as a zombie; tini runs as pid 1 instead.
    alarm = await run(client, "import signal, time\nsignal.alarm(1)\ntime.sleep(60)\nprint('not reached')")
    # Its own SIGALRM ended it, not the wall limit (that would be a timeout and SIGKILL).
    assert alarm["status"] == "error" and alarm["signal"] == "SIGALRM", alarm
    assert "not reached" not in alarm["stdout"]
    orphans = await run(client, (
        "import os, time, subprocess\n"
        "procs = [subprocess.Popen(['sh', '-c', 'sleep 0.05 & exit 0']) for _ in range(20)]\n"
        "[p.wait() for p in procs]\n"
        "time.sleep(0.5)\n"
        "stats = [open(f'/proc/{p}/stat').read().split(') ')[1].split() for p in os.listdir('/proc') if p.isdigit()]\n"
        "orphan_zombies = [s for s in stats if s[0] == 'Z' and s[1] == '1']\n"
        "print(os.getpid() != 1, len(orphan_zombies))\n"))
    assert orphans["stdout"] == "True 0\n", orphans  # the 20 orphaned sleeps were reaped


async def test_cwd_and_home_are_mnt_data(client: Any) -> None:
    body = await run(client, "import os; print(os.getcwd(), os.environ['HOME'])")
    assert body["stdout"] == "/mnt/data /mnt/data\n"


async def test_matplotlib_show_saves_a_png(client: Any) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()\n"
    body = await run(client, code)
    assert body["status"] == "ok", body["stderr"]
    pngs = [f for f in body["files"] if f["name"] == "plot_1.png"]
    assert len(pngs) == 1 and pngs[0]["type"] == "image/png"
    data = await (await client.get(f"/download/{body['session_id']}/{pngs[0]['id']}")).read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert "Matplotlib" not in body["stderr"]  # no cache-dir warning: the font cache is seeded


async def test_data_stack_imports(client: Any) -> None:
    code = ("import numpy, pandas, scipy, seaborn, openpyxl, PIL, sklearn, sympy, statsmodels, tabulate\n"
            "print(pandas.DataFrame({'a': [1, 2]}).a.sum())")
    body = await run(client, code)
    assert body["stdout"] == "3\n", body["stderr"]


async def test_files_in_and_out_across_two_execs(client: Any) -> None:
    first = await run(client, (
        "import os\nos.makedirs('reports', exist_ok=True); os.makedirs('data', exist_ok=True)\n"
        "open('reports/summary.md','w').write('# sum')\nopen('data/a.csv','w').write('a\\n1\\n')\n"
        "open('old.md','w').write('old')\n"))
    s1 = first["session_id"]
    by_name = {f["name"]: f for f in first["files"]}
    assert set(by_name) == {"reports/summary.md", "data/a.csv", "old.md"}
    assert all(f["storage_session_id"] == s1 and not f.get("inherited") for f in first["files"])

    refs = [{"id": f["id"], "name": f["name"], "storage_session_id": f["storage_session_id"]} for f in first["files"]]
    second = await run(client, (
        "import os\nprint(open('reports/summary.md').read())\nos.remove('old.md')\n"
        "open('data/a.csv','a').write('2\\n')\nopen('new.txt','w').write('n')\n"), files=refs)
    s2 = second["session_id"]
    assert s2 != s1 and second["stdout"] == "# sum\n"
    out = {f["name"]: f for f in second["files"]}
    assert out["reports/summary.md"] == {"id": by_name["reports/summary.md"]["id"], "name": "reports/summary.md",
                                         "storage_session_id": s1, "inherited": True}
    assert out["data/a.csv"]["id"] != by_name["data/a.csv"]["id"] and out["data/a.csv"]["storage_session_id"] == s2
    assert not out["data/a.csv"].get("inherited") and not out["new.txt"].get("inherited")
    assert second["deleted_files"] == ["old.md"]
    # The original objects are untouched by the second run.
    orig = await client.get(f"/download/{s1}/{by_name['data/a.csv']['id']}")
    assert await orig.read() == b"a\n1\n"
    changed = await client.get(f"/download/{s2}/{out['data/a.csv']['id']}")
    assert await changed.read() == b"a\n1\n2\n"


async def test_old_clients_session_id_field_and_live_session(client: Any) -> None:
    first = await run(client, "open('x.txt','w').write('1')")
    s1, f1 = first["session_id"], first["files"][0]["id"]
    # Older clients name the storage session as session_id in the file ref, and may send the
    # session_id of a live session to run in it.
    second = await run(client, "print(open('x.txt').read())",
                       session_id=s1, files=[{"id": f1, "name": "x.txt", "session_id": s1}])
    assert second["session_id"] == s1 and second["stdout"] == "1\n"
    assert second["files"] == [{"id": f1, "name": "x.txt", "storage_session_id": s1, "inherited": True}]


async def test_rewritten_file_gets_new_id_and_old_id_stops_serving(client: Any) -> None:
    first = await run(client, "open('r.txt','w').write('v1')")
    s1, f1 = first["session_id"], first["files"][0]["id"]
    second = await run(client, "open('r.txt','w').write('v2')", session_id=s1)
    f2 = second["files"][0]["id"]
    assert f2 != f1
    assert (await client.get(f"/download/{s1}/{f1}")).status == 404  # never the wrong bytes
    assert await (await client.get(f"/download/{s1}/{f2}")).read() == b"v2"


async def test_memory_bomb_is_oom_with_the_limit_named(client: Any) -> None:
    limit = settings_of(client).limits.memory_max_bytes
    body = await run(client, f"chunks = []\nwhile True:\n    chunks.append(b'x' * {16 * MiB})\n")
    assert body["status"] == "oom"
    assert f"{limit // MiB} MiB" in body["message"]
    assert body["stderr"].endswith(f"[sandboxd] {body['message']}\n")  # the model sees why
    assert body["memory_peak_bytes"] >= limit * 0.9
    twin = await run(client, f"b = b'x' * {limit // 4}\nprint(len(b))")
    assert twin["status"] == "ok" and twin["stdout"] == f"{limit // 4}\n"


async def test_fork_bomb_is_contained(client: Any) -> None:
    pids_max = settings_of(client).limits.pids_max
    # The first process's fork fails with EAGAIN once pids.max is reached; its exit ends the jail.
    body = await run(client, "import os\nwhile True:\n    os.fork()\n", timeout=30000)
    assert body["status"] == "pids_limit", body
    assert body["message"] == f"process limit {pids_max} reached", body
    assert procs_of_uid(client.server.app[STORE].sessions[body["session_id"]].uid) == []
    twin = await run(client, "import subprocess\nfor i in range(10):\n    subprocess.run(['true'])\nprint('ok')")
    assert twin["stdout"] == "ok\n"
    assert (await client.get("/health")).status == 200


async def test_infinite_loop_times_out_within_the_limit(client: Any) -> None:
    started = time.monotonic()
    body = await run(client, "while True:\n    pass\n", timeout=2000)
    elapsed = time.monotonic() - started
    assert body["status"] == "timeout" and "2 s" in body["message"]
    # Not before the limit; the upper bounds only catch a kill that never comes (a loaded
    # 2-core machine may be late by seconds, never by ten times the limit).
    assert 2000 <= body["wall_time_ms"] < 10 * 2000 and elapsed < 10 * 2.0, (body, elapsed)
    twin = await run(client, "import time; time.sleep(0.5); print('done')", timeout=2000)
    assert twin["status"] == "ok" and twin["stdout"] == "done\n"


async def test_server_wall_limit_applies_without_request_timeout(make_client: Any) -> None:
    client = await make_client(limits={"wall_timeout_s": 1.5})
    body = await run(client, "import time; time.sleep(60)", timeout=600000)  # may only lower
    # The 60 s sleep was cut at the server's 1.5 s, not at the request's 600 s.
    assert body["status"] == "timeout" and "1.5 s" in body["message"], body
    assert 1500 <= body["wall_time_ms"] < 10 * 1500, body


async def test_daemonized_grandchild_does_not_survive(client: Any) -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        while True:\n"
        "            open('beat.txt', 'a').write('.')\n"
        "            time.sleep(0.05)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('parent done')\n"
    )
    body = await run(client, code)
    assert body["stdout"] == "parent done\n"
    store = client.server.app[STORE]
    uid = store.sessions[body["session_id"]].uid
    assert procs_of_uid(uid) == []
    beat = os.path.join(store.sessions[body["session_id"]].path, "beat.txt")
    size = os.path.getsize(beat)
    await asyncio.sleep(0.3)
    assert os.path.getsize(beat) == size  # nothing is still writing
    twin = await run(client, "sleep 0.1 & wait; echo waited", lang="bash")
    assert twin["stdout"] == "waited\n"


async def test_huge_stdout_is_bounded_with_head_and_tail(client: Any) -> None:
    keep = settings_of(client).limits.stream_keep_bytes
    code = ("import sys\nprint('FIRST LINE')\nline = 'y' * 99 + '\\n'\n"
            "for _ in range(500000):\n    sys.stdout.write(line)\nprint('LAST LINE')\n")
    body = await run(client, code)
    assert body["status"] == "ok"
    out = body["stdout"]
    assert out.startswith("FIRST LINE\n") and out.endswith("LAST LINE\n")
    assert re.search(r"\[\.\.\. \d+ bytes of output omitted \.\.\.\]", out)
    assert len(out.encode()) <= keep + 200
    twin = await run(client, "print('small')")
    assert twin["stdout"] == "small\n"


async def test_filling_the_session_gives_enospc_and_spares_others(client: Any) -> None:
    cap = settings_of(client).storage.session_max_bytes
    code = (f"try:\n    open('big.bin','wb').write(b'z' * {cap + MiB})\n"
            "except OSError as e:\n    print('errno', e.errno)\n")
    body = await run(client, code)
    assert body["stdout"] == "errno 28\n", body
    other = await run(client, f"open('ok.bin','wb').write(b'o' * {MiB}); print('fine')")
    assert other["stdout"] == "fine\n" and other["files"][0]["name"] == "ok.bin"
    same = await run(client, "import os; os.remove('big.bin'); print('room again')",
                     session_id=body["session_id"])
    assert same["stdout"] == "room again\n"


async def test_network_to_the_daemon_port_fails_from_inside(client: Any) -> None:
    port = client.server.port
    code = (
        "import socket\n"
        f"s = socket.socket(); s.settimeout(2)\n"
        f"try:\n    s.connect(('127.0.0.1', {port})); print('connected')\n"
        "except OSError as e:\n    print('refused', e.errno)\n"
        "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\n"
        "print([l.split()[0] for l in open('/proc/net/route').readlines()[1:]])\n"
    )
    body = await run(client, code)
    lines = body["stdout"].splitlines()
    assert lines[0].startswith("refused"), body
    assert lines[1] == "['lo']" and lines[2] == "[]"  # only loopback, and no route anywhere
    twin = await run(client, (
        "import socket\nsrv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen()\n"
        "c = socket.create_connection(srv.getsockname()); a, _ = srv.accept(); c.sendall(b'ping')\n"
        "print(a.recv(4).decode())\n"))
    assert twin["stdout"] == "ping\n"  # loopback inside the jail still works


async def test_uid_outside_the_jail_is_not_root(client: Any) -> None:
    # The run waits for a file the test creates, so the test sees it alive without guessing when.
    sid = (await run(client, "print('session')"))["session_id"]
    store = client.server.app[STORE]
    session = store.sessions[sid]
    task = asyncio.ensure_future(client.post("/exec", json={"lang": "py", "session_id": sid, "code": (
        "import time, os\nprint(open('/proc/self/uid_map').read().split())\n"
        "while not os.path.exists('go'):\n    time.sleep(0.02)\n")}))
    jailed: list[tuple[int, Any]] = []
    deadline = time.monotonic() + 20
    while not jailed and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.02)
        jailed = procs_of_uid(session.uid)
    open(os.path.join(session.path, "go"), "w").close()
    body = await (await task).json()
    assert jailed, "the jailed process was not visible from the host"
    for _, uids in jailed:
        assert uids.real != 0 and uids.effective != 0 and uids.saved != 0
        assert uids.real >= settings_of(client).uid_base
    inside, outside, count = body["stdout"].strip().strip("[]").replace("'", "").split(", ")
    assert inside == "1000" and int(outside) >= settings_of(client).uid_base and count == "1"
    twin = await run(client, "import os; print(os.getuid(), os.getgid())")
    assert twin["stdout"] == "1000 1000\n"


async def test_shadow_and_host_homes_are_not_visible(client: Any) -> None:
    code = "import os\nprint([os.path.exists(p) for p in ('/etc/shadow', '/root', '/home', '/var', '/run')])"
    body = await run(client, code)
    assert body["stdout"] == "[False, False, False, False, False]\n"
    twin = await run(client, "print('sandbox' in open('/etc/passwd').read())")
    assert twin["stdout"] == "True\n"


async def test_symlink_fifo_and_hardlink_outputs_are_never_served(client: Any) -> None:
    code = (
        "import os\n"
        "os.symlink('/etc/passwd', 'link.txt')\n"
        "os.symlink('/mnt/data', 'dirlink')\n"
        "os.mkfifo('pipe.txt')\n"
        "open('a.txt','w').write('a'); os.link('a.txt', 'b.txt')\n"
        "open('ok.txt','w').write('ok')\n"
        "os.makedirs('.hidden'); open('.hidden/h.txt','w').write('h')\n"
    )
    body = await run(client, code)
    assert [f["name"] for f in body["files"]] == ["ok.txt"]
    got = await client.get(f"/download/{body['session_id']}/{body['files'][0]['id']}")
    assert await got.read() == b"ok"


async def test_file_swapped_for_symlink_after_the_run_is_not_served(client: Any) -> None:
    first = await run(client, "open('out.txt','w').write('mine')")
    sid, fid = first["session_id"], first["files"][0]["id"]
    store = client.server.app[STORE]
    path = os.path.join(store.sessions[sid].path, "out.txt")
    os.remove(path)
    os.symlink("/etc/hostname", path)  # what a racing jail could leave behind
    resp = await client.get(f"/download/{sid}/{fid}")
    assert resp.status == 404
    twin = await run(client, "open('out2.txt','w').write('fine')")
    resp = await client.get(f"/download/{twin['session_id']}/{twin['files'][0]['id']}")
    assert await resp.read() == b"fine"


async def test_client_disconnect_kills_and_reaps_the_run(client: Any) -> None:
    store = client.server.app[STORE]
    before = set(store.sessions)
    try:
        await asyncio.wait_for(client.post("/exec", json={"lang": "bash", "code": "sleep 20"}), timeout=1.0)
    except asyncio.TimeoutError:
        pass
    new = [store.sessions[s] for s in set(store.sessions) - before]
    deadline = time.monotonic() + 20  # the kill and reap follow the disconnect; poll, not sleep
    while time.monotonic() < deadline and (store.admission.running or store.runner._live
                                           or any(procs_of_uid(s.uid) for s in new)):
        await asyncio.sleep(0.02)
    for s in new:
        assert procs_of_uid(s.uid) == []
    assert store.admission.running == 0
    assert not store.runner._live  # its cgroup is gone
    twin = await run(client, "echo still fine", lang="bash")
    assert twin["stdout"] == "still fine\n"


async def test_output_flood_is_killed_with_output_limit(make_client: Any) -> None:
    client = await make_client(limits={"stream_kill_bytes": 4 * MiB, "stream_keep_bytes": 64 * 1024})
    body = await run(client, "import sys\nwhile True:\n    sys.stdout.write('z' * 65536)\n")
    # The endless flood ended by the output kill, not by the wall limit.
    assert body["status"] == "output_limit" and "4 MiB" in body["message"]
    assert len(body["stdout"]) <= 64 * 1024 + 200
    twin = await run(client, f"print('q' * {2 * MiB})")
    assert twin["status"] == "ok"
