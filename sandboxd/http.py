"""HTTP layer: the app factory, every route of LibreChat's Code API (at / and /v1), wire
decoding, and the one place where domain errors become status codes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import msgspec
from aiohttp import BodyPartReader, web
from aiohttp.hdrs import CONTENT_DISPOSITION
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import parse_content_disposition

from . import workspace
from .access import access_middleware, echo_request_id, route_of
from .auth import Authenticator
from .executors import in_file_pool
from .errors import BadRequest, NotFound, PayloadTooLarge, RateLimited, RequestTimeout, SandboxdError
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .schemas import BatchFile, BatchReply, ExecRequest, UploadedFile, UploadReply
from .sessions import Session, SessionStore, StoredFile

__all__ = ["create_app", "STORE", "READY"]

log = logging.getLogger(__name__)
T = TypeVar("T")
STORE = web.AppKey("store", SessionStore)
AUTH = web.AppKey("auth", Authenticator)
READY = web.AppKey("ready", dict)
BODIES = web.AppKey("bodies", asyncio.Semaphore)
UPLOAD_CHUNK_BYTES = 256 * 1024
DOWNLOAD_CHUNK_BYTES = 256 * 1024

_exec_decoder = msgspec.json.Decoder(ExecRequest)
_encoder = msgspec.json.Encoder()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(obj), status=status, content_type="application/json")


def _error(status: int, error: str, message: str, **extra: object) -> web.Response:
    return _json({"error": error, "message": message, **extra}, status=status)


# The response a handler has already started (headers queued or sent), per request task: once
# it exists, an error can no longer be answered with a response of its own (see below).
_STARTED: contextvars.ContextVar[list[web.StreamResponse] | None] = contextvars.ContextVar(
    "sandboxd_started_response", default=None)


async def _note_started(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs in the handler's task, so it sees the middleware's slot."""
    started = _STARTED.get()
    if started is not None:
        started.append(response)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The only translation of errors to HTTP. Unknown failures get a fixed body, no traceback.

    Once a handler has prepared its response (a download streaming), an error is never answered
    with a second response: on a keep-alive connection those bytes would be read as the end of
    the body or as the answer to the client's next request. The connection is dropped instead,
    so the client sees a short body and EOF."""
    started: list[web.StreamResponse] = []
    token = _STARTED.set(started)
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if started:
            log.warning("%s %s: failed after the response started (%s); connection dropped",
                        request.method, route_of(request), type(exc).__name__)
            drop_connection(request)
            return started[0]
        return _translate(request, exc)
    finally:
        _STARTED.reset(token)


def drop_connection(request: web.Request) -> None:
    """End the connection without completing the response in flight."""
    if request.transport is not None:
        request.transport.close()


def _translate(request: web.Request, exc: Exception) -> web.StreamResponse:
    if isinstance(exc, RateLimited):
        return _error(429, "rate_limited", exc.message, retry_after_seconds=exc.retry_after_s)
    if isinstance(exc, SandboxdError):
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, route_of(request), exc.message)
        error = exc.message if exc.status == 422 else exc.code
        return _error(exc.status, error, exc.message)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return _error(413, "payload_too_large", "Request body is too large")
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        if exc.status == 404:  # an unknown route looks like an unknown ID: nothing to probe
            nf = NotFound()
            return _error(404, nf.code, nf.message)
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    log.exception("unhandled error on %s %s", request.method, route_of(request), exc_info=exc)
    return _error(500, "internal_error", "Internal error")


def _owner(request: web.Request) -> str:
    return request.app[AUTH].principal(request)


async def health(request: web.Request) -> web.Response:
    ready = request.app[READY]
    store = request.app[STORE]
    if not ready.get("ok") or store.closing:
        return _error(503, "not_ready", ready.get("why", "starting"))
    return _json({"status": "ok", "sessions": len(store.sessions), "runs": store.admission.running})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text: aggregate counts only (no IDs, no principals, no user data), so it is
    open by default like /health; `metrics_require_auth` puts it behind the API's credentials."""
    store = request.app[STORE]
    if store.settings.metrics_require_auth:
        _owner(request)
    return web.Response(body=store.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _idle(aw: Awaitable[T], request: web.Request) -> T:
    """The next bytes of a request body (or a download's client taking the next bytes), or 408
    when the client stalls: a body that trickles in must not hold a body slot, an upload
    session or a connection for ever, nor a download its session."""
    try:
        return await asyncio.wait_for(aw, timeout=request.app[STORE].settings.storage.upload_idle_timeout_s)
    except TimeoutError:
        raise RequestTimeout("The request body stalled") from None


@contextlib.asynccontextmanager
async def _body_slot(request: web.Request) -> AsyncIterator[None]:
    """One of a bounded number of /exec bodies being read and decoded at once: each is bounded
    in size (json_body_max_bytes), and this bounds their number, so many clients sending large
    bodies together cannot run the daemon out of memory before admission even looks at them."""
    store = request.app[STORE]
    sem = request.app[BODIES]
    if not sem.locked():
        await sem.acquire()  # a free slot: no wait_for (it times out at 0 s)
    else:
        try:
            await asyncio.wait_for(sem.acquire(), timeout=store.settings.queue_wait_s)
        except TimeoutError:
            raise RateLimited(store.admission.retry_after_s) from None
    try:
        yield
    finally:
        sem.release()


async def _read_json_body(request: web.Request) -> bytes:
    limit = request.app[STORE].settings.storage.json_body_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge("Request body is too large")
    body = bytearray()
    while chunk := await _idle(request.content.readany(), request):
        if len(body) + len(chunk) > limit:
            raise PayloadTooLarge("Request body is too large")
        body += chunk
    return bytes(body)


async def exec_code(request: web.Request) -> web.Response:
    owner = _owner(request)
    async with _body_slot(request):
        body = await _read_json_body(request)
        try:
            req = _exec_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"Invalid request: {exc}") from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"Malformed JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("Malformed JSON: nested too deeply") from None
        except UnicodeDecodeError:
            raise BadRequest("Malformed JSON: not valid UTF-8") from None
        del body
    reply = await request.app[STORE].execute(req, owner)
    return _json(reply)


