"""Wire types of LibreChat's Code API. Requests ignore unknown fields (clients send extras)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = [
    "ARGS_MAX",
    "ARG_MAX_CHARS",
    "ARGS_TOTAL_MAX_BYTES",
    "FileRef",
    "ExecRequest",
    "OutFile",
    "ExecReply",
    "UploadedFile",
    "UploadReply",
    "BatchFile",
    "BatchReply",
    "ObjectInfo",
]


class FileRef(msgspec.Struct, kw_only=True):
    id: str
    name: str | None = None
    # Current clients name the storage session; older ones send session_id. Accept either.
    storage_session_id: str | None = None
    session_id: str | None = None


# Arguments reach the jail through nsjail's argv, and the kernel refuses an execve whose argv
# and environment exceed ARG_MAX (2 MiB on Linux) with E2BIG: bound them well below that.
ARGS_MAX = 256
ARG_MAX_CHARS = 64 * 1024
ARGS_TOTAL_MAX_BYTES = 256 * 1024


class ExecRequest(msgspec.Struct, kw_only=True):
    lang: str
    code: str
    args: Annotated[list[Annotated[str, Meta(max_length=ARG_MAX_CHARS)]], Meta(max_length=ARGS_MAX)] | None = None
    session_id: str | None = None
    # Milliseconds; may only lower the server's limit.
    timeout: Annotated[float, Meta(gt=0)] | None = None
    files: list[FileRef] | None = None
    user_id: str | None = None

    def __post_init__(self) -> None:
        if self.args and sum(len(a.encode("utf-8", "surrogatepass")) + 1 for a in self.args) > ARGS_TOTAL_MAX_BYTES:
            raise ValueError(f"args exceed {ARGS_TOTAL_MAX_BYTES} bytes in all")


class OutFile(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    name: str
    storage_session_id: str
    url: str | None = None
    type: str | None = None
    inherited: bool = False


class ExecReply(msgspec.Struct, kw_only=True):
    session_id: str
    stdout: str
    stderr: str
    exit_code: int
    code: int
    signal: str | None
    status: str
    message: str | None
    wall_time_ms: int
    cpu_time_ms: int
    memory_peak_bytes: int | None  # null where the kernel keeps no peak (cgroup v2 before 5.19)
    files: list[OutFile]
    deleted_files: list[str]


class UploadedFile(msgspec.Struct, kw_only=True):
    fileId: str
    filename: str


class UploadReply(msgspec.Struct, kw_only=True):
    message: str
    session_id: str
    storage_session_id: str
    files: list[UploadedFile]


class BatchFile(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    filename: str
    fileId: str | None = None
    error: str | None = None


class BatchReply(msgspec.Struct, kw_only=True):
    message: str
    storage_session_id: str
    session_id: str
    files: list[BatchFile]
    succeeded: int
    failed: int


class ObjectInfo(msgspec.Struct, kw_only=True, rename={"original_filename": "originalFilename"}):
    name: str
    original_filename: str
    size: int
    lastModified: str
    etag: str
    contentType: str
