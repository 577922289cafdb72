"""How a run's limits are computed: the server's limits, raised only by a language's floors
(a runtime that cannot work below them), lowered only by the request's timeout, never raised by
it. SessionStore._limits reads nothing but the settings; the store here is real, on a scratch
state directory, with no runner or compile cache (the method never touches them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.languages import JAVA_MEMORY_FLOOR, RECIPES, Recipe
from sandboxd.sessions import SessionStore
from sandboxd.settings import MiB, load_settings


def store(tmp_path: Path, **limits: object) -> SessionStore:
    settings = load_settings(None, state_dir=str(tmp_path), limits=limits or None)
    return SessionStore(settings, runner=None, cache=None)  # type: ignore[arg-type]


def test_no_request_timeout_gives_the_server_limits(tmp_path: Path) -> None:
    s = store(tmp_path, wall_timeout_s=30.0, memory_max_bytes=512 * MiB, pids_max=128)
    lim = s._limits(RECIPES["py"], None)
    assert (lim.wall_timeout_s, lim.memory_max_bytes, lim.pids_max) == (30.0, 512 * MiB, 128)
    server = s.settings.limits
    assert (lim.cpu_max_cores, lim.stream_keep_bytes, lim.stream_kill_bytes, lim.file_max_bytes,
            lim.open_files_max) == (server.cpu_max_cores, server.stream_keep_bytes, server.stream_kill_bytes,
                                    server.file_max_bytes, server.open_files_max)


@pytest.mark.parametrize(("timeout_ms", "wall_s"), [
    (2000, 2.0),       # lowers the limit
    (30000, 30.0),     # equal: unchanged
    (600000, 30.0),    # may not raise it
    (1, 0.1),          # a floor: a run gets at least 0.1 s to start
])
def test_request_timeout_only_lowers_the_wall_limit(tmp_path: Path, timeout_ms: float, wall_s: float) -> None:
    assert store(tmp_path, wall_timeout_s=30.0)._limits(RECIPES["py"], timeout_ms).wall_timeout_s == wall_s


def test_language_floors_raise_memory_and_pids_over_low_server_limits(tmp_path: Path) -> None:
    s = store(tmp_path, memory_max_bytes=256 * MiB, pids_max=64)
    java = s._limits(RECIPES["java"], None)
    assert java.memory_max_bytes == JAVA_MEMORY_FLOOR and java.pids_max == RECIPES["java"].pids_max == 256
    ts = s._limits(RECIPES["ts"], None)
    assert ts.memory_max_bytes == 256 * MiB and ts.pids_max == 256
    py = s._limits(RECIPES["py"], None)  # twin: no floor, the server's limits hold
    assert py.memory_max_bytes == 256 * MiB and py.pids_max == 64


def test_server_limits_above_a_floor_are_kept(tmp_path: Path) -> None:
    s = store(tmp_path, memory_max_bytes=2 * JAVA_MEMORY_FLOOR, pids_max=1024)
    java = s._limits(RECIPES["java"], None)
    assert java.memory_max_bytes == 2 * JAVA_MEMORY_FLOOR and java.pids_max == 1024


def test_a_request_timeout_cannot_lower_a_floor_or_raise_memory(tmp_path: Path) -> None:
    java = store(tmp_path, memory_max_bytes=256 * MiB)._limits(RECIPES["java"], 500)
    assert java.wall_timeout_s == 0.5 and java.memory_max_bytes == JAVA_MEMORY_FLOOR


def test_compile_time_is_added_only_without_a_separate_compile_step(tmp_path: Path) -> None:
    s = store(tmp_path, wall_timeout_s=10.0)
    for recipe in RECIPES.values():  # every compiled language has its own compile step and budget
        assert s._limits(recipe, None).wall_timeout_s == 10.0, recipe
    one_step = Recipe(lang="x", profile="python", source_name="main.x", run=("{src}",), compile_time_s=5.0)
    assert s._limits(one_step, 2000).wall_timeout_s == 7.0
