"""A reader for the protobuf text format of nsjail's configs (just what profiles use).

The daemon reads the same files nsjail loads, to check them at start-up and to print them for
an auditor (`sandboxd policy show`), so the printout cannot drift from what is enforced.
"""

from __future__ import annotations

import re
from typing import Union

from .errors import ConfigError

__all__ = ["Message", "parse"]

Value = Union[str, int, bool, "Message"]
Message = dict[str, list[Value]]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*")
      | (?P<punct>[{}:])
      | (?P<word>[A-Za-z0-9_.+-]+)
    )""",
    re.X,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ConfigError(f"cannot parse nsjail config near: {text[pos:pos + 40]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "comment":
            out.append((kind, m.group(kind)))
    return out


def _unquote(s: str) -> str:
    body = s[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _scalar(kind: str, tok: str) -> Value:
    if kind == "string":
        return _unquote(tok)
    if tok in ("true", "false"):
        return tok == "true"
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    return tok  # enum identifiers such as ONCE, INF, SOFT


def parse(text: str) -> Message:
    toks = _tokens(text)
    msg, _ = _message(toks, 0, top=True)
    return msg


def _message(toks: list[tuple[str, str]], pos: int, top: bool) -> tuple[Message, int]:
    msg: Message = {}
    while pos < len(toks):
        kind, tok = toks[pos]
        if tok == "}" and kind == "punct":
            if top:
                raise ConfigError("unbalanced '}' in nsjail config")
            return msg, pos + 1
        if kind != "word":
            raise ConfigError(f"expected a field name in nsjail config, got {tok!r}")
        key = tok
        pos += 1
        if pos < len(toks) and toks[pos] == ("punct", ":"):
            pos += 1
        if pos >= len(toks):
            raise ConfigError(f"field {key} has no value")
        kind, tok = toks[pos]
        if (kind, tok) == ("punct", "{"):
            sub, pos = _message(toks, pos + 1, top=False)
            msg.setdefault(key, []).append(sub)
            continue
        if kind == "string":
            # Adjacent string literals concatenate, as in protobuf.
            parts = []
            while pos < len(toks) and toks[pos][0] == "string":
                parts.append(_unquote(toks[pos][1]))
                pos += 1
            msg.setdefault(key, []).append("".join(parts))
            continue
        msg.setdefault(key, []).append(_scalar(kind, tok))
        pos += 1
    if not top:
        raise ConfigError("unbalanced '{' in nsjail config")
    return msg, pos
