"""The jail policy: static nsjail profiles in jail-configs/, plus per-run argv overrides.

Per-run values are separate argv items after --config, never templated into config text, so
the files an auditor reads are exactly the files nsjail loads.
"""

from __future__ import annotations

import math
import os
import re

import msgspec

from .errors import ConfigError
from .languages import SOURCE_DIR

__all__ = ["JailRun", "Policy", "INSIDE_ID", "SESSION_MOUNT"]

INSIDE_ID = 1000  # the uid/gid user code sees; mapped to a per-session outside id
SESSION_MOUNT = "/mnt/data"
SECCOMP_FILE = "seccomp.kafel"
# Lines a profile must not contain: each would undo a per-run guarantee.
_FORBIDDEN = {
    "uidmap": "uid maps are per session (nsjail appends, it does not replace)",
    "gidmap": "gid maps are per session",
    "keep_env: true": "the environment is an explicit allowlist",
    "keep_caps: true": "jails keep no capabilities",
    "disable_no_new_privs: true": "no_new_privs must stay on",
    "clone_newnet: false": "jails get no network",
    "clone_newuser: false": "jails need their own user namespace",
    "clone_newpid: false": "jails need their own pid namespace",
    "clone_newns: false": "jails need their own mount namespace",
    "iface_own": "jails get only the loopback interface",
    "macvlan_iface": "jails get only the loopback interface",
    "seccomp_string": "the seccomp policy lives in seccomp.kafel",
}


class JailRun(msgspec.Struct, frozen=True, kw_only=True):
    profile: str
    session_dir: str
    source_dir: str
    outside_uid: int
    wall_timeout_s: float
    file_max_bytes: int
    open_files_max: int
    log_fd: int
    program: tuple[str, ...]
    env: tuple[str, ...] = ()


class Policy:
    def __init__(self, configs_dir: str, nsjail_path: str) -> None:
        self.configs_dir = os.path.abspath(configs_dir)
        self.nsjail_path = nsjail_path
        self.seccomp_path = os.path.join(self.configs_dir, SECCOMP_FILE)
        if not os.path.isfile(self.seccomp_path):
            raise ConfigError(f"seccomp policy missing: {self.seccomp_path}")
        if not os.access(nsjail_path, os.X_OK):
            raise ConfigError(f"nsjail is not executable at {nsjail_path}")

    def profile_path(self, profile: str) -> str:
        if not re.fullmatch(r"[a-z0-9_-]+", profile):
            raise ConfigError(f"invalid profile name {profile!r}")
        return os.path.join(self.configs_dir, f"{profile}.cfg")

    def check_profile(self, profile: str) -> None:
        """Fail fast on a profile that is missing, unnamed, or weakens a per-run guarantee."""
        path = self.profile_path(profile)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"jail profile {path}: {exc.strerror}") from exc
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        if not re.search(rf'^name:\s*"{re.escape(profile)}"', code, re.M):
            raise ConfigError(f"{path} must open with name: \"{profile}\"")
        if not re.search(r"^description:", code, re.M):
            raise ConfigError(f"{path} needs a description")
        for needle, why in _FORBIDDEN.items():
            if re.search(rf"^\s*{re.escape(needle)}", code, re.M):
                raise ConfigError(f"{path}: '{needle}' is not allowed: {why}")

    def argv(self, run: JailRun) -> list[str]:
        ids = f"{INSIDE_ID}:{run.outside_uid}:1"
        # nsjail's own limit is a backstop a second after the daemon's own timer.
        time_limit_s = math.ceil(run.wall_timeout_s) + 1
        fsize_mib = max(1, math.ceil(run.file_max_bytes / (1024 * 1024)))
        return [
            self.nsjail_path,
            "--config", self.profile_path(run.profile),
            "--seccomp_policy", self.seccomp_path,
            "--log_fd", str(run.log_fd),
            "--user", ids,
            "--group", ids,
            "--time_limit", str(time_limit_s),
            "--rlimit_fsize", str(fsize_mib),
            "--rlimit_nofile", str(run.open_files_max),
            # After the config's mounts, so these land on top of its tmpfs /tmp.
            "--bindmount", f"{run.session_dir}:{SESSION_MOUNT}",
            "--bindmount_ro", f"{run.source_dir}:{SOURCE_DIR}",
            *(item for kv in run.env for item in ("--env", kv)),
            "--",
            *run.program,
        ]
