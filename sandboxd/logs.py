"""Logs: one JSON object per line on stderr (journald and container runtimes keep lines whole),
with the id of the request being served on every line logged while serving it.

Session and file IDs are capabilities: whoever reads one can fetch the files. Code logs
`ids.redact(id)` only, and as a second line of defence the formatter cuts every ID-shaped
token (21 characters of the nanoid alphabet standing alone) and every JWT-shaped token down
to a short prefix, whatever logged it (aiohttp's own errors, a traceback, an exception text).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
from typing import TextIO

from .ids import ID_LENGTH

__all__ = ["JsonFormatter", "setup", "set_level", "scrub", "REQUEST_ID", "LEVELS"]

LEVELS = ("debug", "info", "warning", "error")

# The id of the request the current task serves ("" outside requests); asyncio copies it
# into tasks and threads started while serving.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("sandboxd_request_id", default="")

_ID_SHAPED = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{%d}(?![A-Za-z0-9_-])" % ID_LENGTH)
_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


def scrub(text: str) -> str:
    """`text` with ID-shaped and JWT-shaped tokens cut to a prefix too short to use."""
    text = _JWT_SHAPED.sub(lambda m: m.group(0)[:6] + "…[jwt]", text)
    return _ID_SHAPED.sub(lambda m: m.group(0)[:6] + "…", text)


class JsonFormatter(logging.Formatter):
    """time, level, logger, message; request_id when serving; then any `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            out["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps({k: scrub(v) if isinstance(v, str) else v for k, v in out.items()},
                          ensure_ascii=False, default=str)


def setup(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on stderr for the whole process (sandboxd's loggers and aiohttp's)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    logging.getLogger().setLevel(level.upper())
