"""Sessions and files: the nanoid maps, per-session tmpfs storage, TTL and LRU eviction,
and the /exec flow (copy inputs in, run, diff the directory, register outputs).

A session is one tmpfs, owned by one outside uid that no other live session uses. A file ID
names one immutable version of one file: when the bytes behind a name change, the old ID is
retired (404, which LibreChat recovers from by re-uploading) rather than pointing at new bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import datetime as dt
import logging
import mimetypes
import os
import time

import msgspec
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from . import workspace
from .admission import Admission
from .errors import BadRequest, InputsUnavailable, NotFound, PayloadTooLarge, Unavailable
from .ids import is_valid_id, new_id, redact
from .compilecache import CompileCache
from .diff import Diff, Probe, diff
from .executors import in_file_pool, in_kill_pool
from .languages import BIN_DIR, Recipe, resolve
from .metrics import Metrics
from .runner import Runner, RunLimits, RunResult
from .schemas import ExecReply, ExecRequest, FileRef, ObjectInfo, OutFile
from .settings import Settings
from .workspace import Sig

__all__ = ["StoredFile", "Session", "SessionStore"]

log = logging.getLogger(__name__)
WALK_MAX_ENTRIES = 20000
ARGS_MAX = 256
ARG_MAX_BYTES = 64 * 1024


def content_type_of(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def iso_utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(eq=False)
class StoredFile:
    id: str
    session: Session
    name: str
    parts: tuple[str, ...]
    sig: Sig
    modified_at: float  # epoch seconds, when this version was registered

    @property
    def size(self) -> int:
        return self.sig.size

    @property
    def content_type(self) -> str:
        return content_type_of(self.name)

    @property
    def etag(self) -> str:
        return f'"{self.sig.ino:x}-{self.sig.size:x}-{self.sig.ctime_ns:x}"'

    def info(self) -> ObjectInfo:
        return ObjectInfo(
            name=f"{self.session.id}/{self.id}",
            original_filename=self.name,
            size=self.size,
            lastModified=iso_utc(self.modified_at),
            etag=self.etag,
            contentType=self.content_type,
        )


class Known(NamedTuple):
    """A name in a session's directory and the object version it holds."""

    file_id: str
    storage_session_id: str
    sig: Sig


@dataclass(eq=False)
class Session:
    id: str
    owner: str
    uid: int
    path: str
    fd: int
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    known: dict[str, Known] = field(default_factory=dict)
    files: dict[str, StoredFile] = field(default_factory=dict)  # own objects by file id
    busy: int = 0  # pins: requests that use the session; a pinned session is never evicted or expired
    readers: int = 0  # downloads streaming from it; a run waits for them (see SessionStore.reading)
    no_readers: asyncio.Event = field(default_factory=asyncio.Event)
    usage_bytes: int = 0
    closed: bool = False

    def __post_init__(self) -> None:
        self.no_readers.set()


def _unmount_and_remove(path: str) -> None:
    workspace.unmount(path)
    os.rmdir(path)


@contextlib.contextmanager
def _pinned(s: Session) -> Iterator[None]:
    s.busy += 1
    try:
        yield
    finally:
        s.busy -= 1


