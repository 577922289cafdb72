"""Fail closed: before serving, prove each isolation layer in a real jail.

A small corpus of probes runs through the same runner, policy and cgroups as user code. If any
layer is missing (a kernel without user namespaces, a policy edit that dropped seccomp, a cgroup
controller that does not enforce), the daemon refuses to start and names the layer.

Every profile gets a shell probe (namespaces, uid map, seccomp, no_new_privs, network, and the
host paths its mounts show), so a profile edit the static checker missed still stops the start;
python additionally gets the full probe (x32, nested namespaces, host loopback) and the limits.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable

import msgspec

from .errors import ConfigError, JailFailure, SandboxdError
from .languages import BIN_DIR, RECIPES, SOURCE_DIR
from .policy import DEVICE_SOURCES, FORBIDDEN_SOURCES, NAMESPACES, SESSION_MOUNT, settings_sources
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
# The x32 call runs in a child: under systemd's SystemCallArchitectures=native the kernel kills
# the caller with SIGSYS, which proves x32 unavailable but must not take the probe down with it.
rfd, wfd = os.pipe()
child = os.fork()
if child == 0:
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(b"\xb8" + struct.pack("<I", 0x40000000 | 39) + b"\x0f\x05\xc3")  # x32 getpid
    fn = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    os.write(wfd, str(fn()).encode())
    os._exit(0)
os.close(wfd)
answer = os.read(rfd, 64).decode()
status = os.waitpid(child, 0)[1]
if os.WIFSIGNALED(status):
    r["x32_getpid"] = "killed by signal %d" % os.WTERMSIG(status)
else:
    r["x32_getpid"] = int(answer)
print(json.dumps(r))
"""

# Runs in every profile through /bin/sh (all of them bind /usr): the layers a profile itself
# decides (namespaces, uid map, seccomp, network, mounts) are proven for each one, not only for
# python. Prints "key value" lines; the host judges them. The arguments are host paths that
# must not exist inside the jail.
# /proc/self/ns names of the namespaces every profile must unshare (clone_newns is "mnt").
_PROC_NS = tuple({"ns": "mnt"}.get(n, n) for n in (ns.removeprefix("clone_new") for ns in NAMESPACES))
_SHELL_PROBE = r"""
for ns in NAMESPACES; do echo "ns $ns $(readlink /proc/self/ns/$ns)"; done
echo "uid_map $(cat /proc/self/uid_map)"
sed -n 's/^Seccomp:[[:space:]]*/seccomp /p; s/^NoNewPrivs:[[:space:]]*/no_new_privs /p' /proc/self/status
tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sed 's/^/iface /'
echo "routes $(($(wc -l < /proc/net/route) - 1))"
for p in "$@"; do if [ -e "$p" ] || [ -L "$p" ]; then echo "visible $p"; fi; done
sed 's/^/mount /' /proc/self/mountinfo
echo "done"
""".replace("NAMESPACES", " ".join(_PROC_NS))

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


def _x32_unavailable(answer: object) -> bool:
    """An x32 call failed (a negative errno) or its caller was killed by SIGSYS (31)."""
    if isinstance(answer, int):
        return answer < 0
    return answer == "killed by signal 31"


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
        Check("x32 syscalls unavailable", _x32_unavailable(r.get("x32_getpid")),
              f"x32 getpid returned {r.get('x32_getpid')} (disable CONFIG_X86_X32_ABI or run under systemd "
              "with SystemCallArchitectures=native)"),
    ]
    return checks


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _mount_table(mountinfo: str) -> list[tuple[str, str, str]]:
    """(device, root within that filesystem, mount point) of each line of a mountinfo."""
    rows = []
    for line in mountinfo.splitlines():
        f = line.split()
        if len(f) > 4:
            rows.append((f[2], f[3].replace("\\040", " "), f[4].replace("\\040", " ")))
    return rows


