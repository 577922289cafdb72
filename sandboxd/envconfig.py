"""Environment overrides for the common settings: `SANDBOXD_*` variables, applied over the
TOML file and validated by the same struct (a bad value is a ConfigError naming the variable).

Only the settings listed here can be set this way. Secrets are not among them: API keys come
from the file named by `auth.api_keys_file` (systemd's LoadCredential= can provide it), so
they never sit in a process environment that `ps e` or /proc/<pid>/environ may show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

from .errors import ConfigError

__all__ = ["ENV_SETTINGS", "apply_env", "blame_env"]

# variable -> dotted setting path
ENV_SETTINGS: dict[str, str] = {
    "SANDBOXD_HOST": "host",
    "SANDBOXD_PORT": "port",
    "SANDBOXD_STATE_DIR": "state_dir",
    "SANDBOXD_LOG_LEVEL": "log_level",
    "SANDBOXD_AUTH_MODE": "auth.mode",
    "SANDBOXD_API_KEYS_FILE": "auth.api_keys_file",
    "SANDBOXD_MAX_CONCURRENT_RUNS": "max_concurrent_runs",
    "SANDBOXD_QUEUE_WAIT_S": "queue_wait_s",
    "SANDBOXD_SHUTDOWN_DRAIN_S": "shutdown_drain_s",
    "SANDBOXD_METRICS_REQUIRE_AUTH": "metrics_require_auth",
    "SANDBOXD_WALL_TIMEOUT_S": "limits.wall_timeout_s",
    "SANDBOXD_MEMORY_MAX_BYTES": "limits.memory_max_bytes",
    "SANDBOXD_PIDS_MAX": "limits.pids_max",
    "SANDBOXD_CPU_MAX_CORES": "limits.cpu_max_cores",
    "SANDBOXD_SESSION_TTL_S": "storage.session_ttl_s",
    "SANDBOXD_STORAGE_MAX_BYTES": "storage.storage_max_bytes",
    "SANDBOXD_UPLOAD_MAX_BYTES": "storage.upload_max_bytes",
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _field_type(schema: type, path: str) -> msgspec.inspect.Type:
    info: msgspec.inspect.Type = msgspec.inspect.type_info(schema)
    for part in path.split("."):
        assert isinstance(info, msgspec.inspect.StructType), path
        info = next(f.type for f in info.fields if f.name == part)
    return info


def _parse(var: str, raw: str, info: msgspec.inspect.Type) -> object:
    """The string as the value the file would hold; ranges are checked by the struct later."""
    kinds = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    if raw == "" and any(isinstance(k, msgspec.inspect.NoneType) for k in kinds):
        return None
    kind = next(k for k in kinds if not isinstance(k, msgspec.inspect.NoneType))
    value = raw.strip()
    try:
        if isinstance(kind, msgspec.inspect.BoolType):
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
            raise ValueError
        if isinstance(kind, msgspec.inspect.IntType):
            return int(value, 10)
        if isinstance(kind, msgspec.inspect.FloatType):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
    except ValueError:
        raise ConfigError(f"{var}: expected {type(kind).__name__.removesuffix('Type').lower()}, "
                          f"got {raw!r}") from None
    return raw  # strings and string literals (auth.mode, log_level) as given


def apply_env(data: dict[str, object], environ: Mapping[str, str], schema: type) -> dict[str, str]:
    """Set each listed variable present in `environ` into the decoded file `data`;
    returns {variable: dotted path} of what was applied (for error messages)."""
    applied: dict[str, str] = {}
    for var, path in ENV_SETTINGS.items():
        if var not in environ:
            continue
        value = _parse(var, environ[var], _field_type(schema, path))
        *tables, key = path.split(".")
        node = data
        for table in tables:
            sub = node.setdefault(table, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{var}: `{table}` in the config file is not a table")
            node = sub
        node[key] = value
        applied[var] = path
    return applied


def blame_env(message: str, applied: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """A validation message, naming the variable when one of them set the failing setting."""
    for var, path in applied.items():
        if f"`$.{path}`" in message:
            return f"{var}={environ[var]!r}: {message}"
    if applied:
        return f"{message} (environment overrides: {', '.join(sorted(applied))})"
    return message