class SessionStore:
    def __init__(self, settings: Settings, runner: Runner, cache: CompileCache) -> None:
        self.settings = settings
        self.runner = runner
        self.cache = cache
        self.sessions: dict[str, Session] = {}
        self.files: dict[str, StoredFile] = {}
        self.mount_root = os.path.join(settings.state_dir, "sessions")
        os.makedirs(self.mount_root, mode=0o711, exist_ok=True)
        # Private output tmpfs of compile steps (never a session, never bound with user files).
        self.build_root = os.path.join(settings.state_dir, "build")
        os.makedirs(self.build_root, mode=0o711, exist_ok=True)
        self._build_seq = 0
        self._free_uids: list[int] = []
        self._next_uid = settings.uid_base
        lim = settings.limits
        self.metrics = Metrics()
        self.admission = Admission(
            settings.max_concurrent_runs, settings.queue_max, settings.queue_wait_s,
            retry_after_s=min(lim.wall_timeout_s, 30.0), on_wait=self.metrics.queue_wait.observe,
        )
        self.metrics.watch(sessions=lambda: len(self.sessions), session_bytes=self.total_usage,
                           runs_active=lambda: self.admission.running,
                           runs_queued=lambda: self.admission.waiting)
        self.closing = False
        self._mounting = 0  # sessions being mounted in a thread: they count against sessions_max

    # ---- lifecycle -------------------------------------------------------------------------

    def clean_stale(self) -> None:
        """Unmount session and build tmpfs left under our roots by a crashed instance."""
        for root in (self.mount_root, self.build_root):
            for point in workspace.mounted_under(root):
                workspace.unmount(point)
            for entry in os.listdir(root):
                try:
                    os.rmdir(os.path.join(root, entry))
                except OSError:
                    log.warning("leftover entry in %s: %s", root, entry)

    async def close(self) -> None:
        self.closing = True
        await in_kill_pool(self.runner.kill_all)
        for s in list(self.sessions.values()):
            async with s.lock:
                await self.drop(s)

    # ---- sessions and uids -----------------------------------------------------------------

    def _alloc_uid(self) -> int:
        if self._free_uids:
            return self._free_uids.pop()
        if self._next_uid >= self.settings.uid_base + self.settings.uid_count:
            raise Unavailable("No free sandbox uid; too many live sessions")
        uid = self._next_uid
        self._next_uid += 1
        return uid

    def _mount(self, uid: int) -> tuple[str, int]:
        """A fresh tmpfs owned by uid and an fd of its root (blocking: mount and mkdir)."""
        path = os.path.join(self.mount_root, str(uid))
        try:
            os.mkdir(path, 0o700)
            st = self.settings.storage
            workspace.mount_tmpfs(path, st.session_max_bytes, st.session_max_inodes, uid, uid)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except BaseException:
            workspace.unmount(path)
            with contextlib.suppress(OSError):
                os.rmdir(path)
            raise
        return path, fd

    def _add(self, owner: str, uid: int, path: str, fd: int) -> Session:
        now = time.time()
        sid = new_id()
        s = Session(id=sid, owner=owner, uid=uid, path=path, fd=fd, last_used=now)
        self.sessions[sid] = s
        log.info("session %s created (uid %d)", redact(sid), uid)
        return s

    def create_session(self, owner: str) -> Session:
        """Start-up use only (the canaries): mounts on the calling thread and never evicts.
        Requests use `new_session`."""
        if self.closing:
            raise Unavailable("The daemon is shutting down")
        if len(self.sessions) + self._mounting >= self.settings.storage.sessions_max:
            raise Unavailable("Session storage is full")
        uid = self._alloc_uid()
        try:
            path, fd = self._mount(uid)
        except BaseException:
            self._free_uids.append(uid)
            raise
        return self._add(owner, uid, path, fd)

    async def new_session(self, owner: str) -> Session:
        if self.closing:
            raise Unavailable("The daemon is shutting down")
        if len(self.sessions) + self._mounting >= self.settings.storage.sessions_max:
            await self._evict(need_sessions=1, need_bytes=0)
        uid = self._alloc_uid()
        self._mounting += 1
        try:
            path, fd = await in_file_pool(self._mount, uid)
        except BaseException:
            self._free_uids.append(uid)
            raise
        finally:
            self._mounting -= 1
        return self._add(owner, uid, path, fd)

    def _forget(self, s: Session) -> int:
        """Registry part of a drop (on the loop): the session and its files are unknown from
        now on, and its fd number is taken away so no later use can reach a reused number."""
        s.closed = True
        self.sessions.pop(s.id, None)
        for fid in s.files:
            self.files.pop(fid, None)
        fd, s.fd = s.fd, -1
        return fd

    @staticmethod
    def _release(fd: int, path: str) -> None:
        """Storage part of a drop (blocking: close, unmount, rmdir)."""
        os.close(fd)
        workspace.unmount(path)
        try:
            os.rmdir(path)
        except OSError:
            log.warning("could not remove a session mount point")

    def _released(self, s: Session, exc: BaseException | None) -> None:
        if exc is not None:
            # Its tmpfs may still be mounted and owned by that uid: never give the uid out again.
            log.warning("session %s: storage not released (%s); its uid is retired", redact(s.id), exc)
            return
        self._free_uids.append(s.uid)
        log.info("session %s removed", redact(s.id))

    def drop_session(self, s: Session) -> None:
        """Start-up and tests only (blocking); requests, sweeps and evictions use `drop`."""
        if s.closed:
            return
        fd = self._forget(s)
        try:
            self._release(fd, s.path)
        except OSError as exc:
            self._released(s, exc)
            return
        self._released(s, None)

    async def drop(self, s: Session) -> None:
        if s.closed:
            return
        fd = self._forget(s)
        try:
            await asyncio.shield(in_file_pool(self._release, fd, s.path))
        except OSError as exc:
            self._released(s, exc)
            return
        self._released(s, None)

    async def _evict(self, need_sessions: int, need_bytes: int, keep: Session | None = None) -> None:
        """Least-recently-used idle sessions go first."""
        limit = self.settings.storage.sessions_max
        for s in sorted(self.sessions.values(), key=lambda x: x.last_used):
            over_count = len(self.sessions) + self._mounting + need_sessions > limit
            over_bytes = self.total_usage() + need_bytes > self.settings.storage.storage_max_bytes
            if not (over_count or over_bytes):
                return
            if s is keep or s.busy or s.lock.locked() or s.closed:
                continue
            log.info("evicting session %s (storage pressure)", redact(s.id))
            self.metrics.evicted("lru_sessions" if over_count else "lru_bytes")
            await self.drop(s)
        if len(self.sessions) + self._mounting + need_sessions > limit:
            raise Unavailable("Session storage is full")

    def total_usage(self) -> int:
        return sum(s.usage_bytes for s in self.sessions.values())

    async def sweep(self) -> None:
        """Expire idle sessions past their TTL, then enforce the storage budget."""
        cutoff = time.time() - self.settings.storage.session_ttl_s
        for s in list(self.sessions.values()):
            if s.last_used < cutoff and not s.busy and not s.lock.locked() and not s.closed:
                self.metrics.evicted("ttl")
                await self.drop(s)
        await self._evict(need_sessions=0, need_bytes=0)

    def get_session(self, sid: str, owner: str) -> Session:
        s = self.sessions.get(sid) if is_valid_id(sid) else None
        if s is None or s.owner != owner:
            raise NotFound()
        return s

    def get_file(self, sid: str, fid: str, owner: str) -> StoredFile:
        f = self.files.get(fid) if is_valid_id(fid) else None
        if f is None or f.session.id != sid or f.session.owner != owner:
            raise NotFound()
        return f

    def _register(self, s: Session, name: str, sig: Sig) -> StoredFile:
        old = s.known.get(name)
        if old is not None and old.storage_session_id == s.id:
            self._retire(s, old.file_id)
        f = StoredFile(id=new_id(), session=s, name=name, parts=tuple(name.split("/")), sig=sig,
                       modified_at=time.time())
        s.files[f.id] = f
        self.files[f.id] = f
        s.known[name] = Known(f.id, s.id, sig)
        return f

    def _retire(self, s: Session, fid: str) -> None:
        s.files.pop(fid, None)
        self.files.pop(fid, None)

    def _touch(self, s: Session) -> None:
        s.last_used = time.time()
        s.usage_bytes = workspace.usage_bytes(s.path)

    # ---- uploads and deletes ---------------------------------------------------------------

    async def new_upload_session(self, owner: str) -> Session:
        s = await self.new_session(owner)
        s.busy += 1
        return s

    async def end_upload(self, s: Session, failed: bool = False) -> None:
        s.busy -= 1
        if failed or not s.files:
            await self.drop(s)  # nothing stored: don't keep an empty mount
            return
        self._touch(s)
        if self.total_usage() > self.settings.storage.storage_max_bytes:
            await self._evict(0, 0, keep=s)

    def open_upload(self, s: Session, name: str) -> tuple[int, tuple[str, ...]]:
        parts = workspace.validate_name(name)
        return workspace.create_file(s.fd, parts, s.uid), parts

    def finish_upload(self, s: Session, fd: int, parts: tuple[str, ...]) -> StoredFile:
        st = os.fstat(fd)
        os.close(fd)
        return self._register(s, "/".join(parts), Sig.of(st))

    def abort_upload(self, s: Session, fd: int, parts: tuple[str, ...]) -> None:
        os.close(fd)
        workspace.unlink_name(s.fd, parts)

    async def delete_file(self, sid: str, fid: str, owner: str) -> None:
        f = self.get_file(sid, fid, owner)
        s = f.session
        async with s.lock:
            if self.files.get(fid) is not f:
                raise NotFound()
            known = s.known.get(f.name)
            if known is not None and known.file_id == fid:
                await in_file_pool(workspace.unlink_name, s.fd, f.parts)
                del s.known[f.name]
            self._retire(s, fid)
            self._touch(s)

    # ---- /exec -----------------------------------------------------------------------------

    def _limits(self, recipe: Recipe, timeout_ms: float | None) -> RunLimits:
        """The server's limits, adjusted for the language, lowered (never raised) by the request."""
        lim = self.settings.limits
        wall = lim.wall_timeout_s
        if timeout_ms is not None:
            wall = min(wall, max(0.1, timeout_ms / 1000.0))
        return RunLimits(
            # A separate compile step has its own budget (see _compile); otherwise the
            # compile time is part of the one run.
            wall_timeout_s=wall + (0.0 if recipe.compile else recipe.compile_time_s),
            memory_max_bytes=max(lim.memory_max_bytes, recipe.memory_max_bytes or 0),
            pids_max=max(lim.pids_max, recipe.pids_max or 0),
            cpu_max_cores=lim.cpu_max_cores,
            stream_keep_bytes=lim.stream_keep_bytes,
            stream_kill_bytes=lim.stream_kill_bytes,
            file_max_bytes=lim.file_max_bytes,
            open_files_max=lim.open_files_max,
        )

    def _resolve_inputs(self, refs: list[FileRef], owner: str) -> list[tuple[StoredFile, tuple[str, ...]]]:
        resolved = []
        for ref in refs:
            sid = ref.storage_session_id or ref.session_id or ""
            try:
                f = self.get_file(sid, ref.id, owner)
            except NotFound:
                raise InputsUnavailable("One or more input files are unavailable") from None
            name = ref.name if ref.name else f.name
            resolved.append((f, workspace.validate_name(name)))
        return resolved

    async def execute(self, req: ExecRequest, owner: str) -> ExecReply:
        recipe = resolve(req.lang)
        code = req.code.encode("utf-8", errors="surrogatepass")
        if len(code) > self.settings.storage.code_max_bytes:
            raise BadRequest(f"code exceeds {self.settings.storage.code_max_bytes} bytes")
        args = req.args or []
        if len(args) > ARGS_MAX or any(len(a.encode()) > ARG_MAX_BYTES or "\0" in a for a in args):
            raise BadRequest(f"args: at most {ARGS_MAX} strings of at most {ARG_MAX_BYTES} bytes, no NUL")
        if "\0" in req.code:
            raise BadRequest("code contains a NUL byte")
        if self.closing:  # draining for a stop: runs in flight finish, new ones are refused
            raise Unavailable("The daemon is shutting down")
        inputs = self._resolve_inputs(req.files or [], owner)
        limits = self._limits(recipe, req.timeout)
        s = None
        if req.session_id:
            s = self.sessions.get(req.session_id) if is_valid_id(req.session_id) else None
            if s is not None and s.owner != owner:
                s = None
        with contextlib.ExitStack() as pins:
            # Pin every session this request uses before its first wait (a new session, its
            # lock, a run slot): a pinned session is never evicted or expired, so an input's
            # session and its fd outlive the wait.
            for used in {f.session for f, _ in inputs} | ({s} if s is not None else set()):
                pins.enter_context(_pinned(used))
            fresh = s is None
            if s is None:
                s = await self.new_session(owner)
                pins.enter_context(_pinned(s))
            try:
                result, files, deleted = await self._execute_in(s, recipe, code, args, limits, inputs)
            except BaseException:
                if fresh:  # nobody learnt this session's ID: don't keep its mount, uid and slot
                    await asyncio.shield(self.drop(s))
                raise
        if self.total_usage() > self.settings.storage.storage_max_bytes:
            await self._evict(0, 0, keep=s)
        return self._reply(s, result, files, deleted)

    async def _execute_in(
        self, s: Session, recipe: Recipe, code: bytes, args: list[str], limits: RunLimits,
        inputs: list[tuple[StoredFile, tuple[str, ...]]],
    ) -> tuple[RunResult, list[OutFile], list[str]]:
        # The session lock first, the run slot second: requests queued on one session's lock
        # hold no slot, so one client cannot starve every other tenant.
        async with s.lock:
            if s.closed:
                raise NotFound()
            await s.no_readers.wait()  # downloads in flight finish before the jail may write
            for f, _ in inputs:
                if f.session.closed or self.files.get(f.id) is not f:
                    raise InputsUnavailable("One or more input files are unavailable")
            async with self.admission.slot():
                if self.closing:
                    raise Unavailable("The daemon is shutting down")
                placed: list[tuple[str, Known | None]] = []
                try:
                    await in_file_pool(self._place_inputs, s.fd, s.uid, dict(s.known), inputs, placed)
                finally:
                    self._apply_placement(s, placed)  # registry changes on the loop only
                try:
                    if recipe.compile:
                        result = await self._compile_and_run(s, recipe, code, args, limits)
                    else:
                        result = await self._run_step(s, recipe, code, args, limits)
                except BaseException as exc:
                    self.metrics.run_aborted(recipe.lang, exc)
                    raise
                self.metrics.run_finished(recipe.lang, result.status, result.wall_time_ms / 1000)
                known = {name: k.sig for name, k in s.known.items()}
                found, probed = await in_file_pool(self._look, s.fd, known)
                files, deleted = self._apply_diff(s, diff(known, found, probed))
                self._touch(s)
        return result, files, deleted

    async def _run_step(
        self, s: Session, recipe: Recipe, code: bytes, args: list[str], limits: RunLimits,
        ro_binds: tuple[tuple[str, str], ...] = (),
    ) -> RunResult:
        """The user's program, in a jail whose /mnt/data is the session."""
        return await self.runner.run(
            profile=recipe.profile,
            program=recipe.argv(args, limits.memory_max_bytes),
            source_name=recipe.source_name,
            source=code,
            session_dir=s.path,
            outside_uid=s.uid,
            limits=limits,
            env=recipe.env,
            ro_binds=ro_binds,
        )

    async def _compile_and_run(
        self, s: Session, recipe: Recipe, code: bytes, args: list[str], limits: RunLimits
    ) -> RunResult:
        """Compile once per (source, toolchain) into the cache, then run the cached output."""
        entry = self.cache.entry_path(recipe, code)
        built: RunResult | None = None
        self.cache.hold(entry)
        try:
            async with self.cache.lock(entry):
                if not self.cache.lookup(entry):
                    built = await self._compile(s, recipe, code, limits, entry)
                    if built.exit_code != 0:
                        return built
            ran = await self._run_step(s, recipe, code, args, limits, ro_binds=((entry, BIN_DIR),))
        finally:
            self.cache.release(entry)
        if built is None:
            return ran
        return msgspec.structs.replace(
            ran,
            stdout=built.stdout + ran.stdout,
            stderr=built.stderr + ran.stderr,  # compiler warnings first
            wall_time_ms=built.wall_time_ms + ran.wall_time_ms,
            cpu_time_ms=built.cpu_time_ms + ran.cpu_time_ms,
            memory_peak_bytes=max((p for p in (built.memory_peak_bytes, ran.memory_peak_bytes) if p is not None),
                                  default=None),
        )

    async def _compile(self, s: Session, recipe: Recipe, code: bytes, limits: RunLimits, entry: str) -> RunResult:
        """The compile step: its own jail, whose /mnt/data is a fresh private tmpfs; a success
        is sealed into the cache by the daemon from that tmpfs."""
        self._build_seq += 1
        out = os.path.join(self.build_root, str(self._build_seq))
        await in_file_pool(os.mkdir, out, 0o700)
        st = self.settings.storage
        try:
            await in_file_pool(workspace.mount_tmpfs, out, min(st.session_max_bytes, 512 * 1024 * 1024), 4096,
                               s.uid, s.uid)
            built = await self.runner.run(
                profile=recipe.profile,
                program=recipe.compile_argv(limits.memory_max_bytes),
                source_name=recipe.source_name,
                source=code,
                session_dir=out,
                outside_uid=s.uid,
                limits=msgspec.structs.replace(limits, wall_timeout_s=recipe.compile_time_s),
                env=recipe.env,
            )
            if built.exit_code == 0:
                fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    sealed = await self.cache.insert(entry, fd, self.settings.limits.file_max_bytes)
                finally:
                    os.close(fd)
                if not sealed:
                    return msgspec.structs.replace(
                        built, exit_code=1, status="error", message="the compiler produced no output",
                        stderr=built.stderr + "[sandboxd] the compiler produced no output\n")
            return built
        finally:
            await in_file_pool(_unmount_and_remove, out)

    def _place_inputs(
        self, root_fd: int, uid: int, known: dict[str, Known],
        inputs: list[tuple[StoredFile, tuple[str, ...]]], placed: list[tuple[str, Known | None]],
    ) -> None:
        """Copy each input version into the run's session, unless that exact version is there
        (blocking, in a thread). It changes no registry state: what it placed goes into
        `placed`, which the caller applies on the loop, also after a failure part-way."""
        cap = self.settings.limits.file_max_bytes
        for f, parts in inputs:
            name = "/".join(parts)
            have = known.get(name)
            if have is not None and have.file_id == f.id:
                continue
            try:
                # f.session is pinned by the request; a daemon stop may still have closed it,
                # and then its fd is -1 (EBADF, never a reused number): NotFound.
                src, src_st = workspace.open_regular(f.session.fd, f.parts, cap)
            except NotFound:
                raise InputsUnavailable("One or more input files are unavailable") from None
            try:
                if Sig.of(src_st) != f.sig:
                    raise InputsUnavailable("One or more input files are unavailable")
                dst = workspace.create_file(root_fd, parts, uid, replace=True)
                try:
                    workspace.copy_into(src, dst, src_st.st_size)
                    dst_sig = Sig.of(os.fstat(dst))
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise PayloadTooLarge("the input files do not fit in the session's storage") from None
                    raise
                finally:
                    os.close(dst)
                if Sig.of(os.fstat(src)) != f.sig:  # changed while we copied
                    placed.append((name, None))  # the name holds neither the old nor this version
                    raise InputsUnavailable("One or more input files are unavailable")
                placed.append((name, Known(f.id, f.session.id, dst_sig)))
            finally:
                os.close(src)

    def _apply_placement(self, s: Session, placed: list[tuple[str, Known | None]]) -> None:
        for name, entry in placed:
            old = s.known.pop(name, None)
            if old is not None and old.storage_session_id == s.id:
                self._retire(s, old.file_id)
            if entry is not None:
                s.known[name] = entry

    def _look(self, root_fd: int, known: dict[str, Sig]) -> tuple[dict[str, Sig], dict[str, Probe]]:
        """The session after a run: a bounded walk for new files, and each known name the walk
        did not list looked up on its own (a walk skips hidden names and stops at its budget)."""
        cap = self.settings.limits.file_max_bytes
        found = workspace.walk(root_fd, WALK_MAX_ENTRIES, cap)
        probed: dict[str, Probe] = {
            name: workspace.probe(root_fd, tuple(name.split("/")), cap) for name in known if name not in found
        }
        return found, probed

    def _apply_diff(self, s: Session, d: Diff) -> tuple[list[OutFile], list[str]]:
        cap = self.settings.limits.output_files_max
        new: list[OutFile] = []
        kept: list[OutFile] = []
        for name in d.deleted + d.lost:
            gone = s.known.pop(name)
            if gone.storage_session_id == s.id:
                self._retire(s, gone.file_id)
        for name in d.unchanged:
            known = s.known[name]
            kept.append(OutFile(id=known.file_id, name=name, storage_session_id=known.storage_session_id,
                                inherited=True))
        for name, sig in d.changed.items():
            if len(new) < cap:
                f = self._register(s, name, sig)
                new.append(OutFile(id=f.id, name=name, storage_session_id=s.id,
                                   url=f"/api/files/code/download/{s.id}/{f.id}", type=f.content_type))
            elif (old := s.known.pop(name, None)) is not None and old.storage_session_id == s.id:
                # Changed but over the output cap: the old version is gone, don't serve it.
                self._retire(s, old.file_id)
        return (new + kept)[:cap], d.deleted  # new files first: they are what the client lacks

    def _reply(self, s: Session, r: RunResult, files: list[OutFile], deleted: list[str]) -> ExecReply:
        return ExecReply(
            session_id=s.id, stdout=r.stdout, stderr=r.stderr, exit_code=r.exit_code, code=r.exit_code,
            signal=r.signal, status=r.status, message=r.message, wall_time_ms=r.wall_time_ms,
            cpu_time_ms=r.cpu_time_ms, memory_peak_bytes=r.memory_peak_bytes, files=files,
            deleted_files=deleted,
        )

    # ---- reads ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def reading(self, sid: str, fid: str, owner: str) -> AsyncIterator[tuple[StoredFile, int]]:
        """A download: the file and an fd of exactly the version its ID names (NotFound if the
        bytes changed since). The session stays pinned while the caller streams (no eviction,
        no expiry), and a run in it waits for the download to end, as the download waited for
        a run in progress: a download never reads a file a jail is writing."""
        f = self.get_file(sid, fid, owner)
        s = f.session
        with _pinned(s):
            async with s.lock:  # a run in progress ends first
                if s.closed or self.files.get(fid) is not f:
                    raise NotFound()
                s.readers += 1
                s.no_readers.clear()
            try:
                fd = await in_file_pool(self._open_version, f)
                try:
                    s.last_used = time.time()
                    yield f, fd
                finally:
                    os.close(fd)
            finally:
                s.readers -= 1
                if not s.readers:
                    s.no_readers.set()

    def _open_version(self, f: StoredFile) -> int:
        fd, st = workspace.open_regular(f.session.fd, f.parts, self.settings.limits.file_max_bytes)
        if Sig.of(st) != f.sig:
            os.close(fd)
            raise NotFound()
        return fd

    def list_files(self, sid: str, owner: str) -> Iterator[StoredFile]:
        s = self.get_session(sid, owner)
        return iter(sorted(s.files.values(), key=lambda f: f.name))
