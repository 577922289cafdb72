"""The compile cache: hits skip the compiler, entries are sealed by the daemon and read-only to
jails, and a toolchain change clears them."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxd.compilecache import CompileCache, toolchain_id
from sandboxd.http import STORE
from sandboxd.languages import RECIPES, Recipe

pytestmark = pytest.mark.jail

HELLO_C = '#include <stdio.h>\nint main(int c, char **v) { printf("hi %s\\n", c > 1 ? v[1] : "-"); return 0; }\n'


async def run(client: Any, code: str, lang: str = "c", **extra: Any) -> dict[str, Any]:
    resp = await client.post("/exec", json={"lang": lang, "code": code, **extra})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_repeat_of_the_same_source_skips_the_compiler(client: Any) -> None:
    cache = client.server.app[STORE].cache
    first = await run(client, HELLO_C, args=["one"])
    assert first["stdout"] == "hi one\n" and cache.misses == 1 and cache.hits == 0
    second = await run(client, HELLO_C, args=["two"])
    assert second["stdout"] == "hi two\n" and cache.hits == 1 and cache.misses == 1
    assert second["cpu_time_ms"] < first["cpu_time_ms"]  # no compiler this time
    other = await run(client, HELLO_C.replace("hi", "ho"), args=["x"])
    assert other["stdout"] == "ho x\n" and cache.misses == 2  # a different source, a different entry


async def test_entries_are_root_owned_and_read_only_to_jails(client: Any) -> None:
    cache = client.server.app[STORE].cache
    await run(client, HELLO_C)
    entry = cache.entry_path(RECIPES["c"], HELLO_C.encode())
    st = os.stat(os.path.join(entry, "main"))
    assert st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    attack = ("#include <stdio.h>\nint main(void) { FILE *f = fopen(\"/tmp/bin/main\", \"w\");\n"
              "  printf(\"%s\\n\", f ? \"WROTE\" : \"denied\"); return 0; }\n")
    body = await run(client, attack)
    assert body["stdout"] == "denied\n"
    again = await run(client, HELLO_C, args=["ok"])  # twin: the entry still serves
    assert again["stdout"] == "hi ok\n"


async def test_a_run_cannot_plant_a_cache_entry(client: Any) -> None:
    cache = client.server.app[STORE].cache
    # A run that writes what a compile step would write, where a compile step would write it,
    # and tries to reach the cache directory: none of it becomes an entry.
    code = ("import os\nopen('main', 'w').write('#!/bin/sh\\necho planted\\n')\nos.chmod('main', 0o755)\n"
            f"print(os.path.exists({cache.root!r}))\n")
    body = await run(client, code, lang="py")
    assert body["stdout"] == "False\n"
    before = cache.total_bytes()
    victim = await run(client, HELLO_C, args=["real"])
    assert victim["stdout"] == "hi real\n" and cache.total_bytes() > before
    entries = [p for p in Path(cache.root).glob("*/*") if p.is_dir()]
    assert all("planted" not in (p / "main").read_bytes().decode(errors="replace") for p in entries)


async def test_compile_error_is_reported_and_not_cached(client: Any) -> None:
    cache = client.server.app[STORE].cache
    body = await run(client, "int main(void) { return nope; }\n")
    assert body["exit_code"] != 0 and "nope" in body["stderr"]
    assert cache.total_bytes() == 0
    again = await run(client, "int main(void) { return nope; }\n")
    assert again["exit_code"] != 0 and cache.hits == 0


def test_toolchain_change_clears_the_cache(tmp_path: Path) -> None:
    compiler = tmp_path / "fakecc"
    compiler.write_text("#!/bin/sh\n")
    compiler.chmod(0o755)
    recipe = Recipe(lang="c", profile="native", source_name="main.c", run=("/tmp/bin/main",),
                    compile=(str(compiler),), requires=(str(compiler),))
    root = tmp_path / "cache"
    cache = CompileCache(str(root), 1 << 30, [recipe])
    entry = Path(cache.entry_path(recipe, b"int main;"))
    entry.mkdir()
    (entry / "main").write_bytes(b"old binary")
    old_id = toolchain_id(recipe)
    assert CompileCache(str(root), 1 << 30, [recipe]).lookup(str(entry))  # same toolchain: kept
    time.sleep(0.01)
    compiler.write_text("#!/bin/sh\n# upgraded\n")  # a new compiler build
    assert toolchain_id(recipe) != old_id
    fresh = CompileCache(str(root), 1 << 30, [recipe])
    assert not entry.exists() and not fresh.lookup(fresh.entry_path(recipe, b"int main;"))


async def test_cache_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    src = tmp_path / "out"
    src.mkdir()
    (src / "main").write_bytes(b"x" * 4000)
    recipe = Recipe(lang="c", profile="native", source_name="main.c", run=("/tmp/bin/main",),
                    compile=("/bin/true",), requires=("/bin/true",))
    cache = CompileCache(str(tmp_path / "cache"), 10_000, [recipe])
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        paths = []
        for i in range(3):
            p = cache.entry_path(recipe, f"s{i}".encode())
            assert await cache.insert(p, fd, 1 << 20)
            paths.append(p)
        await cache.settle()
    finally:
        os.close(fd)
    assert not os.path.exists(paths[0]) and os.path.exists(paths[1]) and os.path.exists(paths[2])
    assert cache.total_bytes() <= 10_000
