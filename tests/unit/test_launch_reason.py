"""What the start-up checks report when nsjail cannot build a jail: its own reason lines."""

from __future__ import annotations

from sandboxd.runner import launch_reason

# nsjail's log of a launch without CAP_SETUID (as seen in a container that dropped it).
SETUID_LOG = """\
[I][2026-12-05T19:03:57+0000] Mount: '/dev/urandom' -> '/dev/urandom' type:'' options:''
[E][2026-12-05T19:03:57+0000][14] writeBufToFile():138 Couldn't write '18' bytes to file '/proc/15/uid_map' (fd='7'): Operation not permitted
[E][2026-12-05T19:03:57+0000][14] uidMapSelf():145 util::writeBufToFile('/proc/15/uid_map', '1000 1000000000 1
') failed
[E][2026-12-05T19:03:57+0000][14] initParent():457 Couldn't initialize user namespace for pid=15
[F][2026-12-05T19:03:57+0000][1] runChild():506 Launching child process failed
"""


def test_reason_keeps_warnings_errors_and_fatals_without_timestamps() -> None:
    reason = launch_reason(SETUID_LOG)
    parts = reason.split("; ")
    assert parts[0] == ("writeBufToFile():138 Couldn't write '18' bytes to file '/proc/15/uid_map' "
                        "(fd='7'): Operation not permitted")
    assert "initParent():457 Couldn't initialize user namespace for pid=15" in parts
    assert parts[-1] == "runChild():506 Launching child process failed"
    assert "Mount:" not in reason and "2026-12-05" not in reason


def test_reason_is_bounded_and_empty_without_problem_lines() -> None:
    assert launch_reason("[I][2026-12-05T19:03:57+0000] Mount: '/proc' type:'proc'\n") == ""
    many = "".join(f"[W][2026-12-05T19:03:57+0000][1] line {i}\n" for i in range(1000))
    assert len(launch_reason(many, max_chars=300)) == 300
    assert launch_reason(many).endswith("line 999")