def _exposed_host_paths(jail_mountinfo: str, host_mountinfo: str,
                        host_after: str | None = None) -> dict[str, list[str]]:
    """Jail mount point -> the host paths it shows, for every mount of a host filesystem: the
    jail's mountinfo names each bind by its root within the filesystem, the host's says where
    that filesystem is mounted. The per-run binds (session, source, compile cache) are the
    daemon's own and skipped; nsjail's private tmpfs, proc and synthesized files match no
    host device and expose nothing."""
    host = _mount_table(host_mountinfo)
    if host_after is not None:
        # Anonymous device numbers (tmpfs, proc) are reused once freed: a host mount that came
        # or went while the probe ran may carry the number of one of nsjail's fresh mounts.
        # Only mounts present before and after the probe describe the host it saw.
        later = set(_mount_table(host_after))
        host = [row for row in host if row in later]
    per_run = (SESSION_MOUNT, SOURCE_DIR, BIN_DIR)
    exposed: dict[str, list[str]] = {}
    for dev, root, point in _mount_table(jail_mountinfo):
        if any(_under(point, p) for p in per_run):
            continue
        for hdev, hroot, hpoint in host:
            if hdev == dev and _under(root, hroot):
                rest = root[len(hroot.rstrip("/")):] if hroot != "/" else root
                # A filesystem mounted at several host places shows each of them: judge all.
                exposed.setdefault(point, []).append(os.path.normpath(hpoint.rstrip("/") + "/" + rest.lstrip("/")))
    return exposed


def _judge_profile(profile: str, result: RunResult, outside_uid: int, forbidden: tuple[str, ...],
                   host_mountinfo: tuple[str, str]) -> list[Check]:
    def check(layer: str, ok: bool, detail: str = "") -> Check:
        return Check(f"{profile} profile: {layer}", ok, detail)

    lines = result.stdout.splitlines()
    if "done" not in lines:
        return [check("jail runs code", False, f"shell probe failed ({result.status}): {result.stderr[-300:]}")]
    seen: dict[str, list[str]] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        seen.setdefault(key, []).append(value)
    uid_map = seen.get("uid_map", [""])[0].split()
    shared = []
    for entry in seen.get("ns", []):
        name, _, ident = entry.partition(" ")
        try:
            if not ident or ident == os.readlink(f"/proc/self/ns/{name}"):
                shared.append(name)
        except OSError:
            shared.append(name)
    exposed = _exposed_host_paths("\n".join(seen.get("mount", [])), *host_mountinfo)
    leaks = sorted(f"{point} shows host {path}" for point, paths in exposed.items() for path in paths
                   if any(_under(path, f) or _under(f, path) for f in forbidden)
                   or (_under(path, "/dev") and path not in DEVICE_SOURCES))
    visible = seen.get("visible", [])
    return [
        check("jail runs code", True),
        check("non-root outside uid", len(uid_map) == 3 and uid_map[1] == str(outside_uid) and uid_map[1] != "0",
              f"uid_map {uid_map}"),
        check("namespaces separate", len(seen.get("ns", [])) == len(_PROC_NS) and not shared,
              f"shared with the daemon: {shared}"),
        check("seccomp filter", seen.get("seccomp") == ["2"], f"Seccomp: {seen.get('seccomp')}"),
        check("no_new_privs", seen.get("no_new_privs") == ["1"], f"NoNewPrivs: {seen.get('no_new_privs')}"),
        check("network isolation", seen.get("iface") == ["lo"] and seen.get("routes") == ["0"],
              f"interfaces {seen.get('iface')}, routes {seen.get('routes')}"),
        check("host files hidden", not visible and not leaks, "; ".join(visible + leaks)),
    ]


