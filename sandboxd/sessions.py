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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from . import workspace
from .admission import Admission
from .errors import BadRequest, InputsUnavailable, NotFound, PayloadTooLarge, Unavailable
from .ids import is_valid_id, new_id, redact
from .compilecache import CompileCache
from .languages import BIN_DIR, Recipe, resolve
from .metrics import Metrics
from .runner import Runner, RunLimits, RunResult
from .schemas import ExecReply, ExecRequest, FileRef, ObjectInfo, OutFile
from .settings import Settings
from .workspace import Sig

__all__ = ["StoredFile", "Session", "SessionStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")
WALK_MAX_ENTRIES = 20000
ARGS_MAX = 256
ARG_MAX_BYTES = 64 * 1024


async def _in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run blocking file work in a thread; if the caller is cancelled, still wait for the
    thread to finish before the session lock is released (it mutates that session)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


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
    is_input: bool


@dataclass(eq=False)
class Session:
    id: str
    owner: str
    uid: int
    path: str
    fd: int
    created_at: float
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    known: dict[str, Known] = field(default_factory=dict)
    files: dict[str, StoredFile] = field(default_factory=dict)  # own objects by file id
    busy: int = 0
    usage_bytes: int = 0
    closed: bool = False


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
        self.runner.kill_all()
        for s in list(self.sessions.values()):
            async with s.lock:
                self.drop_session(s)

    # ---- sessions and uids -----------------------------------------------------------------

    def _alloc_uid(self) -> int:
        if self._free_uids:
            return self._free_uids.pop()
        if self._next_uid >= self.settings.uid_base + self.settings.uid_count:
            raise Unavailable("No free sandbox uid; too many live sessions")
        uid = self._next_uid
        self._next_uid += 1
        return uid

    def create_session(self, owner: str) -> Session:
        if self.closing:
            raise Unavailable("The daemon is shutting down")
        if len(self.sessions) >= self.settings.storage.sessions_max:
            self._evict(need_sessions=1, need_bytes=0)
        uid = self._alloc_uid()
        path = os.path.join(self.mount_root, str(uid))
        try:
            os.mkdir(path, 0o700)
            st = self.settings.storage
            workspace.mount_tmpfs(path, st.session_max_bytes, st.session_max_inodes, uid, uid)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except BaseException:
            workspace.unmount(path)
            try:
                os.rmdir(path)
            except OSError:
                pass
            self._free_uids.append(uid)
            raise
        now = time.time()
        sid = new_id()
        s = Session(id=sid, owner=owner, uid=uid, path=path, fd=fd, created_at=now, last_used=now)
        self.sessions[sid] = s
        log.info("session %s created (uid %d)", redact(sid), uid)
        return s

    def drop_session(self, s: Session) -> None:
        if s.closed:
            return
        s.closed = True
        self.sessions.pop(s.id, None)
        for fid in s.files:
            self.files.pop(fid, None)
        os.close(s.fd)
        workspace.unmount(s.path)
        try:
            os.rmdir(s.path)
        except OSError:
            log.warning("could not remove mount point %s", s.path)
        self._free_uids.append(s.uid)
        log.info("session %s removed", redact(s.id))

    def _evict(self, need_sessions: int, need_bytes: int, keep: Session | None = None) -> None:
        """Least-recently-used idle sessions go first."""
        for s in sorted(self.sessions.values(), key=lambda x: x.last_used):
            over_count = len(self.sessions) + need_sessions > self.settings.storage.sessions_max
            over_bytes = self.total_usage() + need_bytes > self.settings.storage.storage_max_bytes
            if not (over_count or over_bytes):
                return
            if s is keep or s.busy or s.lock.locked():
                continue
            log.info("evicting session %s (storage pressure)", redact(s.id))
            self.metrics.evicted("lru_sessions" if over_count else "lru_bytes")
            self.drop_session(s)
        if len(self.sessions) + need_sessions > self.settings.storage.sessions_max:
            raise Unavailable("Session storage is full")

    def total_usage(self) -> int:
        return sum(s.usage_bytes for s in self.sessions.values())

    def sweep(self) -> None:
        """Expire idle sessions past their TTL, then enforce the storage budget."""
        cutoff = time.time() - self.settings.storage.session_ttl_s
        for s in list(self.sessions.values()):
            if s.last_used < cutoff and not s.busy and not s.lock.locked():
                self.metrics.evicted("ttl")
                self.drop_session(s)
        self._evict(need_sessions=0, need_bytes=0)

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
        s.known[name] = Known(f.id, s.id, sig, is_input=False)
        return f

    def _retire(self, s: Session, fid: str) -> None:
        s.files.pop(fid, None)
        self.files.pop(fid, None)

    def _touch(self, s: Session) -> None:
        s.last_used = time.time()
        s.usage_bytes = workspace.usage_bytes(s.path)

    # ---- uploads and deletes ---------------------------------------------------------------

    def new_upload_session(self, owner: str) -> Session:
        s = self.create_session(owner)
        s.busy += 1
        return s

    def end_upload(self, s: Session) -> None:
        s.busy -= 1
        if not s.files:
            self.drop_session(s)  # nothing stored: don't keep an empty mount
            return
        self._touch(s)
        if self.total_usage() > self.settings.storage.storage_max_bytes:
            self._evict(0, 0, keep=s)

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
                await _in_thread(workspace.unlink_name, s.fd, f.parts)
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
        inputs = self._resolve_inputs(req.files or [], owner)
        limits = self._limits(recipe, req.timeout)

        if self.closing:  # draining for a stop: runs in flight finish, new ones are refused
            raise Unavailable("The daemon is shutting down")
        async with self.admission.slot():
            if self.closing:
                raise Unavailable("The daemon is shutting down")
            s = None
            if req.session_id:
                s = self.sessions.get(req.session_id) if is_valid_id(req.session_id) else None
                if s is not None and s.owner != owner:
                    s = None
            if s is None:
                s = self.create_session(owner)
            s.busy += 1
            for f, _ in inputs:
                f.session.busy += 1
            try:
                async with s.lock:
                    if s.closed:
                        raise NotFound()
                    await _in_thread(self._place_inputs, s, inputs)
                    try:
                        if recipe.compile:
                            result = await self._compile_and_run(s, recipe, code, args, limits)
                        else:
                            result = await self._run_step(s, recipe, code, args, limits)
                    except BaseException as exc:
                        self.metrics.run_aborted(recipe.lang, exc)
                        raise
                    self.metrics.run_finished(recipe.lang, result.status, result.wall_time_ms / 1000)
                    found = await _in_thread(
                        workspace.walk, s.fd, WALK_MAX_ENTRIES, self.settings.limits.file_max_bytes
                    )
                    files, deleted = self._diff(s, found)
                    self._touch(s)
            finally:
                s.busy -= 1
                for f, _ in inputs:
                    f.session.busy -= 1
        if self.total_usage() > self.settings.storage.storage_max_bytes:
            self._evict(0, 0, keep=s)
        return self._reply(s, result, files, deleted)

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
        os.mkdir(out, 0o700)
        st = self.settings.storage
        try:
            workspace.mount_tmpfs(out, min(st.session_max_bytes, 512 * 1024 * 1024), 4096, s.uid, s.uid)
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
                    sealed = await _in_thread(self.cache.insert, entry, fd, self.settings.limits.file_max_bytes)
                finally:
                    os.close(fd)
                if not sealed:
                    return msgspec.structs.replace(
                        built, exit_code=1, status="error", message="the compiler produced no output",
                        stderr=built.stderr + "[sandboxd] the compiler produced no output\n")
            return built
        finally:
            workspace.unmount(out)
            os.rmdir(out)

    def _place_inputs(self, s: Session, inputs: list[tuple[StoredFile, tuple[str, ...]]]) -> None:
        """Copy each input version into the run's session, unless that exact version is there."""
        cap = self.settings.limits.file_max_bytes
        for f, parts in inputs:
            name = "/".join(parts)
            known = s.known.get(name)
            if known is not None and known.file_id == f.id:
                continue
            try:
                src, src_st = workspace.open_regular(f.session.fd, f.parts, cap)
            except NotFound:
                raise InputsUnavailable("One or more input files are unavailable") from None
            try:
                if Sig.of(src_st) != f.sig:
                    raise InputsUnavailable("One or more input files are unavailable")
                dst = workspace.create_file(s.fd, parts, s.uid, replace=True)
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
                    raise InputsUnavailable("One or more input files are unavailable")
            finally:
                os.close(src)
            if known is not None and known.storage_session_id == s.id:
                self._retire(s, known.file_id)
            s.known[name] = Known(f.id, f.session.id, dst_sig, is_input=True)

    def _diff(self, s: Session, found: dict[str, Sig]) -> tuple[list[OutFile], list[str]]:
        cap = self.settings.limits.output_files_max
        new: list[OutFile] = []
        kept: list[OutFile] = []
        deleted = []
        for name in sorted(set(s.known) - set(found)):
            gone = s.known.pop(name)
            if gone.storage_session_id == s.id:
                self._retire(s, gone.file_id)
            deleted.append(name)
        for name, sig in found.items():
            known = s.known.get(name)
            if known is not None and known.sig == sig:
                kept.append(OutFile(id=known.file_id, name=name, storage_session_id=known.storage_session_id,
                                    inherited=True))
            elif len(new) < cap:
                f = self._register(s, name, sig)
                new.append(OutFile(id=f.id, name=name, storage_session_id=s.id,
                                   url=f"/api/files/code/download/{s.id}/{f.id}", type=f.content_type))
            elif known is not None:
                # Changed but over the output cap: the old version is gone, don't serve it.
                s.known.pop(name)
                if known.storage_session_id == s.id:
                    self._retire(s, known.file_id)
        return (new + kept)[:cap], deleted  # new files first: they are what the client lacks

    def _reply(self, s: Session, r: RunResult, files: list[OutFile], deleted: list[str]) -> ExecReply:
        return ExecReply(
            session_id=s.id, stdout=r.stdout, stderr=r.stderr, exit_code=r.exit_code, code=r.exit_code,
            signal=r.signal, status=r.status, message=r.message, wall_time_ms=r.wall_time_ms,
            cpu_time_ms=r.cpu_time_ms, memory_peak_bytes=r.memory_peak_bytes, files=files,
            deleted_files=deleted,
        )

    # ---- reads ------------------------------------------------------------------------------

    def open_for_download(self, f: StoredFile) -> int:
        """An fd of exactly the version the ID names; NotFound if the bytes changed since."""
        fd, st = workspace.open_regular(f.session.fd, f.parts, self.settings.limits.file_max_bytes)
        if Sig.of(st) != f.sig:
            os.close(fd)
            raise NotFound()
        f.session.last_used = time.time()
        return fd

    def list_files(self, sid: str, owner: str) -> Iterator[StoredFile]:
        s = self.get_session(sid, owner)
        return iter(sorted(s.files.values(), key=lambda f: f.name))