def _part_filename(part: BodyPartReader) -> str:
    """The client's file name. Some multipart writers (aiohttp's among them) percent-encode
    a plain `filename=`, so `input%2Fscores.csv` means the nested path; a `filename*=` was
    already decoded by aiohttp (RFC 5987) and is kept as sent (`100%25 done.csv` stays so).
    The name is validated afterwards."""
    name = part.filename or ""
    _, params = parse_content_disposition(part.headers.get(CONTENT_DISPOSITION))
    if "filename*" not in params and re.search(r"%[0-9A-Fa-f]{2}", name):
        try:
            return urllib.parse.unquote(name, errors="strict")
        except UnicodeDecodeError:
            pass  # not an encoding of UTF-8: take the name as sent
    return name


async def _stream_part(request: web.Request, session: Session, part: BodyPartReader, limit: int) -> StoredFile:
    store = request.app[STORE]
    name = _part_filename(part)
    fd, parts = store.open_upload(session, name)
    written = 0
    try:
        while chunk := await _idle(part.read_chunk(UPLOAD_CHUNK_BYTES), request):
            written = workspace.write_stream_chunk(fd, chunk, written, limit)
    except (ValueError, HttpProcessingError) as exc:
        store.abort_upload(session, fd, parts)
        raise BadRequest(f"malformed multipart body: {exc}") from None
    except BaseException:
        store.abort_upload(session, fd, parts)
        raise
    return store.finish_upload(session, fd, parts)


async def _file_parts(request: web.Request, store: SessionStore) -> AsyncIterator[BodyPartReader]:
    """The `file` parts of a multipart body, one at a time (other fields are skipped)."""
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError, HttpProcessingError) as exc:
        raise BadRequest(f"expected multipart/form-data: {exc}") from None
    count = 0
    while True:
        try:
            part = await _idle(reader.next(), request)
        except (ValueError, HttpProcessingError) as exc:  # e.g. a NUL byte in a part header
            raise BadRequest(f"malformed multipart body: {exc}") from None
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart bodies are not supported")
        if part.name != "file":
            await part.release()
            continue
        count += 1
        if count > store.settings.storage.upload_files_max:
            raise BadRequest("too many files in one upload")
        yield part
    if count == 0:
        raise BadRequest("multipart body has no 'file' part")


async def upload(request: web.Request) -> web.Response:
    owner = _owner(request)
    store = request.app[STORE]
    limit = store.settings.storage.upload_max_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise PayloadTooLarge(f"upload exceeds {limit} bytes")
    # The session (a tmpfs, a uid, a sessions_max slot) exists from the first file part on,
    # not before the client sent a byte.
    session: Session | None = None
    files: list[UploadedFile] = []
    try:
        async for part in _file_parts(request, store):
            if session is None:
                session = await store.new_upload_session(owner)
            f = await _stream_part(request, session, part, limit)
            files.append(UploadedFile(fileId=f.id, filename=f.name))
    except BaseException:
        if session is not None:  # the client never learns its ID: keep none of its files
            await store.end_upload(session, failed=True)
        raise
    assert session is not None  # _file_parts refuses a body without a file part
    await store.end_upload(session)
    return _json(UploadReply(message="success", session_id=session.id, storage_session_id=session.id,
                             files=files))


