"""Compile-cache eviction: the bookkeeping happens on the loop, so concurrent inserts over the
cap never trip over each other, an evicted entry is a miss at once, and a held one stays."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sandboxd.compilecache import CompileCache
from sandboxd.languages import Recipe

RECIPE = Recipe(lang="c", profile="native", source_name="main.c", run=("/tmp/bin/main",),
                compile=("/bin/true",), requires=("/bin/true",))
ENTRY_BYTES = 256 * 1024


def _outputs(tmp: Path, n: int) -> list[int]:
    fds = []
    for i in range(n):
        out = tmp / f"out{i}"
        out.mkdir()
        (out / "main").write_bytes(bytes([i]) * ENTRY_BYTES)
        fds.append(os.open(out, os.O_RDONLY | os.O_DIRECTORY))
    return fds


async def test_concurrent_inserts_over_the_cap(tmp_path: Path) -> None:
    cache = CompileCache(str(tmp_path / "cache"), 3 * ENTRY_BYTES, [RECIPE])
    fds = _outputs(tmp_path, 16)
    paths = [cache.entry_path(RECIPE, f"s{i}".encode()) for i in range(16)]
    held = paths[0]
    try:
        assert await cache.insert(held, fds[0], 1 << 20)
        cache.hold(held)  # bound into a running jail: never evicted under it
        results = await asyncio.gather(*(cache.insert(p, fd, 1 << 20) for p, fd in zip(paths[1:], fds[1:])))
        assert all(results)
        # An evicted entry misses at once, before its tree is gone from disk.
        gone = [p for p in paths if not cache.lookup(p)]
        assert gone and held not in gone
        await cache.settle()
    finally:
        for fd in fds:
            os.close(fd)
    assert cache.lookup(held)
    assert cache.total_bytes() <= 3 * ENTRY_BYTES + ENTRY_BYTES  # the held entry may exceed the cap
    on_disk = {str(p) for p in (tmp_path / "cache").glob("*/*")}
    assert on_disk == {p for p in paths if cache.lookup(p)}  # bookkeeping and disk agree
    cache.release(held)


async def test_a_key_evicted_and_compiled_again_is_sealed_after_the_removal(tmp_path: Path) -> None:
    cache = CompileCache(str(tmp_path / "cache"), ENTRY_BYTES, [RECIPE])
    fds = _outputs(tmp_path, 2)
    a, b = (cache.entry_path(RECIPE, s) for s in (b"a", b"b"))
    try:
        assert await cache.insert(a, fds[0], 1 << 20)
        assert await cache.insert(b, fds[1], 1 << 20)  # evicts a
        assert not cache.lookup(a)
        assert await cache.insert(a, fds[0], 1 << 20)  # evicts b, waits for a's removal first
        await cache.settle()
    finally:
        for fd in fds:
            os.close(fd)
    assert cache.lookup(a) and os.path.isfile(os.path.join(a, "main")) and not os.path.exists(b)
