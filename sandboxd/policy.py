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
from .pbtext import Message, Value, parse
from .languages import SOURCE_DIR

__all__ = ["JailRun", "Policy", "INSIDE_ID", "JAIL_INIT", "SESSION_MOUNT", "NAMESPACES"]

INSIDE_ID = 1000  # the uid/gid user code sees; mapped to a per-session outside id
# The jail's pid 1. A program running as pid 1 ignores every signal it has no handler for
# (its own SIGALRM, SIGTERM, `kill -SEGV $$`) and inherits every orphan as a zombie; tini
# forwards signals, reaps orphans and exits with the program's status (128+N for a signal).
JAIL_INIT = ("/usr/bin/tini", "--")
SESSION_MOUNT = "/mnt/data"
SECCOMP_FILE = "seccomp.kafel"
NAMESPACES = ("clone_newnet", "clone_newuser", "clone_newns", "clone_newpid", "clone_newipc", "clone_newuts",
              "clone_newcgroup")
# Fields a profile must not set at all: each would undo a per-run guarantee.
_FORBIDDEN = {
    "uidmap": "uid maps are per session (nsjail appends, it does not replace)",
    "gidmap": "gid maps are per session",
    "iface_own": "jails get only the loopback interface",
    "macvlan_iface": "jails get only the loopback interface",
    "seccomp_string": "the seccomp policy lives in seccomp.kafel",
    "chroot": "the root is nsjail's empty tmpfs, not a host directory",
}
# Fields that must be false when present.
_MUST_BE_FALSE = {
    "keep_env": "the environment is an explicit allowlist",
    "keep_caps": "jails keep no capabilities",
    "disable_no_new_privs": "no_new_privs must stay on",
    "iface_no_lo": "loopback must exist (programs expect it)",
}
# Host paths no jail may see, whole or in part.
FORBIDDEN_SOURCES = ("/root", "/home", "/var", "/run", "/srv", "/proc", "/sys", "/boot", "/etc/shadow",
                     "/etc/ssh", "/etc/sandboxd")
# Read-write binds a profile may have: device nodes whose writes go nowhere.
RW_BIND_ALLOWED = ("/dev/null", "/dev/zero")


def _one(msg: Message, key: str, default: Value | None = None) -> Value | None:
    values = msg.get(key)
    return values[-1] if values else default


def _sub(msg: Message, key: str) -> list[Message]:
    return [v for v in msg.get(key, []) if isinstance(v, dict)]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


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
    # Extra read-only binds (host path, jail path), e.g. a compile-cache entry at /tmp/bin.
    ro_binds: tuple[tuple[str, str], ...] = ()


