"""The jail policy: static nsjail profiles in jail-configs/, plus per-run argv overrides.

Per-run values are separate argv items after --config, never templated into config text, so
the files an auditor reads are exactly the files nsjail loads.
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import TYPE_CHECKING

import msgspec

from .errors import ConfigError
from .pbtext import Message, Value, parse
from .languages import SOURCE_DIR

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["JailRun", "Policy", "settings_sources", "INSIDE_ID", "JAIL_INIT", "SESSION_MOUNT", "NAMESPACES"]

INSIDE_ID = 1000  # the uid/gid user code sees; mapped to a per-session outside id
# The jail's pid 1. A program running as pid 1 ignores every signal it has no handler for
# (its own SIGALRM, SIGTERM, `kill -SEGV $$`) and inherits every orphan as a zombie; tini
# forwards signals, reaps orphans and exits with the program's status (128+N for a signal).
JAIL_INIT = ("/usr/bin/tini", "--")
SESSION_MOUNT = "/mnt/data"
SECCOMP_FILE = "seccomp.kafel"
NAMESPACES = ("clone_newnet", "clone_newuser", "clone_newns", "clone_newpid", "clone_newipc", "clone_newuts",
              "clone_newcgroup")
# The checker is an allowlist: a profile may set these top-level fields and nothing else, so a
# field nsjail learns later (or one this list forgot) is refused by name instead of passing
# unseen. Each value is what the field may hold; None means any value (it is checked elsewhere
# or cannot weaken the jail).
_FIELDS: dict[str, object] = {
    "name": None, "description": None, "hostname": None, "cwd": None,
    "time_limit": None,  # overridden per run; the daemon's own timer is authoritative
    "envar": None,       # the environment allowlist itself
    # Threat: mode LISTEN serves the jail on a host TCP port, RERUN runs it forever.
    "mode": "ONCE",
    # Threat: the daemon's environment (its API key) inside the jail.
    "keep_env": False,
    # Threat: capabilities or setuid binaries giving root inside the jail.
    "keep_caps": False,
    "disable_no_new_privs": False,
    # Threat: job-control signals and terminal ioctls aimed at the daemon's session.
    "skip_setsid": False,
    # Programs expect a loopback interface; it leads nowhere outside the jail.
    "iface_no_lo": False,
    # rlimits are a backstop (cgroups are authoritative); fsize and nofile come per run.
    "rlimit_as_type": None, "rlimit_core": 0, "rlimit_cpu_type": None, "rlimit_nofile": None,
    "rlimit_nproc_type": None, "rlimit_stack_type": None,
    # Threat: every shared kernel namespace is a way out or a way to observe others.
    **{ns: True for ns in NAMESPACES},
    "mount": None,       # every mount is checked below
}
# Fields that must appear, so nsjail's defaults (some of them weaker) never decide.
_REQUIRED = ("name", "description", "mode", "keep_env", *NAMESPACES)
# Named here so the refusal says why; every other unknown field is refused too.
_WHY_NOT = {
    "uidmap": "uid maps are per session (nsjail appends, it does not replace)",
    "gidmap": "gid maps are per session",
    "iface_own": "jails get only the loopback interface",
    "macvlan_iface": "jails get only the loopback interface",
    "user_net": "jails get only the loopback interface (no user-mode networking)",
    "seccomp_string": "the seccomp policy lives in seccomp.kafel",
    "seccomp_policy_file": "the seccomp policy is passed per run",
    "chroot": "the root is nsjail's empty tmpfs, not a host directory",
    "pass_fd": "only stdin, stdout and stderr reach the jail",
    "exec_bin": "the program is passed per run, behind the jail's init",
    "disable_rl": "the rlimit backstop stays on",
    "mount_proc": "/proc is an explicit read-only mount",
    "is_root_rw": "the jail's root stays read-only",
}
# Mount fields allowed; anything else (prefix_src_env, ...) is refused by name.
_MOUNT_FIELDS = frozenset({"dst", "src", "src_content", "is_bind", "is_symlink", "is_dir", "rw", "mandatory",
                           "fstype", "options", "nosuid", "nodev", "noexec"})
# Filesystems a non-bind mount may create. Threat: sysfs, cgroup, cgroup2, mqueue, devpts, ...
# expose host-wide kernel state or new kernel code paths; a writable proc exposes sysctls.
_FSTYPES = ("tmpfs", "proc")  # proc only read-only
# Host paths no jail may see, whole or in part (the settings add the daemon's own paths).
FORBIDDEN_SOURCES = ("/root", "/home", "/var", "/run", "/srv", "/proc", "/sys", "/boot", "/tmp", "/etc/shadow",
                     "/etc/gshadow", "/etc/ssh", "/etc/sandboxd", "/etc/credstore", "/etc/credstore.encrypted")
# /dev is forbidden whole; only these character devices may be bound, each read-only unless
# its writes go nowhere (RW_BIND_ALLOWED).
DEVICE_SOURCES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
RW_BIND_ALLOWED = ("/dev/null", "/dev/zero")


def _one(msg: Message, key: str, default: Value | None = None) -> Value | None:
    values = msg.get(key)
    return values[-1] if values else default


def _sub(msg: Message, key: str) -> list[Message]:
    return [v for v in msg.get(key, []) if isinstance(v, dict)]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _host_forms(src: str) -> tuple[str, ...]:
    """A host path as written (normalized) and as the kernel will resolve it (symlinks
    followed), so `/usr/../root`, `//root` and a symlink to /root all compare as /root."""
    norm = os.path.normpath(src)
    if norm.startswith("//"):  # POSIX keeps a leading "//"; Linux treats it as "/"
        norm = "/" + norm.lstrip("/")
    # realpath of the raw path too: the kernel resolves "link/.." against the link's target,
    # which normpath (a string operation) gets wrong.
    return tuple(dict.fromkeys((os.path.realpath(src), os.path.realpath(norm), norm)))


def _host_forms_all(paths: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(form for p in paths for form in _host_forms(p))


def settings_sources(settings: Settings) -> tuple[str, ...]:
    """Host paths of this daemon that no profile may bind: its state (session tmpfs, per-run
    sources, the lock), the compile cache (other tenants' programs), its key files, its venv."""
    auth = settings.auth
    key_files = [v for f in auth.__struct_fields__
                 if f.endswith("_file") and isinstance(v := getattr(auth, f), str) and v]
    venv = [sys.prefix] if sys.prefix != sys.base_prefix else []  # a system python's prefix is /usr
    return tuple(os.path.abspath(p) for p in (settings.state_dir, settings.compile_cache_dir, *key_files, *venv))


def _check_mount(path: str, mount: Message, denied: tuple[str, ...]) -> None:
    unknown = sorted(set(mount) - _MOUNT_FIELDS)
    dst = _one(mount, "dst")
    if unknown:
        raise ConfigError(f"{path}: mount {dst}: field '{unknown[0]}' is not allowed")
    if not isinstance(dst, str) or not dst.startswith("/"):
        raise ConfigError(f"{path}: every mount needs an absolute dst, not {dst!r}")
    src, rw = _one(mount, "src"), _one(mount, "rw", False) is not False
    if _one(mount, "is_symlink", False) is True:
        # src is the link's target inside the jail, resolved there: no host path is exposed.
        if _one(mount, "is_bind", False) is not False or rw or "src_content" in mount:
            raise ConfigError(f"{path}: symlink {dst} must be only a symlink")
        return
    if "src_content" in mount:
        if src is not None or _one(mount, "is_bind", False) is not False or rw:
            raise ConfigError(f"{path}: synthesized file {dst} must be read-only and have no src")
        return
    if _one(mount, "is_bind", False) is not True:
        fstype = _one(mount, "fstype")
        if src is not None:
            raise ConfigError(f"{path}: mount {dst}: a src needs is_bind: true (it names a host path)")
        if fstype not in _FSTYPES:
            raise ConfigError(f"{path}: mount {dst}: fstype {fstype!r} is not allowed (only tmpfs, and "
                              "proc read-only; no sysfs, cgroup, mqueue, devpts, ...)")
        if fstype == "proc" and rw:
            raise ConfigError(f"{path}: proc at {dst} must be read-only (a writable proc exposes sysctls)")
        if fstype == "tmpfs":
            opts = str(_one(mount, "options", "")).split(",")
            if not any(o.startswith("size=") for o in opts) or _one(mount, "nosuid") is not True \
                    or _one(mount, "nodev") is not True:
                raise ConfigError(f"{path}: tmpfs at {dst} needs a size= option, nosuid and nodev "
                                  "(host memory, planted setuid files and device nodes)")
        return
    # A bind of a host path: the source is where the host is exposed.
    if not isinstance(src, str) or not src.startswith("/"):
        raise ConfigError(f"{path}: bind at {dst}: src {src!r} must be an absolute host path "
                          "(a relative one resolves from the daemon's working directory)")
    forms = _host_forms(src)
    for form in forms:
        if _under("/dev", form) or (_under(form, "/dev") and form not in DEVICE_SOURCES):
            raise ConfigError(f"{path}: bind of {src} would expose host devices (only "
                              f"{', '.join(DEVICE_SOURCES)} may be bound)")
        for f in denied:
            if _under(form, f) or _under(f, form):
                raise ConfigError(f"{path}: bind of {src} would expose the forbidden host path {f}")
    if rw and not all(form in RW_BIND_ALLOWED for form in forms):
        raise ConfigError(f"{path}: bind of {src} must be read-only (rw only for {', '.join(RW_BIND_ALLOWED)})")


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

    def check_profile(self, profile: str, state_dir: str | None = None, *,
                      forbidden: tuple[str, ...] = ()) -> Message:
        """Fail fast on a profile that is missing, unnamed, or weakens a per-run guarantee.

        An allowlist: every top-level field and every mount field must be one this checker knows,
        with a value it accepts. `forbidden` adds host paths no bind may reach (the daemon's own
        state, cache, keys and venv: `settings_sources(settings)`)."""
        path = self.profile_path(profile)
        msg = self.load(profile)
        for key in msg:
            if key not in _FIELDS:
                why = _WHY_NOT.get(key, "not on the profile field allowlist in sandboxd/policy.py")
                raise ConfigError(f"{path}: '{key}' is not allowed: {why}")
        for key in _REQUIRED:
            if key not in msg:
                raise ConfigError(f"{path}: '{key}' must be set explicitly (nsjail's default must not decide)")
        for key, want in _FIELDS.items():
            for value in msg.get(key, []) if want is not None else []:
                if type(value) is not type(want) or value != want:
                    shown = str(want).lower() if isinstance(want, bool) else want
                    raise ConfigError(f"{path}: '{key}' must be {shown}, not {value!r}")
        if _one(msg, "name") != profile:
            raise ConfigError(f'{path} must open with name: "{profile}"')
        if not _one(msg, "description"):
            raise ConfigError(f"{path} needs a description")
        extra = forbidden + ((state_dir,) if state_dir else ())
        denied = _host_forms_all(FORBIDDEN_SOURCES + tuple(os.path.abspath(p) for p in extra))
        for mount in msg.get("mount", []):
            if not isinstance(mount, dict):
                raise ConfigError(f"{path}: 'mount' must be a message {{ ... }}")
            _check_mount(path, mount, denied)
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
