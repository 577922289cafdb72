"""One error hierarchy for the whole daemon; only sandboxd.http maps it to HTTP."""

from __future__ import annotations

__all__ = [
    "SandboxdError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "InputsUnavailable",
    "RateLimited",
    "Unavailable",
    "JailFailure",
    "ConfigError",
]


class SandboxdError(Exception):
    """Base class. `status` and `code` are what the HTTP layer sends."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(SandboxdError):
    status = 400
    code = "bad_request"


class Unauthorized(SandboxdError):
    status = 401
    code = "unauthorized"


class NotFound(SandboxdError):
    """Unknown session and unknown file share this one answer (IDs are capabilities)."""

    status = 404
    code = "not_found"

    def __init__(self, message: str = "Not found") -> None:
        super().__init__(message)


class PayloadTooLarge(SandboxdError):
    status = 413
    code = "payload_too_large"


class RequestTimeout(SandboxdError):
    """The client stopped sending its request body."""

    status = 408
    code = "request_timeout"


class InputsUnavailable(SandboxdError):
    status = 422
    code = "One or more input files are unavailable"


class RateLimited(SandboxdError):
    status = 429
    code = "rate_limited"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"All run slots are busy; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Unavailable(SandboxdError):
    """The daemon cannot serve right now (storage full, shutting down)."""

    status = 503
    code = "unavailable"


class JailFailure(SandboxdError):
    """nsjail could not launch the program: an infrastructure fault, not user code."""

    status = 500
    code = "jail_failure"

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        # nsjail's own error lines, for the log and the start-up checks only: they name host
        # paths, so they never reach a client.
        self.reason = reason


class ConfigError(SandboxdError):
    """Invalid settings or policy; raised at startup, never while serving."""

    code = "config_error"