class Policy:
    def __init__(self, configs_dir: str, nsjail_path: str) -> None:
        self.configs_dir = os.path.abspath(configs_dir)
        self.nsjail_path = nsjail_path
        self.seccomp_path = os.path.join(self.configs_dir, SECCOMP_FILE)
        if not os.path.isfile(self.seccomp_path):
            raise ConfigError(f"seccomp policy missing: {self.seccomp_path}")
        if not os.access(nsjail_path, os.X_OK):
            raise ConfigError(f"nsjail is not executable at {nsjail_path}")
        if not os.access(JAIL_INIT[0], os.X_OK):
            raise ConfigError(f"the jail init {JAIL_INIT[0]} is missing (apt-get install tini)")

    def profile_path(self, profile: str) -> str:
        if not re.fullmatch(r"[a-z0-9_-]+", profile):
            raise ConfigError(f"invalid profile name {profile!r}")
        return os.path.join(self.configs_dir, f"{profile}.cfg")

    def load(self, profile: str) -> Message:
        path = self.profile_path(profile)
        try:
            with open(path, encoding="utf-8") as fh:
                return parse(fh.read())
        except OSError as exc:
            raise ConfigError(f"jail profile {path}: {exc.strerror}") from exc

    def check_profile(self, profile: str, state_dir: str | None = None) -> Message:
        """Fail fast on a profile that is missing, unnamed, or weakens a per-run guarantee."""
        path = self.profile_path(profile)
        msg = self.load(profile)
        if _one(msg, "name") != profile:
            raise ConfigError(f'{path} must open with name: "{profile}"')
        if not _one(msg, "description"):
            raise ConfigError(f"{path} needs a description")
        for key, why in _FORBIDDEN.items():
            if key in msg:
                raise ConfigError(f"{path}: '{key}' is not allowed: {why}")
        for key, why in _MUST_BE_FALSE.items():
            if _one(msg, key, False) is not False:
                raise ConfigError(f"{path}: '{key}' must be false: {why}")
        for ns in NAMESPACES:
            if _one(msg, ns) is not True:
                raise ConfigError(f"{path}: '{ns}: true' is required: every namespace is separate")
        forbidden = FORBIDDEN_SOURCES + ((os.path.abspath(state_dir),) if state_dir else ())
        for mount in _sub(msg, "mount"):
            src, dst = str(_one(mount, "src", "")), str(_one(mount, "dst", ""))
            if _one(mount, "is_bind", False) is True:
                if any(_under(src, f) or _under(f, src) for f in forbidden if src):
                    raise ConfigError(f"{path}: bind of {src} would expose a forbidden host path")
                if _one(mount, "rw", False) is True and dst not in RW_BIND_ALLOWED:
                    raise ConfigError(f"{path}: bind of {src} must be read-only")
        return msg

    def check_submounts(self, profile: str, mountinfo: str | None = None) -> None:
        """nsjail binds recursively but remounts only the top read-only: a writable host mount
        below a read-only bind source would be writable in the jail. Refuse to start then."""
        if mountinfo is None:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
                mountinfo = fh.read()
        writable = []
        for line in mountinfo.splitlines():
            fields = line.split()
            if len(fields) > 5 and "rw" in fields[5].split(","):
                writable.append(fields[4].replace("\\040", " "))
        for mount in _sub(self.load(profile), "mount"):
            src = str(_one(mount, "src", ""))
            if _one(mount, "is_bind", False) is not True or _one(mount, "rw", False) is True or not src:
                continue
            for point in writable:
                if point != src and _under(point, os.path.realpath(src)):
                    raise ConfigError(
                        f"profile {profile}: {point} is a writable mount below the read-only bind of {src}; "
                        "nsjail's read-only remount is not recursive, so jails could write there"
                    )

    def describe(self, profile: str, uid_range: tuple[int, int]) -> str:
        """The effective policy of a profile, for an auditor, from the parsed file itself."""
        msg = self.load(profile)
        lines = [f"profile {profile}: {_one(msg, 'description', '')}"]
        lines.append("  namespaces: " + ", ".join(
            f"{ns.removeprefix('clone_new')}={'on' if _one(msg, ns) is True else 'OFF'}" for ns in NAMESPACES))
        lines.append(f"  network: {'loopback only' if not (_one(msg, 'iface_own') or _one(msg, 'macvlan_iface')) else 'EXTRA'}")
        lines.append(f"  ids: inside {INSIDE_ID}:{INSIDE_ID} -> outside one uid/gid per session in "
                     f"{uid_range[0]}..{uid_range[1]} (never 0)")
        lines.append(f"  capabilities: {'kept' if _one(msg, 'keep_caps', False) else 'none'}; no_new_privs: "
                     f"{'OFF' if _one(msg, 'disable_no_new_privs', False) else 'on'}")
        lines.append(f"  cwd: {_one(msg, 'cwd', '/')}; hostname: {_one(msg, 'hostname', 'NSJAIL')}; "
                     f"pid 1: {' '.join(JAIL_INIT)} <program>")
        lines.append("  mounts (in order; root is an empty read-only tmpfs):")
        for m in _sub(msg, "mount"):
            dst = _one(m, "dst", "")
            if _one(m, "is_symlink", False):
                what, mode = f"symlink -> {_one(m, 'src')}", ""
            elif "src_content" in m:
                what, mode = "synthesized file", "ro"
            elif _one(m, "is_bind", False):
                what = f"bind {_one(m, 'src')}" + ("" if _one(m, "mandatory", True) else " (if present)")
                mode = "rw" if _one(m, "rw", False) else "ro"
            else:
                what = f"{_one(m, 'fstype')} {_one(m, 'options', '')}".strip()
                mode = "rw" if _one(m, "rw", False) else "ro"
            flags = [f for f in ("nosuid", "nodev", "noexec") if _one(m, f, False)]
            lines.append(f"    {dst:<28} {mode:<3} {what}" + (f" [{','.join(flags)}]" if flags else ""))
        lines.append(f"    {SESSION_MOUNT:<28} rw  bind <session tmpfs> (per run; nosuid,nodev, size and inode caps)")
        lines.append(f"    {SOURCE_DIR:<28} ro  bind <per-run source directory> (per run)")
        lines.append("  environment (nothing else is passed):")
        for kv in msg.get("envar", []):
            lines.append(f"    {kv}")
        rl = [f"{k.removeprefix('rlimit_')}={_one(msg, k)}" for k in sorted(msg) if k.startswith("rlimit_")]
        lines.append("  rlimits (backstop; cgroups are authoritative): " + ", ".join(rl)
                     + ", fsize=<limits.file_max_bytes>, nofile=<limits.open_files_max> (per run)")
        lines.append(f"  seccomp: {self.seccomp_path}")
        return "\n".join(lines)

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
            *(item for host, jail in run.ro_binds for item in ("--bindmount_ro", f"{host}:{jail}")),
            *(item for kv in run.env for item in ("--env", kv)),
            "--",
            *JAIL_INIT,
            *run.program,
        ]
