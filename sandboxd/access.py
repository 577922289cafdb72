"""Per-request bookkeeping: a request id (echoed as `X-Request-Id`), one access log line,
and the request counters.

The access line names the route pattern (`/download/{sid}/{fid}`), never the path: the path
of most routes holds a session ID and a file ID, which are capabilities.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

from .logs import REQUEST_ID
from .metrics import Metrics

__all__ = ["access_middleware", "echo_request_id", "route_of", "REQUEST_ID_HEADER"]

log = logging.getLogger("sandboxd.access")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's own id is kept when it is short and plain (a proxy's UUID, say); anything else
# gets a fresh one, so a header cannot smuggle text or length into the logs.
_SANE_REQUEST_ID = re.compile(r"\A[A-Za-z0-9._:-]{8,64}\Z")
# What the log line and the metrics show for a request that matched no route.
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# nginx's convention for "the client closed the connection before the answer".
CLIENT_CLOSED = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    """The pattern of the route that matched (bounded, ID-free), or UNMATCHED."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def _request_id(request: web.Request) -> str:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    return incoming if _SANE_REQUEST_ID.match(incoming) else secrets.token_hex(8)


def access_middleware(metrics: Metrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = _request_id(request)
        token = REQUEST_ID.set(request_id)
        started = time.monotonic()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            if not resp.prepared:  # (a response the handler streamed got it in echo_request_id)
                resp.headers[REQUEST_ID_HEADER] = request_id
            return resp
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            route = route_of(request)
            metrics.request_done(route, status)
            # 503 is the daemon saying "not now" (draining, storage full), not a fault.
            level = logging.INFO if status < 500 else logging.WARNING if status == 503 else logging.ERROR
            method = request.method if request.method in _METHODS else "OTHER"
            log.log(level, "%s %s %d", method, route, status, extra={"fields": {
                "method": method, "route": route, "status": status,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            }})
            REQUEST_ID.reset(token)

    return middleware


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare, for a response a handler streams itself (a download): it is
    prepared inside the handler, where the request's id is still current."""
    request_id = REQUEST_ID.get()
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
