"""The profile checker is an allowlist: every edit that would weaken a jail is refused, naming
what is wrong, and a harmless edit of the same shape next to it is accepted."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from sandboxd.errors import ConfigError
from sandboxd.languages import RECIPES
from sandboxd.policy import Policy, settings_sources
from sandboxd.settings import Auth, Settings

REPO = Path(__file__).resolve().parents[2]
SHIPPED = (REPO / "jail-configs" / "python.cfg").read_text()


def _policy_with(tmp_path: Path, text: str) -> Policy:
    (tmp_path / "seccomp.kafel").write_text("USE x DEFAULT ALLOW\n")
    (tmp_path / "python.cfg").write_text(text)
    return Policy(str(tmp_path), "/bin/true")  # static checks only: nsjail is not run here


def _check(tmp_path: Path, extra: str, **kw: object) -> None:
    _policy_with(tmp_path, SHIPPED + "\n" + extra + "\n").check_profile("python", **kw)  # type: ignore[arg-type]


# (weakening edit, the message it must be refused with, a harmless twin of the same shape)
EDITS = [
    # Host paths written so that a string comparison misses them.
    ('mount { dst: "/x" src: "/usr/../root" is_bind: true }', "/root",
     'mount { dst: "/x" src: "/usr/../usr/share" is_bind: true }'),
    ('mount { dst: "/x" src: "//root" is_bind: true }', "/root",
     'mount { dst: "/x" src: "//usr/share" is_bind: true }'),
    ('mount { dst: "/x" src: "root" is_bind: true }', "absolute",
     'mount { dst: "/x" src: "/usr/share/doc" is_bind: true }'),
    ('mount { dst: "/x" src: "/etc/./ssh/" is_bind: true }', "/etc/ssh",
     'mount { dst: "/x" src: "/etc/./ssl/" is_bind: true mandatory: false }'),
    # rw is judged on the host side of the bind, not on where it lands.
    ('mount { dst: "/dev/null" src: "/usr" is_bind: true rw: true }', "read-only",
     'mount { dst: "/dev/null" src: "/usr" is_bind: true rw: false }'),
    ('mount { dst: "/w" src: "/dev/null/../zero/../../usr" is_bind: true rw: true }', "read-only",
     'mount { dst: "/w" src: "/dev/zero" is_bind: true rw: true }'),
    # Non-bind mounts: only tmpfs, and proc read-only.
    ('mount { dst: "/proc" fstype: "proc" rw: true }', "read-only",
     'mount { dst: "/proc" fstype: "proc" rw: false }'),
    ('mount { dst: "/sys" fstype: "sysfs" }', "sysfs",
     'mount { dst: "/sys" fstype: "tmpfs" options: "size=1m" nosuid: true nodev: true }'),
    ('mount { dst: "/c" fstype: "cgroup2" }', "cgroup2",
     'mount { dst: "/c" fstype: "tmpfs" options: "size=1m" nosuid: true nodev: true }'),
    ('mount { dst: "/c" fstype: "cgroup" options: "memory" }', "cgroup",
     'mount { dst: "/c" fstype: "tmpfs" options: "size=1m,mode=700" nosuid: true nodev: true }'),
    ('mount { dst: "/dev/mqueue" fstype: "mqueue" }', "mqueue",
     'mount { dst: "/dev/mqueue" fstype: "tmpfs" options: "size=1m" nosuid: true nodev: true }'),
    ('mount { dst: "/dev/pts" fstype: "devpts" rw: true }', "devpts",
     'mount { dst: "/dev/pts" fstype: "tmpfs" rw: true options: "size=1m" nosuid: true nodev: true }'),
    ('mount { dst: "/big" fstype: "tmpfs" rw: true options: "mode=1777" nosuid: true nodev: true }', "size=",
     'mount { dst: "/big" fstype: "tmpfs" rw: true options: "size=8m,mode=1777" nosuid: true nodev: true }'),
    ('mount { dst: "/big" fstype: "tmpfs" rw: true options: "size=8m" nodev: true }', "nosuid",
     'mount { dst: "/big" fstype: "tmpfs" rw: true options: "size=8m" nosuid: true nodev: true }'),
    ('mount { dst: "/x" src: "/usr" prefix_src_env: "HOME" is_bind: true }', "prefix_src_env",
     'mount { dst: "/x" src: "/usr" is_bind: true is_dir: true }'),
    # /dev whole, raw devices, host /tmp.
    ('mount { dst: "/dev" src: "/dev" is_bind: true }', "devices",
     'mount { dst: "/dev/urandom2" src: "/dev/urandom" is_bind: true }'),
    ('mount { dst: "/disk" src: "/dev/sda" is_bind: true mandatory: false }', "devices",
     'mount { dst: "/rnd" src: "/dev/random" is_bind: true mandatory: false }'),
    ('mount { dst: "/t" src: "/tmp" is_bind: true }', "/tmp",
     'mount { dst: "/t" src: "/usr/share/zoneinfo" is_bind: true }'),
    ('mount { dst: "/t" src: "/" is_bind: true }', "devices",
     'mount { dst: "/t" src: "/usr/lib" is_bind: true }'),
    # Top-level fields: mode pinned, networking and fd passing refused, anything unknown refused.
    ("mode: LISTEN", "'mode' must be ONCE", "mode: ONCE"),
    ("mode: RERUN", "'mode' must be ONCE", "mode: ONCE"),
    ("pass_fd: 3", "pass_fd", 'envar: "EXTRA=1"'),
    ('exec_bin { path: "/bin/sh" }', "exec_bin", 'hostname: "sandbox"'),
    ('user_net { ip: "10.0.0.2" }', "user_net", "iface_no_lo: false"),
    ("disable_rl: true", "disable_rl", "rlimit_core: 0"),
    ('iface_own: "eth0"', "iface_own", "iface_no_lo: false"),
    ("mount_proc: true", "mount_proc", "clone_newpid: true"),
    ("is_root_rw: true", "is_root_rw", "keep_caps: false"),
    ('seccomp_policy_file: "/dev/null"', "seccomp_policy_file", "keep_env: false"),
    ("persona_read_implies_exec: true", "persona_read_implies_exec", "skip_setsid: false"),
    ("rlimit_core: 100", "rlimit_core", "rlimit_core: 0"),
    ("uidmap { inside_id: \"0\" outside_id: \"0\" }", "uidmap", "clone_newuser: true"),
    ("keep_env: true", "keep_env", "keep_env: false"),
    ("keep_caps: true", "keep_caps", "keep_caps: false"),
    ("disable_no_new_privs: true", "disable_no_new_privs", "disable_no_new_privs: false"),
    ("skip_setsid: true", "skip_setsid", "skip_setsid: false"),
    ("clone_newnet: false", "clone_newnet", "clone_newnet: true"),
    ("clone_newcgroup: 0", "clone_newcgroup", "clone_newcgroup: true"),
    # Synthesized files and symlinks expose nothing of the host, unless made into something else.
    ('mount { dst: "/etc/x" src_content: "a" rw: true }', "read-only",
     'mount { dst: "/etc/x" src_content: "a" }'),
    ('mount { dst: "/l" src: "/root" is_symlink: true is_bind: true }', "only a symlink",
     'mount { dst: "/l" src: "/root" is_symlink: true }'),
]


@pytest.mark.parametrize("bad,why,good", EDITS, ids=[e[0][:48] for e in EDITS])
def test_weakening_edit_is_refused_and_its_twin_accepted(tmp_path: Path, bad: str, why: str, good: str) -> None:
    with pytest.raises(ConfigError, match=why.replace("(", r"\(").replace(".", r"\.")):
        _check(tmp_path, bad)
    _check(tmp_path, good)


def test_a_symlinked_source_is_judged_by_its_target(tmp_path: Path) -> None:
    # Outside every forbidden tree (host /tmp among them, where a checkout may well live), so
    # that only the link's target decides.
    if not os.access("/opt", os.W_OK):
        pytest.skip("needs a writable /opt for links outside the forbidden trees")
    links = Path(tempfile.mkdtemp(prefix="sandboxd-test-links-", dir="/opt"))
    try:
        (links / "innocent").symlink_to("/root")
        (links / "harmless").symlink_to("/usr/share")
        with pytest.raises(ConfigError, match="/root"):
            _check(tmp_path, f'mount {{ dst: "/x" src: "{links}/innocent" is_bind: true }}')
        with pytest.raises(ConfigError, match="/root"):
            _check(tmp_path, f'mount {{ dst: "/x" src: "{links}/harmless/../innocent" is_bind: true }}')
        # The kernel resolves "link/.." from the link's target: /usr/share/../../root is /root.
        with pytest.raises(ConfigError, match="/root"):
            _check(tmp_path, f'mount {{ dst: "/x" src: "{links}/harmless/../../root" is_bind: true }}')
        _check(tmp_path, f'mount {{ dst: "/x" src: "{links}/harmless" is_bind: true }}')
        _check(tmp_path, f'mount {{ dst: "/x" src: "{links}/harmless/../../usr/lib" is_bind: true }}')
    finally:
        shutil.rmtree(links)


def test_the_daemons_own_paths_from_the_settings_are_forbidden(tmp_path: Path) -> None:
    keys = "/opt/keys/api.keys"
    settings = Settings(state_dir="/opt/sd/run", compile_cache_dir="/opt/sd/cache", auth=Auth(api_keys_file=keys))
    forbidden = settings_sources(settings)
    assert {"/opt/sd/run", "/opt/sd/cache", keys} <= set(forbidden)
    assert sys.prefix in forbidden  # tests run from a venv: the daemon's own
    for src in ("/opt/sd/cache", "/opt/sd/cache/c-gcc12/abc", "/opt/sd", "/opt/keys", sys.prefix,
                "/opt/sd/run/../run/1"):
        with pytest.raises(ConfigError, match="forbidden"):
            _check(tmp_path, f'mount {{ dst: "/x" src: "{src}" is_bind: true mandatory: false }}', forbidden=forbidden)
    # Twin: a sibling of those paths is fine.
    _check(tmp_path, 'mount { dst: "/x" src: "/opt/sd-other" is_bind: true mandatory: false }', forbidden=forbidden)


def test_a_missing_required_field_is_refused(tmp_path: Path) -> None:
    for line in ("mode: ONCE", "keep_env: false", "clone_newcgroup: true"):
        assert line in SHIPPED
        with pytest.raises(ConfigError, match="must be set explicitly"):
            _policy_with(tmp_path, SHIPPED.replace(line + "\n", "")).check_profile("python")


@pytest.mark.parametrize("profile", sorted({r.profile for r in RECIPES.values()}))
def test_shipped_profiles_pass_with_every_daemon_path_forbidden(profile: str) -> None:
    forbidden = settings_sources(Settings())
    Policy(str(REPO / "jail-configs"), "/bin/true").check_profile(profile, "/opt/sandboxd/run", forbidden=forbidden)


def test_canary_maps_jail_mounts_to_the_host_paths_they_show() -> None:
    from sandboxd.canary import _exposed_host_paths

    host = ("27 1 254:0 / / rw - ext4 /dev/vda rw\n24 27 0:6 / /dev rw - devtmpfs devtmpfs rw\n"
            "90 27 254:0 /srv/export /mnt/export rw - ext4 /dev/vda rw\n")
    jail = ("175 78 0:60 / / ro - tmpfs none rw\n177 175 254:0 /usr /usr ro - ext4 /dev/vda rw\n"
            "182 175 0:66 /dynamic.1//deleted /etc/passwd ro - tmpfs none rw\n"
            "190 175 0:6 /null /dev/null rw - devtmpfs devtmpfs rw\n"
            "197 175 254:0 /tmp/x/sessions/7 /mnt/data rw - ext4 /dev/vda rw\n"
            "198 175 254:0 /root /data\\040dir ro - ext4 /dev/vda rw\n")
    exposed = _exposed_host_paths(jail, host)
    # nsjail's own tmpfs mounts match no host device; the per-run session bind is skipped.
    assert exposed == {"/usr": ["/usr"], "/dev/null": ["/dev/null"], "/data dir": ["/root"]}
    # A host filesystem mounted twice shows both host paths, and both are judged.
    assert _exposed_host_paths("1 0 254:0 /srv/export/a /a ro - ext4 x rw\n", host) == {
        "/a": ["/srv/export/a", "/mnt/export/a"]}
    # A host mount that went away while the probe ran (its device number reused) is ignored.
    gone = host + "99 27 0:60 / /run/other rw - tmpfs tmpfs rw\n"
    assert "/" in _exposed_host_paths(jail, gone) and "/" not in _exposed_host_paths(jail, gone, host)
