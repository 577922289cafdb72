"""Compile cache: the output of a successful compile, kept by the daemon and reused read-only.

Key: sha256 of (language, source, compile argv and environment, toolchain identity). A hit
skips the compiler; the entry is bound read-only at /tmp/bin in the run's jail.

Why no run can plant an entry: the daemon alone writes the cache, only right after a compile
step, and only from that step's private output tmpfs; the compile step runs the compiler on
exactly the source the key was computed from, with no access to the cache or to any session's
files; user code never runs until the entry is sealed (root-owned, read-only to jails).
Entries are grouped by toolchain identity (the compiler binaries' inode, size and mtime), and a
start-up with a different identity removes the old group: a toolchain upgrade clears the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterable

from . import workspace
from .errors import ConfigError
from .executors import in_file_pool
from .languages import Recipe

__all__ = ["CompileCache", "toolchain_id"]

log = logging.getLogger(__name__)
ENTRY_FILES_MAX = 2000


def toolchain_id(recipe: Recipe) -> str:
    h = hashlib.sha256()
    for path in recipe.requires:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            h.update(f"{real}:missing".encode())
            continue
        h.update(f"{real}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_key(recipe: Recipe, source: bytes, tc_id: str) -> str:
    h = hashlib.sha256()
    for part in (recipe.lang, tc_id, "\0".join(recipe.compile), "\0".join(recipe.env)):
        h.update(part.encode())
        h.update(b"\0\0")
    h.update(source)
    return h.hexdigest()


class CompileCache:
    def __init__(self, root: str, max_bytes: int, recipes: Iterable[Recipe]) -> None:
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._groups = {r.lang: f"{r.lang}-{toolchain_id(r)}" for r in recipes if r.compile}
        self._locks: dict[str, asyncio.Lock] = {}
        self._in_use: dict[str, int] = {}
        # Entries chosen for eviction: gone from _sizes at once (lookup misses them), removed
        # from disk in a thread; a new insert under the same key waits for that removal.
        self._doomed: dict[str, asyncio.Future[None]] = {}
        # Recency for LRU, kept in memory so eviction picks victims without touching the disk.
        self._used: dict[str, float] = {}
        self.hits = 0
        self.misses = 0
        self._purge_stale()
        self._sizes: dict[str, int] = {}
        for group in self._groups.values():
            gdir = os.path.join(self.root, group)
            os.makedirs(gdir, mode=0o755, exist_ok=True)
            for key in os.listdir(gdir):
                path = os.path.join(gdir, key)
                if key.startswith(".tmp-"):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    self._sizes[path] = _tree_bytes(path)
                    self._used[path] = _mtime(path)

    def _purge_stale(self) -> None:
        """Groups of another toolchain identity (an upgraded compiler) or of no recipe."""
        keep = set(self._groups.values())
        for entry in os.listdir(self.root):
            if entry not in keep:
                log.info("compile cache: removing %s (toolchain changed)", entry)
                shutil.rmtree(os.path.join(self.root, entry), ignore_errors=True)

    def entry_path(self, recipe: Recipe, source: bytes) -> str:
        group = self._groups.get(recipe.lang)
        if group is None:
            raise ConfigError(f"{recipe.lang} has no compile step")
        return os.path.join(self.root, group, cache_key(recipe, source, group.rsplit("-", 1)[1]))

    def lock(self, path: str) -> asyncio.Lock:
        """One compile per key at a time: a second identical request waits and hits."""
        return self._locks.setdefault(path, asyncio.Lock())

    def lookup(self, path: str) -> bool:
        if path in self._sizes and path not in self._doomed and os.path.isdir(path):
            self._used[path] = time.time()  # recency for LRU
            self.hits += 1
            return True
        self.misses += 1
        return False

    def hold(self, path: str) -> None:
        """An entry bound into a running jail is never evicted under it."""
        self._in_use[path] = self._in_use.get(path, 0) + 1

    def release(self, path: str) -> None:
        left = self._in_use.get(path, 1) - 1
        if left:
            self._in_use[path] = left
        else:
            self._in_use.pop(path, None)
        lock = self._locks.get(path)
        if lock is not None and not lock.locked():
            del self._locks[path]

    async def insert(self, path: str, out_fd: int, file_max_bytes: int) -> bool:
        """Seal a compile step's output as entry `path`. The copy runs in a thread; the
        bookkeeping (sizes, recency, which entries to evict) happens here, on the loop, so
        concurrent inserts never see each other half-way; only the removal of evicted trees
        runs in a thread, behind the doomed mark."""
        removal = self._doomed.get(path)
        if removal is not None:
            await asyncio.shield(removal)
        total = await in_file_pool(self._build, path, out_fd, file_max_bytes)
        if total is None:
            return False
        self._sizes[path] = total
        self._used[path] = time.time()
        self._evict(keep=path)
        return True

    def _build(self, path: str, out_fd: int, file_max_bytes: int) -> int | None:
        """Copy the output (read from its tmpfs the safe way) into place (blocking): its size
        in bytes, or None when there is no output."""
        files = workspace.walk(out_fd, ENTRY_FILES_MAX, file_max_bytes)
        if not files:
            return None
        tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{time.monotonic_ns()}")
        os.mkdir(tmp, 0o755)
        total = 0
        try:
            for name in files:
                parts = tuple(name.split("/"))
                fd, st = workspace.open_regular(out_fd, parts, file_max_bytes)
                try:
                    parent = os.path.join(tmp, *parts[:-1])
                    os.makedirs(parent, mode=0o755, exist_ok=True)
                    # Root-owned, never writable by a jail; executables stay executable.
                    mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
                    dst = os.open(os.path.join(parent, parts[-1]),
                                  os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
                    try:
                        workspace.copy_into(fd, dst, st.st_size)
                        os.fchmod(dst, mode)
                    finally:
                        os.close(dst)
                    total += st.st_size
                finally:
                    os.close(fd)
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.isdir(path):  # an identical entry is already in place: fine
                return _tree_bytes(path)
            return None
        return total

    def _evict(self, keep: str) -> None:
        total = sum(self._sizes.values())
        if total <= self.max_bytes:
            return
        for path in sorted(self._sizes, key=lambda p: self._used.get(p, 0.0)):
            if total <= self.max_bytes:
                return
            if path == keep or path in self._in_use:
                continue
            total -= self._sizes.pop(path)
            self._used.pop(path, None)
            self._doomed[path] = asyncio.ensure_future(self._remove(path))

    async def _remove(self, path: str) -> None:
        try:
            await in_file_pool(shutil.rmtree, path, True)
        finally:
            del self._doomed[path]

    async def settle(self) -> None:
        """Until every evicted entry is gone from disk (shutdown, tests)."""
        while self._doomed:
            await asyncio.gather(*self._doomed.values(), return_exceptions=True)

    def total_bytes(self) -> int:
        return sum(self._sizes.values())


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _tree_bytes(path: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total
