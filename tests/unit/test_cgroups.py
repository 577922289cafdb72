"""Pure parts of the cgroup code. The v1 path runs for real in tests/jail; v2 cannot be
exercised on hosts without a unified hierarchy, so its file handling is checked here against
a directory tree laid out like a delegated cgroup v2 subtree."""

import os
from pathlib import Path

import pytest

from sandboxd.cgroups import (
    CgroupLimits,
    CgroupV2,
    detect_cgroups,
    parse_keyed,
    parse_self_cgroup_v2,
    v1_limit_files,
    v2_limit_files,
)
from sandboxd.errors import ConfigError

LIMITS = CgroupLimits(memory_max_bytes=512 * 1024 * 1024, pids_max=128, cpu_max_cores=1.5)


def test_v2_limits_disable_swap_and_use_100ms_period() -> None:
    files = dict(v2_limit_files(LIMITS))
    assert files == {"memory.max": "536870912", "memory.swap.max": "0", "pids.max": "128",
                     "cpu.max": "150000 100000"}


def test_v1_limits_set_memsw_equal_to_memory() -> None:
    files = {(c, f): v for c, f, v in v1_limit_files(LIMITS)}
    assert files[("memory", "memory.limit_in_bytes")] == files[("memory", "memory.memsw.limit_in_bytes")]
    assert files[("cpu", "cpu.cfs_quota_us")] == "150000"
    assert files[("pids", "pids.max")] == "128"


def test_parse_keyed_reads_event_files() -> None:
    assert parse_keyed("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n") == {
        "low": 0, "high": 0, "max": 3, "oom": 1, "oom_kill": 2}
    assert parse_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")["oom_kill"] == 1


def test_parse_self_cgroup_finds_unified_entry() -> None:
    text = "12:pids:/x\n1:name=systemd:/system.slice/sandboxd.service\n0::/system.slice/sandboxd.service\n"
    assert parse_self_cgroup_v2(text) == "/system.slice/sandboxd.service"
    with pytest.raises(ConfigError):
        parse_self_cgroup_v2("12:pids:/x\n")


def _fake_v2(tmp_path: Path, controllers: str) -> Path:
    base = tmp_path / "system.slice" / "sandboxd.service"
    base.mkdir(parents=True)
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (base / "cgroup.controllers").write_text(controllers)
    (base / "cgroup.procs").write_text("4242\n")  # the daemon itself
    (base / "cgroup.subtree_control").write_text("")
    return base


def _delegate(base: Path) -> None:
    """What systemd does to a cgroup it delegates (Delegate=yes): mark it with an xattr."""
    try:
        os.setxattr(base, "user.delegate", b"1")
    except OSError as exc:
        pytest.skip(f"no user xattrs on {base}: {exc}")


def test_v2_setup_refuses_an_undelegated_group_before_writing_anything(tmp_path: Path) -> None:
    base = _fake_v2(tmp_path, "cpu memory pids\n")  # controllers available, but not delegated
    cg = CgroupV2("jails", root=str(tmp_path), self_cgroup="/system.slice/sandboxd.service")
    with pytest.raises(ConfigError, match="not delegated"):
        cg.setup()
    assert sorted(p.name for p in base.iterdir()) == ["cgroup.controllers", "cgroup.procs", "cgroup.subtree_control"]
    assert (base / "cgroup.procs").read_text() == "4242\n" and (base / "cgroup.subtree_control").read_text() == ""
    _delegate(base)  # the twin: the same group, delegated, is set up
    (base / "jails").mkdir()
    (base / "jails" / "cgroup.subtree_control").write_text("")
    (base / "supervisor").mkdir()
    (base / "supervisor" / "cgroup.procs").write_text("")
    cg.setup()
    assert (base / "supervisor" / "cgroup.procs").read_text() == "4242"


def test_v2_setup_refuses_without_delegated_controllers(tmp_path: Path) -> None:
    _delegate(_fake_v2(tmp_path, "cpu\n"))
    cg = CgroupV2("sandboxd", root=str(tmp_path), self_cgroup="/system.slice/sandboxd.service")
    with pytest.raises(ConfigError, match="Delegate=yes"):
        cg.setup()


def test_v2_setup_enables_controllers_and_places_runs_under_own_child(tmp_path: Path) -> None:
    base = _fake_v2(tmp_path, "cpu memory pids\n")
    _delegate(base)
    cg = CgroupV2("jails", root=str(tmp_path), self_cgroup="/system.slice/sandboxd.service")
    # A real cgroupfs creates the interface files itself; mkdir here only makes directories.
    jails = base / "jails"
    jails.mkdir()
    (jails / "cgroup.subtree_control").write_text("")
    (base / "supervisor").mkdir()
    (base / "supervisor" / "cgroup.procs").write_text("")
    cg.setup()
    assert (base / "supervisor" / "cgroup.procs").read_text() == "4242"  # moved out first
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (jails / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert cg.jails == str(jails)


def test_detect_prefers_v2_when_unified_root(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory pids cpu\n")
    assert detect_cgroups("x", root=str(tmp_path)).version == 2


def test_detect_refuses_without_cgroups(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        detect_cgroups("x", root=str(tmp_path))


def test_v2_peak_is_none_without_memory_peak_and_counters_come_from_event_files(tmp_path: Path) -> None:
    from sandboxd.cgroups import _V2Run

    run = tmp_path / "run-x"
    run.mkdir()
    (run / "memory.current").write_text("1048576\n")  # after the run: not a peak
    (run / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    (run / "pids.events").write_text("max 2\n")
    (run / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    stats = _V2Run(str(run)).stats()
    assert stats.memory_peak_bytes is None  # kernels before 5.19: unknown, never a guess
    assert (stats.oom_kills, stats.pids_limit_hits, stats.cpu_time_ns) == (1, 2, 1_500_000)
    (run / "memory.peak").write_text("7340032\n")
    assert _V2Run(str(run)).stats().memory_peak_bytes == 7340032


def test_v2_setup_again_from_the_supervisor_leaf_uses_the_delegated_parent(tmp_path: Path) -> None:
    """doctor sets up twice in one process: the second time it already sits in supervisor/."""
    base = _fake_v2(tmp_path, "cpu memory pids\n")
    _delegate(base)
    (base / "supervisor").mkdir()
    cg = CgroupV2("jails", root=str(tmp_path), self_cgroup="/system.slice/sandboxd.service/supervisor")
    assert cg.base == str(base) and cg.jails == str(base / "jails")
    undelegated = tmp_path / "user.slice" / "session-1.scope"
    (undelegated / "supervisor").mkdir(parents=True)
    other = CgroupV2("jails", root=str(tmp_path), self_cgroup="/user.slice/session-1.scope/supervisor")
    with pytest.raises(ConfigError, match="not delegated"):
        other.setup()  # a leaf named supervisor under a group nobody delegated stays refused
