"""Runs one program in nsjail inside a daemon-owned cgroup and classifies the outcome.

Guarantees: output is read while the program runs and bounded in memory; nsjail's log goes
to its own pipe (it names host paths); the daemon's own timer kills the cgroup at the wall
limit; every process of the run is dead and reaped before `run` returns, also when the
calling task is cancelled (client gone, daemon stopping).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable

import msgspec

from . import workspace
from .capture import HeadTail
from .cgroups import CgroupLimits, CgroupManager, CgroupStats, RunCgroup
from .errors import JailFailure, Unavailable
from .executors import in_kill_pool
from .policy import JailRun, Policy

__all__ = ["RunLimits", "RunResult", "Runner", "classify", "launch_reason"]

log = logging.getLogger(__name__)
LOG_KEEP_BYTES = 64 * 1024
DRAIN_AFTER_EXIT_S = 2.0
SUPERVISOR_EXIT_S = 2.0
SRC_TMPFS_BYTES = 64 * 1024 * 1024  # sources in flight (code_max_bytes each, one per run slot)  # how long nsjail gets to exit once its jail is killed
# "[E][2026-01-01T00:00:00+0000][14] func():12 text": level W, E or F; the pid part is optional.
_NSJAIL_PROBLEM = re.compile(r"^\[[WEF]\]\[[^\]]*\](?:\[\d+\])? (.*)$")
_LAUNCH_FAILURE_MARKERS = ("Couldn't launch the child process", "Launching child process failed")


class RunLimits(msgspec.Struct, frozen=True, kw_only=True):
    wall_timeout_s: float
    memory_max_bytes: int
    pids_max: int
    cpu_max_cores: float
    stream_keep_bytes: int
    stream_kill_bytes: int
    file_max_bytes: int
    open_files_max: int


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    stdout: str
    stderr: str
    exit_code: int
    signal: str | None
    status: str  # ok | error | timeout | oom | pids_limit | output_limit
    message: str | None
    wall_time_ms: int
    cpu_time_ms: int
    memory_peak_bytes: int | None  # None where the kernel keeps no peak


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def classify(
    exit_code: int, stats: CgroupStats, limits: RunLimits, timed_out: bool, output_killed: bool
) -> tuple[str, str | None, str | None]:
    """(status, message, signal name) from what was measured, never from 137 alone."""
    sig_name = None
    if exit_code > 128:
        try:
            sig_name = signal.Signals(exit_code - 128).name
        except ValueError:
            sig_name = None
    if timed_out:
        return "timeout", f"killed: time limit {limits.wall_timeout_s:g} s exceeded", sig_name
    if output_killed:
        return (
            "output_limit",
            f"killed: output limit {_human_bytes(limits.stream_kill_bytes)} exceeded",
            sig_name,
        )
    if stats.oom_kills > 0:
        return "oom", f"killed: memory limit {_human_bytes(limits.memory_max_bytes)} exceeded", sig_name
    if stats.pids_limit_hits > 0 and exit_code != 0:
        return "pids_limit", f"process limit {limits.pids_max} reached", sig_name
    if exit_code == 0:
        return "ok", None, None
    return "error", None, sig_name


def launch_reason(log_text: str, max_chars: int = 1500) -> str:
    """nsjail's warning, error and fatal lines without their timestamps: what it could not do
    (write a uid map, mount /proc, ...), which names the missing layer."""
    lines = []
    for line in log_text.splitlines():
        match = _NSJAIL_PROBLEM.match(line)
        if match:
            lines.append(match.group(1).strip())
    return "; ".join(lines)[-max_chars:]


def _with_note(stderr: str, exit_code: int, sig_name: str | None, message: str | None) -> str:
    """LibreChat's tools show the model only stdout and stderr, never the exit status: a limit
    kill, a signal or a silent non-zero exit would look like success without this note."""
    if message:
        note = message
    elif sig_name:
        note = f"killed by {sig_name}"
    elif exit_code != 0 and not stderr.strip():
        note = f"exited with code {exit_code}"
    else:
        return stderr
    sep = "" if not stderr or stderr.endswith("\n") else "\n"
    return f"{stderr}{sep}[sandboxd] {note}\n"


async def _kill(cg: RunCgroup, spare: int | None = None) -> None:
    """Kill the run's processes off the event loop: a fork bomb re-spawning under the kill
    loop must not stall every other request."""
    await in_kill_pool(cg.kill_all, spare)


async def _until_released(cg: RunCgroup, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while cg.tasks_left() > 0:
        if time.monotonic() > end:
            log.warning("run cgroup still holds %d tasks after kill", cg.tasks_left())
            return
        await _kill(cg)
        await asyncio.sleep(0.002)


def _join_cgroup(procs_files: tuple[str, ...]) -> Callable[[], None]:
    payload = b"0"  # "0" moves the writing process

    def join() -> None:  # runs in the forked child, before exec of nsjail
        for path in procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)

    return join


class Runner:
    def __init__(self, policy: Policy, cgroups: CgroupManager, state_dir: str) -> None:
        self.policy = policy
        self.cgroups = cgroups
        self.src_root = os.path.join(state_dir, "src")
        os.makedirs(self.src_root, mode=0o711, exist_ok=True)
        self._seq = itertools.count(1)
        # Runs in flight: their cgroup and the pid of their nsjail supervisor.
        self._live: dict[int, tuple[RunCgroup, list[int]]] = {}
        # Set by kill_all: a run the daemon's stop ended gets no result of its own (its user
        # code did not fail), so the request answers 503 and the client may retry.
        self.stopping = False

    def clean_stale(self) -> None:
        """Replace what a crashed instance left with a fresh tmpfs for per-run source dirs.

        A tmpfs of its own, so a jail's /proc/self/mountinfo shows the source bind as a path
        inside that tmpfs rather than the host path of the daemon's state directory."""
        for point in workspace.mounted_under(self.src_root) + (
                [self.src_root] if os.path.ismount(self.src_root) else []):
            workspace.unmount(point)
        for entry in os.listdir(self.src_root):
            shutil.rmtree(os.path.join(self.src_root, entry), ignore_errors=True)
        workspace.mount_tmpfs(self.src_root, SRC_TMPFS_BYTES, 4096, 0, 0, mode=0o711)

    def close(self) -> None:
        workspace.unmount(self.src_root)

    def kill_all(self) -> None:
        """Daemon shutdown: end every run in flight (their tasks then reap and clean up)."""
        self.stopping = True
        for cg, supervisor in list(self._live.values()):
            cg.kill_all(spare=supervisor[0] if supervisor else None)

    async def run(
        self,
        *,
        profile: str,
        program: list[str],
        source_name: str,
        source: bytes,
        session_dir: str,
        outside_uid: int,
        limits: RunLimits,
        env: tuple[str, ...] = (),
        ro_binds: tuple[tuple[str, str], ...] = (),
    ) -> RunResult:
        seq = next(self._seq)
        run_name = f"run-{os.getpid()}-{seq}"
        src_dir = os.path.join(self.src_root, str(seq))
        os.mkdir(src_dir, 0o755)
        try:
            # Root-owned and read-only in the jail: the program cannot rewrite its own source.
            fd = os.open(os.path.join(src_dir, source_name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, source)
            finally:
                os.close(fd)
            cg = self.cgroups.create(
                run_name,
                CgroupLimits(
                    memory_max_bytes=limits.memory_max_bytes,
                    pids_max=limits.pids_max,
                    cpu_max_cores=limits.cpu_max_cores,
                ),
            )
            supervisor: list[int] = []
            self._live[seq] = (cg, supervisor)
            try:
                result = await self._run_in(cg, supervisor, profile, program, env, ro_binds, src_dir,
                                            session_dir, outside_uid, limits)
                if self.stopping:
                    raise Unavailable("The daemon stopped before the run finished; retry shortly")
                return result
            finally:
                del self._live[seq]
                await in_kill_pool(cg.remove)
        finally:
            shutil.rmtree(src_dir, ignore_errors=True)

    async def _run_in(
        self,
        cg: RunCgroup,
        supervisor: list[int],
        profile: str,
        program: list[str],
        env: tuple[str, ...],
        ro_binds: tuple[tuple[str, str], ...],
        src_dir: str,
        session_dir: str,
        outside_uid: int,
        limits: RunLimits,
    ) -> RunResult:
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        argv = self.policy.argv(
            JailRun(
                profile=profile,
                session_dir=session_dir,
                source_dir=src_dir,
                outside_uid=outside_uid,
                wall_timeout_s=limits.wall_timeout_s,
                file_max_bytes=limits.file_max_bytes,
                open_files_max=limits.open_files_max,
                log_fd=log_w,
                program=tuple(program),
                env=env,
                ro_binds=ro_binds,
            )
        )
        stdout, stderr = HeadTail(limits.stream_keep_bytes), HeadTail(limits.stream_keep_bytes)
        nsjail_log = HeadTail(LOG_KEEP_BYTES)
        output_killed = asyncio.Event()
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(log_w,),
                preexec_fn=_join_cgroup(cg.procs_files),
                start_new_session=True,
            )
        except BaseException:
            os.close(log_r)
            raise
        finally:
            os.close(log_w)
        supervisor.append(proc.pid)
        spare = proc.pid

        loop = asyncio.get_running_loop()
        log_reader = asyncio.StreamReader(limit=LOG_KEEP_BYTES)
        log_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(log_reader), os.fdopen(log_r, "rb", buffering=0)
        )

        async def pump(reader: asyncio.StreamReader | None, sink: HeadTail, kill_at: int | None) -> None:
            if reader is None:
                return
            while chunk := await reader.read(65536):
                sink.feed(chunk)
                if kill_at is not None and sink.total > kill_at and not output_killed.is_set():
                    output_killed.set()
                    await _kill(cg, spare)

        pumps = [
            asyncio.ensure_future(pump(proc.stdout, stdout, limits.stream_kill_bytes)),
            asyncio.ensure_future(pump(proc.stderr, stderr, limits.stream_kill_bytes)),
            asyncio.ensure_future(pump(log_reader, nsjail_log, None)),
        ]
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), timeout=limits.wall_timeout_s)
            except TimeoutError:
                timed_out = True
                await _kill(cg, spare)
                try:
                    await asyncio.wait_for(proc.wait(), timeout=SUPERVISOR_EXIT_S)
                except TimeoutError:  # nsjail itself stuck: the last resort
                    proc.kill()
                    await proc.wait()
            wall_s = time.monotonic() - started
            # The jail's pid 1 is gone, so its namespace is gone; sweep the cgroup anyway and
            # wait until every task of the run is reaped, not just dead.
            await _kill(cg)
            await _until_released(cg)
            _, pending = await asyncio.wait(pumps, timeout=DRAIN_AFTER_EXIT_S)
            for task in pending:
                task.cancel()
        finally:
            if proc.returncode is None:  # cancelled: kill, then reap before leaving
                await asyncio.shield(_kill(cg, spare))
                try:
                    await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=SUPERVISOR_EXIT_S)
                except TimeoutError:
                    proc.kill()
                    await asyncio.shield(proc.wait())
                await _until_released(cg)
            for task in pumps:
                task.cancel()
            log_transport.close()

        rc = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        # nsjail itself killed by a signal (the cgroup sweep) reads like the shell's 128+N.
        exit_code = 128 - rc if rc < 0 else rc
        log_text = nsjail_log.text()
        if exit_code == 255 and any(m in log_text for m in _LAUNCH_FAILURE_MARKERS):
            log.error("nsjail failed to launch: %s", log_text[-2000:])
            raise JailFailure("The sandbox could not start the program", reason=launch_reason(log_text))
        if exit_code == 137 and "time limit" in log_text.lower():
            timed_out = True
        stats = cg.stats()
        status, message, sig_name = classify(exit_code, stats, limits, timed_out, output_killed.is_set())
        return RunResult(
            stdout=stdout.text(),
            stderr=_with_note(stderr.text(), exit_code, sig_name, message),
            exit_code=exit_code,
            signal=sig_name,
            status=status,
            message=message,
            wall_time_ms=int(wall_s * 1000),
            cpu_time_ms=stats.cpu_time_ns // 1_000_000,
            memory_peak_bytes=stats.memory_peak_bytes,
        )
