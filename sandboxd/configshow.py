"""`sandboxd config show`: the effective settings (defaults, file, environment, flags) as
TOML that `--config` accepts back, with every secret masked.

Masking rule, in one place: a setting is secret when its dotted path is listed in
SECRET_SETTINGS, or when its name contains one of SECRET_WORDS (and it is not a path to a
file, which is shown: the file's content is what is secret). A masked string shows as MASK;
a masked list keeps its length, so an operator can still count the configured keys.
"""

from __future__ import annotations

import json

import msgspec

from .settings import Settings

__all__ = ["render", "is_secret", "MASK", "SECRET_SETTINGS", "SECRET_WORDS"]

MASK = "********"
SECRET_SETTINGS = frozenset({"auth.api_keys"})
SECRET_WORDS = ("api_key", "secret", "password", "token", "private")
_PATH_SUFFIXES = ("_file", "_path", "_dir")


def is_secret(path: str) -> bool:
    name = path.rsplit(".", 1)[-1]
    if path in SECRET_SETTINGS:
        return True
    return any(w in name for w in SECRET_WORDS) and not name.endswith(_PATH_SUFFIXES)


def _mask(path: str, value: object) -> object:
    if isinstance(value, dict):
        return {k: _mask(f"{path}.{k}" if path else k, v) for k, v in value.items()}
    if not is_secret(path) or value is None or value == "":
        return value
    if isinstance(value, (list, tuple)):
        return [MASK for _ in value]
    return MASK


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _table(name: str, table: dict[str, object], out: list[str]) -> None:
    if name:
        out.append(f"\n[{name}]")
    for key, value in table.items():
        if value is None:
            out.append(f"# {key} is not set")
        elif not isinstance(value, dict):
            out.append(f"{key} = {_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            _table(f"{name}.{key}" if name else key, value, out)


def render(settings: Settings) -> str:
    data = _mask("", msgspec.to_builtins(settings))
    assert isinstance(data, dict)
    out = ["# sandboxd effective settings (secrets masked)"]
    _table("", data, out)
    return "\n".join(out) + "\n"
