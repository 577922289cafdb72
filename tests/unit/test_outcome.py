"""Outcome classification: the status, message and signal a run reports come from what was
measured (cgroup counters, the daemon's own kills), never from an exit code like 137 alone, and
the note appended to stderr tells the model why a run ended when the exit status is hidden."""

from __future__ import annotations

import pytest

from sandboxd.cgroups import CgroupStats
from sandboxd.runner import RunLimits, _with_note, classify
from sandboxd.settings import MiB

LIMITS = RunLimits(wall_timeout_s=2.5, memory_max_bytes=512 * MiB, pids_max=128, cpu_max_cores=1.0,
                   stream_keep_bytes=128 * 1024, stream_kill_bytes=256 * MiB, file_max_bytes=100 * MiB,
                   open_files_max=256)
QUIET = CgroupStats()


def test_clean_exit_is_ok_without_message_or_signal() -> None:
    assert classify(0, QUIET, LIMITS, timed_out=False, output_killed=False) == ("ok", None, None)


def test_non_zero_exit_is_an_error_with_no_signal() -> None:
    assert classify(3, QUIET, LIMITS, timed_out=False, output_killed=False) == ("error", None, None)


@pytest.mark.parametrize(("code", "name"), [(137, "SIGKILL"), (139, "SIGSEGV"), (142, "SIGALRM")])
def test_exit_above_128_names_the_signal_but_is_not_a_limit_by_itself(code: int, name: str) -> None:
    assert classify(code, QUIET, LIMITS, timed_out=False, output_killed=False) == ("error", None, name)


def test_exit_above_128_that_is_no_signal_names_none() -> None:
    assert classify(128 + 200, QUIET, LIMITS, timed_out=False, output_killed=False) == ("error", None, None)


def test_oom_counter_makes_it_oom_with_the_limit_named() -> None:
    stats = CgroupStats(oom_kills=1)
    assert classify(137, stats, LIMITS, False, False) == ("oom", "killed: memory limit 512 MiB exceeded", "SIGKILL")


def test_pids_counter_with_a_failed_exit_is_pids_limit() -> None:
    stats = CgroupStats(pids_limit_hits=5)
    assert classify(1, stats, LIMITS, False, False) == ("pids_limit", "process limit 128 reached", None)


def test_pids_counter_with_a_clean_exit_stays_ok() -> None:
    """A program that met the limit, handled the failed fork and finished is not a failure."""
    assert classify(0, CgroupStats(pids_limit_hits=5), LIMITS, False, False) == ("ok", None, None)


def test_timeout_outranks_every_counter() -> None:
    stats = CgroupStats(oom_kills=1, pids_limit_hits=1)
    status, message, sig = classify(137, stats, LIMITS, timed_out=True, output_killed=True)
    assert (status, message, sig) == ("timeout", "killed: time limit 2.5 s exceeded", "SIGKILL")


def test_output_kill_outranks_the_cgroup_counters() -> None:
    stats = CgroupStats(oom_kills=1, pids_limit_hits=1)
    assert classify(137, stats, LIMITS, timed_out=False, output_killed=True) == (
        "output_limit", "killed: output limit 256 MiB exceeded", "SIGKILL")


def test_odd_limits_are_named_in_plain_bytes() -> None:
    odd = RunLimits(**{**{f: getattr(LIMITS, f) for f in LIMITS.__struct_fields__},
                       "memory_max_bytes": 100 * MiB + 1})
    assert classify(137, CgroupStats(oom_kills=1), odd, False, False)[1] == (
        f"killed: memory limit {100 * MiB + 1} bytes exceeded")


def test_note_carries_the_message_after_the_programs_stderr() -> None:
    assert _with_note("Traceback...", 137, "SIGKILL", "killed: memory limit 512 MiB exceeded") == (
        "Traceback...\n[sandboxd] killed: memory limit 512 MiB exceeded\n")
    assert _with_note("line\n", 1, None, "process limit 128 reached") == "line\n[sandboxd] process limit 128 reached\n"


def test_note_names_a_signal_when_there_is_no_limit_message() -> None:
    assert _with_note("", 139, "SIGSEGV", None) == "[sandboxd] killed by SIGSEGV\n"


def test_note_names_a_silent_non_zero_exit() -> None:
    assert _with_note("", 3, None, None) == "[sandboxd] exited with code 3\n"
    assert _with_note("  \n", 3, None, None) == "  \n[sandboxd] exited with code 3\n"


def test_no_note_when_the_program_said_why_or_succeeded() -> None:
    assert _with_note("ValueError: boom\n", 1, None, None) == "ValueError: boom\n"
    assert _with_note("a warning\n", 0, None, None) == "a warning\n"
    assert _with_note("", 0, None, None) == ""