async def run_canaries(store: SessionStore, log: Callable[[Check], object] | None = None) -> list[Check]:
    """Run the probes in a throwaway session; return every check (the caller decides)."""
    py = RECIPES["py"]
    settings = store.settings
    base = settings.limits
    policy = store.runner.policy
    profiles = sorted({r.profile for r in RECIPES.values()})
    # The static checks again, now with every path the settings name (state, cache, keys, venv).
    forbidden = settings_sources(settings)
    checks: list[Check] = []
    for profile in profiles:
        try:
            policy.check_profile(profile, settings.state_dir, forbidden=forbidden)
            checks.append(Check(f"{profile} profile: static policy check", True))
        except ConfigError as exc:
            checks.append(Check(f"{profile} profile: static policy check", False, str(exc)))
    # Paths that exist on every host and must not in any jail (/proc, /dev and /tmp do, as the
    # jail's own), plus the daemon's own.
    absent = tuple(p for p in FORBIDDEN_SOURCES + forbidden if p not in ("/proc", "/tmp"))
    try:
        s = store.create_session(CANARY_OWNER)
    except OSError as exc:
        # The tmpfs belongs to the session's uid (mode 0700): root reaches it only with
        # CAP_DAC_OVERRIDE, which a container may have dropped.
        return _report([*checks, Check("session storage", False, f"cannot create a session directory: {exc}")],
                       log)
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

        def run_limits(memory: int, pids: int) -> RunLimits:
            return RunLimits(
                wall_timeout_s=20.0, memory_max_bytes=memory, pids_max=pids, cpu_max_cores=base.cpu_max_cores,
                stream_keep_bytes=256 * 1024, stream_kill_bytes=1 * MiB, file_max_bytes=1 * MiB,
                open_files_max=base.open_files_max,
            )

        async def jail(code: str, args: list[str], memory: int, pids: int) -> RunResult:
            return await store.runner.run(
                profile=py.profile, program=py.argv(args), source_name=py.source_name, source=code.encode(),
                session_dir=s.path, outside_uid=s.uid, limits=run_limits(memory, pids), env=py.env,
            )

        async def shell(profile: str) -> RunResult | JailFailure:
            try:
                return await store.runner.run(
                    profile=profile, program=["/bin/sh", f"{SOURCE_DIR}/probe.sh", *absent], source_name="probe.sh",
                    source=_SHELL_PROBE.encode(), session_dir=s.path, outside_uid=s.uid,
                    limits=run_limits(base.memory_max_bytes, base.pids_max),
                )
            except JailFailure as exc:  # nsjail refused the profile (its log went to the daemon's)
                return exc

        async def probe_all(names: list[str]) -> dict[str, list[Check]]:
            before = _read("/proc/self/mountinfo")
            # Side by side: each probe is a few milliseconds of work; the jails' set-up dominates.
            results = await asyncio.gather(*(shell(p) for p in names))
            host = (before, _read("/proc/self/mountinfo"))
            return {
                name: [Check(f"{name} profile: jail runs code", False, f"nsjail could not start it: {result.reason or result.message}")]
                if isinstance(result, JailFailure)
                else _judge_profile(name, result, s.uid, FORBIDDEN_SOURCES + forbidden, host)
                for name, result in zip(names, results)
            }

        # The python probe first: when no jail can launch at all, that is the one thing to say.
        try:
            probe = await jail(_PROBE, [str(port)], base.memory_max_bytes, base.pids_max)
        except JailFailure as exc:
            # nsjail could not build the jail (a uid map, a mount, a namespace): its reason
            # names the missing layer.
            return _report([*checks, owned, Check("jail launches", False, exc.reason or exc.message)], log)
        checks += [owned, *_judge_probe(probe, s.uid)]
        judged = await probe_all(profiles)
        # A host mount that was dropped and recreated at the same place while a probe ran can
        # hand its (reused) device number to one of nsjail's fresh mounts and look like a leak;
        # a real leak is there every time. Probe such a profile once more and keep that answer.
        again = [p for p, cs in judged.items() if any(c.layer.endswith("host files hidden") and not c.ok for c in cs)]
        if again:
            judged.update(await probe_all(again))
        for profile in profiles:
            checks += judged[profile]
        forks = await jail(_FORKS, [], base.memory_max_bytes, 16)
        checks.append(Check("pids limit enforced", forks.status == "pids_limit" and forks.stdout.strip().isdigit()
                            and int(forks.stdout) < 16, f"status {forks.status}, forks {forks.stdout.strip()}"))
        mem = await jail(_MEMORY, [], 64 * MiB, base.pids_max)
        peak_ok = mem.memory_peak_bytes is None or mem.memory_peak_bytes <= 72 * MiB  # None: no memory.peak
        checks.append(Check("memory limit enforced", mem.status == "oom" and peak_ok,
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