async def upload_batch(request: web.Request) -> web.Response:
    """Each file succeeds or fails on its own; the reply says which."""
    owner = _owner(request)
    store = request.app[STORE]
    limit = store.settings.storage.upload_max_bytes
    session: Session | None = None
    results: list[BatchFile] = []
    try:
        async for part in _file_parts(request, store):
            if session is None:
                session = await store.new_upload_session(owner)
            name = _part_filename(part)
            try:
                f = await _stream_part(request, session, part, limit)
                results.append(BatchFile(status="success", fileId=f.id, filename=f.name))
            except (BadRequest, PayloadTooLarge) as exc:
                await part.release()
                results.append(BatchFile(status="error", filename=name, error=exc.message))
    except BaseException:
        if session is not None:  # the client never learns its ID: keep none of its files
            await store.end_upload(session, failed=True)
        raise
    assert session is not None  # _file_parts refuses a body without a file part
    await store.end_upload(session)
    ok = sum(1 for r in results if r.status == "success")
    message = "success" if ok == len(results) else ("partial_success" if ok else "error")
    return _json(BatchReply(message=message, storage_session_id=session.id, session_id=session.id,
                            files=results, succeeded=ok, failed=len(results) - ok))


def _disposition(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    ascii_fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\;' else "_" for c in base)
    return f"attachment; filename=\"{ascii_fallback}\"; filename*=UTF-8''{urllib.parse.quote(base, safe='')}"


async def download(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    owner = _owner(request)
    async with store.reading(request.match_info["sid"], request.match_info["fid"], owner) as (f, fd):
        resp = web.StreamResponse(
            headers={
                "Content-Type": f.content_type,
                "Content-Disposition": _disposition(f.name),
                "Content-Length": str(f.size),
                "ETag": f.etag,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, no-store",
            }
        )
        await resp.prepare(request)
        offset = 0
        while offset < f.size:
            chunk = await in_file_pool(os.pread, fd, min(DOWNLOAD_CHUNK_BYTES, f.size - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            # A client that stops reading would keep the session pinned and any run in it
            # waiting: past the idle timeout the connection is dropped.
            await _idle(resp.write(chunk), request)
        # The jail may not rewrite a served version; if it did mid-stream, the body is
        # short or wrong, and the connection is dropped rather than ending it as a valid reply.
        if offset != f.size or workspace.Sig.of(os.fstat(fd)) != f.sig:
            log.warning("%s %s: file changed while being served; connection dropped",
                        request.method, route_of(request))
            drop_connection(request)
            return resp
        await resp.write_eof()
        return resp


def _file_entry(f: StoredFile, detail: str) -> object:
    info = f.info()
    if detail == "simple":
        return info.name
    entry: dict[str, object] = {"name": info.name, "size": info.size, "lastModified": info.lastModified,
                                "etag": info.etag}
    if detail == "full":
        entry.update({"metadata": {"content-type": f.content_type, "original-filename": f.name},
                      "contentType": f.content_type, "id": f.id})
    elif detail == "normalized":
        entry = {"id": f.id, "name": f.name, "storage_session_id": f.session.id, "size": f.size,
                 "contentType": f.content_type, "lastModified": info.lastModified}
    return entry


async def list_files(request: web.Request) -> web.Response:
    detail = request.query.get("detail", "simple")
    if detail not in ("simple", "summary", "full", "normalized"):
        raise BadRequest("detail must be one of simple, summary, full, normalized")
    files = request.app[STORE].list_files(request.match_info["sid"], _owner(request))
    return _json([_file_entry(f, detail) for f in files])


async def object_info(request: web.Request) -> web.Response:
    f = request.app[STORE].get_file(request.match_info["sid"], request.match_info["fid"], _owner(request))
    return _json(f.info())


async def delete_file(request: web.Request) -> web.Response:
    await request.app[STORE].delete_file(request.match_info["sid"], request.match_info["fid"], _owner(request))
    return _json({"message": "success"})


def add_routes(app: web.Application) -> None:
    for prefix in ("", "/v1"):
        app.router.add_get(prefix + "/health", health)
        app.router.add_get(prefix + "/metrics", metrics)
        app.router.add_post(prefix + "/exec", exec_code)
        app.router.add_post(prefix + "/upload", upload)
        app.router.add_post(prefix + "/upload/batch", upload_batch)
        app.router.add_get(prefix + "/download/{sid}/{fid}", download)
        app.router.add_get(prefix + "/files/{sid}", list_files)
        app.router.add_delete(prefix + "/files/{sid}/{fid}", delete_file)
        app.router.add_get(prefix + "/sessions/{sid}/objects/{fid}", object_info)
        app.router.add_delete(prefix + "/sessions/{sid}/objects/{fid}", delete_file)


def create_app(store: SessionStore, auth: Authenticator, ready: dict[str, object]) -> web.Application:
    app = web.Application(
        middlewares=[access_middleware(store.metrics), error_middleware],
        client_max_size=store.settings.storage.json_body_max_bytes,
    )
    app[STORE] = store
    app[AUTH] = auth
    app[READY] = ready
    st = store.settings.storage
    app[BODIES] = asyncio.Semaphore(max(1, st.json_bodies_max_bytes // st.json_body_max_bytes))
    store.metrics.ready.set_function(lambda: 1 if ready.get("ok") and not store.closing else 0)
    app.on_response_prepare.append(echo_request_id)
    app.on_response_prepare.append(_note_started)
    add_routes(app)
    return app
