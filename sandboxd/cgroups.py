"""Per-run cgroups owned by the daemon, on cgroup v1 (per-controller mounts) or v2 (unified).

Each run gets its own group with memory (no swap), pids and CPU limits. The nsjail process
joins it before exec (so every jailed process is counted from the first instruction); after
the run the daemon reads the counters (peak memory, OOM kills, pids-limit hits, CPU time),
kills whatever is left and removes the group.

v2 follows systemd's delegation rules: the daemon's own cgroup (from /proc/self/cgroup) is
delegated to it (Delegate=yes); the daemon moves itself into a `supervisor` leaf so the
"no internal processes" rule lets it enable controllers for its children, and creates the
per-run groups under a sibling named after `cgroup_name`.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Protocol

import msgspec

from .errors import ConfigError

__all__ = [
    "CgroupLimits",
    "CgroupStats",
    "RunCgroup",
    "CgroupManager",
    "detect_cgroups",
    "v1_limit_files",
    "v2_limit_files",
    "parse_keyed",
    "parse_self_cgroup_v2",
    "v2_is_delegated",
    "needs_delegated_scope",
]

CGROUP_ROOT = "/sys/fs/cgroup"
CPU_PERIOD_US = 100_000  # 100 ms: smoother than nsjail's own 1 s period
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")


class CgroupLimits(msgspec.Struct, frozen=True, kw_only=True):
    memory_max_bytes: int
    pids_max: int
    cpu_max_cores: float


class CgroupStats(msgspec.Struct, frozen=True, kw_only=True):
    memory_peak_bytes: int | None = None  # None: the kernel keeps no peak (v2 before 5.19)
    oom_kills: int = 0
    pids_limit_hits: int = 0
    cpu_time_ns: int = 0


def parse_keyed(text: str) -> dict[str, int]:
    """Parse `key value` lines (memory.events, pids.events, cpu.stat, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_self_cgroup_v2(text: str) -> str:
    """The unified-hierarchy path of a process from /proc/<pid>/cgroup (`0::/path`)."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    raise ConfigError("no cgroup v2 entry in /proc/self/cgroup")


def v2_is_delegated(path: str, self_cgroup: str) -> bool:
    """Whether the cgroup at `path` is ours to manage. systemd marks every cgroup it delegates
    (Delegate=yes on a service or scope) with the `trusted.delegate` xattr (`user.delegate`
    from v253). At "/" as seen from here, a container engine gave us a private cgroup
    namespace. Anything else belongs to systemd or to whoever started us: writing there (or
    moving its processes into a child) would corrupt their bookkeeping."""
    if self_cgroup == "/":
        return True
    for attr in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, attr) == b"1":
                return True
        except OSError:
            continue
    return False


def _own_v2_group(self_cgroup: str, root: str) -> str:
    """The delegated group this process manages: its own cgroup, or the parent when it sits in
    the `supervisor` leaf an earlier setup in this process moved it to (doctor sets up twice)."""
    parent = os.path.dirname(self_cgroup.rstrip("/")) or "/"
    if os.path.basename(self_cgroup.rstrip("/")) == "supervisor" and v2_is_delegated(
            os.path.normpath(os.path.join(root, parent.lstrip("/"))), parent):
        return parent
    return self_cgroup


def needs_delegated_scope(root: str = CGROUP_ROOT) -> bool:
    """True on cgroup v2 when this process's own cgroup was not delegated to it (a login
    shell, an installer's unit): one-off commands must then run from a delegated scope."""
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return False
    own = _own_v2_group(parse_self_cgroup_v2(Path("/proc/self/cgroup").read_text()), root)
    return not v2_is_delegated(os.path.normpath(os.path.join(root, own.lstrip("/"))), own)


def _cpu_quota_us(cores: float) -> int:
    return max(1000, int(cores * CPU_PERIOD_US))


def v1_limit_files(limits: CgroupLimits) -> list[tuple[str, str, str]]:
    """(controller, file, value) to write, in order. memsw equal to the memory limit = no swap."""
    mem = str(limits.memory_max_bytes)
    return [
        ("memory", "memory.limit_in_bytes", mem),
        ("memory", "memory.memsw.limit_in_bytes", mem),  # absent without swap accounting
        ("memory", "memory.swappiness", "0"),
        ("pids", "pids.max", str(limits.pids_max)),
        ("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
        ("cpu", "cpu.cfs_quota_us", str(_cpu_quota_us(limits.cpu_max_cores))),
    ]


def v2_limit_files(limits: CgroupLimits) -> list[tuple[str, str]]:
    return [
        ("memory.max", str(limits.memory_max_bytes)),
        ("memory.swap.max", "0"),
        ("pids.max", str(limits.pids_max)),
        ("cpu.max", f"{_cpu_quota_us(limits.cpu_max_cores)} {CPU_PERIOD_US}"),
    ]


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except OSError:
        return ""


def _read_int(path: str) -> int:
    text = _read(path).strip()
    return int(text) if text.isdigit() else 0


def _pids(procs_file: str) -> list[int]:
    return [int(p) for p in _read(procs_file).split() if p.isdigit()]


def _kill_loop(procs_file: str, deadline_s: float = 5.0, spare: int | None = None) -> None:
    """SIGKILL every process in the group until none is left (a fork bomb re-spawns).

    `spare` is the nsjail supervisor: it reaps the jail's pid 1 itself once that dies, whereas
    killing it first would orphan the jail's processes to the host's init to be reaped late."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pids = [p for p in _pids(procs_file) if p != spare]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def _rmdir_retry(path: str, attempts: int = 200) -> None:
    for _ in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.005)  # tasks killed but not yet reaped


class RunCgroup(Protocol):
    @property
    def procs_files(self) -> tuple[str, ...]: ...
    def stats(self) -> CgroupStats: ...
    def kill_all(self, spare: int | None = None) -> None: ...
    def remove(self) -> None: ...

    def tasks_left(self) -> int:
        """Tasks not yet released. A killed process leaves cgroup.procs at once but counts in
        pids.current until it is reaped, so 0 here means no zombie of the run is left either."""
        ...


class CgroupManager(Protocol):
    version: int

    def setup(self) -> None: ...
    def create(self, run_name: str, limits: CgroupLimits) -> RunCgroup: ...
    def teardown(self) -> None: ...
    def describe(self) -> str: ...


class _V1Run:
    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dirs

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(os.path.join(d, "cgroup.procs") for d in self.dirs.values())

    def stats(self) -> CgroupStats:
        mem, pids, cpuacct = self.dirs["memory"], self.dirs["pids"], self.dirs["cpuacct"]
        return CgroupStats(
            memory_peak_bytes=_read_int(os.path.join(mem, "memory.max_usage_in_bytes")),
            oom_kills=parse_keyed(_read(os.path.join(mem, "memory.oom_control"))).get("oom_kill", 0),
            pids_limit_hits=parse_keyed(_read(os.path.join(pids, "pids.events"))).get("max", 0),
            cpu_time_ns=_read_int(os.path.join(cpuacct, "cpuacct.usage")),
        )

    def kill_all(self, spare: int | None = None) -> None:
        _kill_loop(os.path.join(self.dirs["pids"], "cgroup.procs"), spare=spare)

    def tasks_left(self) -> int:
        return _read_int(os.path.join(self.dirs["pids"], "pids.current"))

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs.values():
            _rmdir_retry(d)


class CgroupV1:
    version = 1

    def __init__(self, name: str, root: str = CGROUP_ROOT) -> None:
        self.parents = {c: os.path.join(root, c, name) for c in V1_CONTROLLERS}

    def describe(self) -> str:
        return "cgroup v1: " + ", ".join(self.parents.values())

    def setup(self) -> None:
        for ctrl, parent in self.parents.items():
            if not os.path.isdir(os.path.dirname(parent)):
                raise ConfigError(f"cgroup v1 controller {ctrl} is not mounted at {os.path.dirname(parent)}")
            try:
                os.makedirs(parent, mode=0o755, exist_ok=True)
            except OSError as exc:
                # A container's cgroups are read-only unless a group is bound writable.
                raise ConfigError(f"cgroup v1 controller {ctrl}: cannot create {parent}: {exc.strerror}") from exc
        if os.path.exists(os.path.join(self.parents["memory"], "memory.use_hierarchy")):
            try:
                _write(os.path.join(self.parents["memory"], "memory.use_hierarchy"), "1")
            except OSError:
                pass  # already set, or fixed by the parent
        self._remove_stale()

    def _remove_stale(self) -> None:
        """Groups left by a crashed earlier instance: kill what they hold, remove them."""
        for parent in self.parents.values():
            if not os.path.isdir(parent):
                continue  # setup never got this far
            for entry in sorted(os.listdir(parent)):
                child = os.path.join(parent, entry)
                if entry.startswith("run-") and os.path.isdir(child):
                    _kill_loop(os.path.join(child, "cgroup.procs"))
                    _rmdir_retry(child)

    def create(self, run_name: str, limits: CgroupLimits) -> _V1Run:
        dirs = {c: os.path.join(p, run_name) for c, p in self.parents.items()}
        for d in dirs.values():
            os.mkdir(d, 0o755)
        run = _V1Run(dirs)
        try:
            for ctrl, fname, value in v1_limit_files(limits):
                path = os.path.join(dirs[ctrl], fname)
                if fname == "memory.memsw.limit_in_bytes" and not os.path.exists(path):
                    continue
                _write(path, value)
        except BaseException:
            run.remove()
            raise
        return run

    def teardown(self) -> None:
        self._remove_stale()
        for parent in self.parents.values():
            try:
                os.rmdir(parent)
            except OSError:
                pass


class _V2Run:
    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def procs_files(self) -> tuple[str, ...]:
        return (os.path.join(self.path, "cgroup.procs"),)

    def stats(self) -> CgroupStats:
        # Kernels before 5.19 have no memory.peak; memory.current after the run is no peak.
        peak_file = os.path.join(self.path, "memory.peak")
        peak = _read_int(peak_file) if os.path.exists(peak_file) else None
        cpu = parse_keyed(_read(os.path.join(self.path, "cpu.stat")))
        return CgroupStats(
            memory_peak_bytes=peak,
            oom_kills=parse_keyed(_read(os.path.join(self.path, "memory.events"))).get("oom_kill", 0),
            pids_limit_hits=parse_keyed(_read(os.path.join(self.path, "pids.events"))).get("max", 0),
            cpu_time_ns=cpu.get("usage_usec", 0) * 1000,
        )

    def kill_all(self, spare: int | None = None) -> None:
        kill_file = os.path.join(self.path, "cgroup.kill")
        if spare is None and os.path.exists(kill_file):
            try:
                _write(kill_file, "1")
            except OSError:
                pass
        _kill_loop(os.path.join(self.path, "cgroup.procs"), spare=spare)

    def tasks_left(self) -> int:
        return _read_int(os.path.join(self.path, "pids.current"))

    def remove(self) -> None:
        self.kill_all()
        _rmdir_retry(self.path)


class CgroupV2:
    version = 2

    def __init__(self, name: str, root: str = CGROUP_ROOT, self_cgroup: str | None = None) -> None:
        if self_cgroup is None:
            self_cgroup = parse_self_cgroup_v2(Path("/proc/self/cgroup").read_text())
        self.root = root
        self_cgroup = _own_v2_group(self_cgroup, root)
        self.self_cgroup = self_cgroup
        self.base = os.path.normpath(os.path.join(root, self_cgroup.lstrip("/")))
        self.jails = os.path.join(self.base, name)

    def describe(self) -> str:
        return f"cgroup v2: {self.jails}"

    def setup(self) -> None:
        # Checked before anything is written: setup moves every process of this group.
        if not v2_is_delegated(self.base, self.self_cgroup):
            raise ConfigError(
                f"cgroup {self.self_cgroup} was not delegated to sandboxd: run it as the shipped "
                "systemd unit (Delegate=yes), or under `systemd-run --scope -p Delegate=yes`"
            )
        want = set(V2_CONTROLLERS)
        available = set(_read(os.path.join(self.base, "cgroup.controllers")).split())
        if not want <= available:
            raise ConfigError(
                f"cgroup v2 controllers {sorted(want - available)} are not delegated to {self.base} "
                "(run under systemd with Delegate=yes)"
            )
        # "No internal processes": leave the delegated group before enabling controllers. Also
        # at "/" as seen from here: inside a private cgroup namespace (a container) that root is
        # an ordinary group on the host, bound by the same rule.
        procs = _pids(os.path.join(self.base, "cgroup.procs"))
        if procs:
            supervisor = os.path.join(self.base, "supervisor")
            os.makedirs(supervisor, exist_ok=True)
            for pid in procs:
                try:
                    _write(os.path.join(supervisor, "cgroup.procs"), str(pid))
                except (ProcessLookupError, OSError):
                    pass  # gone, or a kernel thread of the real root: both may stay
        enable = " ".join("+" + c for c in V2_CONTROLLERS)
        _write(os.path.join(self.base, "cgroup.subtree_control"), enable)
        os.makedirs(self.jails, exist_ok=True)
        _write(os.path.join(self.jails, "cgroup.subtree_control"), enable)
        self._remove_stale()

    def _remove_stale(self) -> None:
        if not os.path.isdir(self.jails):
            return
        for entry in sorted(os.listdir(self.jails)):
            child = os.path.join(self.jails, entry)
            if entry.startswith("run-") and os.path.isdir(child):
                _V2Run(child).remove()

    def create(self, run_name: str, limits: CgroupLimits) -> _V2Run:
        path = os.path.join(self.jails, run_name)
        os.mkdir(path, 0o755)
        run = _V2Run(path)
        try:
            for fname, value in v2_limit_files(limits):
                target = os.path.join(path, fname)
                if fname == "memory.swap.max" and not os.path.exists(target):
                    continue  # kernel built without swap accounting: there is no swap to use
                _write(target, value)
        except BaseException:
            run.remove()
            raise
        return run

    def teardown(self) -> None:
        self._remove_stale()
        try:
            os.rmdir(self.jails)
        except OSError:
            pass


def detect_cgroups(name: str, root: str = CGROUP_ROOT) -> CgroupManager:
    """v2 when the unified hierarchy is mounted at the root, v1 when per-controller mounts are."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return CgroupV2(name, root)
    if all(os.path.isdir(os.path.join(root, c)) for c in V1_CONTROLLERS):
        return CgroupV1(name, root)
    raise ConfigError(
        f"no usable cgroups at {root}: need cgroup v2, or v1 with {', '.join(V1_CONTROLLERS)} mounted"
    )
