"""Fail closed: before serving, prove each isolation layer in a real jail.

A small corpus of probes runs through the same runner, policy and cgroups as user code. If any
layer is missing (a kernel without user namespaces, a policy edit that dropped seccomp, a cgroup
controller that does not enforce), the daemon refuses to start and names the layer.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable

import msgspec

from .errors import JailFailure, SandboxdError
from .languages import RECIPES
from .runner import RunLimits, RunResult
from .sessions import SessionStore
from .settings import MiB

__all__ = ["Check", "run_canaries"]

CANARY_OWNER = "\0canary"

# Runs inside the jail; prints one JSON object of observations. The host judges them.
_PROBE = r"""
import ctypes, errno, json, mmap, os, socket, struct, sys
r = {}
r["uid_map"] = open("/proc/self/uid_map").read().split()
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
r["seccomp"] = status["Seccomp"].strip()
r["no_new_privs"] = status["NoNewPrivs"].strip()
r["host_files"] = [p for p in ("/etc/shadow", "/root", "/home", "/var", "/run") if os.path.exists(p)]
r["interfaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:])
r["routes"] = len(open("/proc/net/route").readlines()) - 1
libc = ctypes.CDLL(None, use_errno=True)
r["unshare"] = [libc.unshare(0x10000000), ctypes.get_errno()]
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    r["host_loopback"] = "reachable"
except OSError as e:
    r["host_loopback"] = errno.errorcode.get(e.errno, str(e.errno))
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(b"\xb8" + struct.pack("<I", 0x40000000 | 39) + b"\x0f\x05\xc3")  # x32 getpid
fn = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
r["x32_getpid"] = fn()
print(json.dumps(r))
"""

_FORKS = r"""
import os, sys, time
n = 0
try:
    for _ in range(1000):
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        n += 1
except BlockingIOError:
    print(n)
    sys.exit(3)
print(n)
"""

_MEMORY = "chunks = []\nwhile True:\n    chunks.append(b'x' * (4 * 1024 * 1024))\n"


class Check(msgspec.Struct, frozen=True):
    layer: str
    ok: bool
    detail: str = ""


def _judge_probe(result: RunResult, outside_uid: int) -> list[Check]:
    try:
        r = json.loads(result.stdout)
    except ValueError:
        return [Check("jail runs code", False, f"probe failed: {result.stderr[-300:]}")]
    uid_map = r.get("uid_map", [])
    checks = [
        Check("jail runs code", True),
        Check("non-root outside uid", len(uid_map) == 3 and uid_map[1] == str(outside_uid) and uid_map[1] != "0",
              f"uid_map {uid_map}"),
        Check("seccomp filter", r.get("seccomp") == "2", f"Seccomp: {r.get('seccomp')}"),
        Check("no_new_privs", r.get("no_new_privs") == "1", f"NoNewPrivs: {r.get('no_new_privs')}"),
        Check("namespace creation denied", r.get("unshare", [0])[0] == -1, f"unshare: {r.get('unshare')}"),
        Check("host files hidden", r.get("host_files") == [], f"visible: {r.get('host_files')}"),
        Check("network isolation",
              r.get("interfaces") == ["lo"] and r.get("routes") == 0 and r.get("host_loopback") != "reachable",
              f"interfaces {r.get('interfaces')}, routes {r.get('routes')}, host loopback {r.get('host_loopback')}"),
        Check("x32 syscalls unavailable", isinstance(r.get("x32_getpid"), int) and r["x32_getpid"] < 0,
              f"x32 getpid returned {r.get('x32_getpid')} (disable CONFIG_X86_X32_ABI or run under systemd "
              "with SystemCallArchitectures=native)"),
    ]
    return checks


async def run_canaries(store: SessionStore, log: Callable[[Check], object] | None = None) -> list[Check]:
    """Run the probes in a throwaway session; return every check (the caller decides)."""
    py = RECIPES["py"]
    base = store.settings.limits
    try:
        s = store.create_session(CANARY_OWNER)
    except OSError as exc:
        # The tmpfs belongs to the session's uid (mode 0700): root reaches it only with
        # CAP_DAC_OVERRIDE, which a container may have dropped.
        return _report([Check("session storage", False, f"cannot create a session directory: {exc}")], log)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Uploads and a turn's input files are written the way this writes: a directory and a
        # file created by root, then handed to the session's uid (root needs CAP_CHOWN).
        try:
            fd, _ = store.open_upload(s, "canary/owned-by-session.txt")
            os.close(fd)
            owned = Check("session files owned by the session uid", True)
        except (SandboxdError, OSError) as exc:
            owned = Check("session files owned by the session uid", False, str(exc))
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]

        async def jail(code: str, args: list[str], memory: int, pids: int) -> RunResult:
            limits = RunLimits(
                wall_timeout_s=20.0, memory_max_bytes=memory, pids_max=pids, cpu_max_cores=base.cpu_max_cores,
                stream_keep_bytes=64 * 1024, stream_kill_bytes=1 * MiB, file_max_bytes=1 * MiB,
                open_files_max=base.open_files_max,
            )
            return await store.runner.run(
                profile=py.profile, program=py.argv(args), source_name=py.source_name, source=code.encode(),
                session_dir=s.path, outside_uid=s.uid, limits=limits, env=py.env,
            )

        try:
            probe = await jail(_PROBE, [str(port)], base.memory_max_bytes, base.pids_max)
        except JailFailure as exc:
            # nsjail could not build the jail (a uid map, a mount, a namespace): its reason
            # names the missing layer.
            return _report([owned, Check("jail launches", False, exc.reason or exc.message)], log)
        checks = [owned, *_judge_probe(probe, s.uid)]
        forks = await jail(_FORKS, [], base.memory_max_bytes, 16)
        checks.append(Check("pids limit enforced", forks.status == "pids_limit" and forks.stdout.strip().isdigit()
                            and int(forks.stdout) < 16, f"status {forks.status}, forks {forks.stdout.strip()}"))
        mem = await jail(_MEMORY, [], 64 * MiB, base.pids_max)
        checks.append(Check("memory limit enforced", mem.status == "oom" and mem.memory_peak_bytes <= 72 * MiB,
                            f"status {mem.status}, peak {mem.memory_peak_bytes}"))
    finally:
        listener.close()
        async with s.lock:
            store.drop_session(s)
    return _report(checks, log)


def _report(checks: list[Check], log: Callable[[Check], object] | None) -> list[Check]:
    if log is not None:
        for c in checks:
            log(c)
    return checks
