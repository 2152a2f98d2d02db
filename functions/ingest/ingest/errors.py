"""Every error the API returns has a precise status and a JSON body: {error, message, details?}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callcore.domain.errors import (
    CallNotAcceptingPacketsError,
    CallNotFoundError,
    CallTooLargeError,
    DependencyMisconfiguredError,
    DependencyUnavailableError,
    InvalidTransitionError,
    RecordingExpiredError,
    RecordingNotFoundError,
    SequenceConflictError,
)
from callcore.metrics import Metric
from ingest.schemas import ErrorOut

logger = logging.getLogger(__name__)


def error_response(
    status: int,
    error: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorOut(error=error, message=message, details=details).model_dump(exclude_none=True)
    return JSONResponse(status_code=status, content=body, headers=headers)


# An error's body in the OpenAPI document, by reference rather than as a response model:
# FastAPI builds a pydantic field for every (route, status) given a model, which cost the
# ingest function's cold start ~10 ms for the same document. ErrorOut reaches the document's
# components through the one response that names it as a model (ERROR_MODEL_ANCHOR, on GET
# /v1/call/{call_id}).
_ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}


def error_responses(*pairs: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"content": _ERROR_BODY, "description": text} for status, text in pairs}


# What a client reads in a 503 and a 500, whatever the cause: a dependency's error code
# (a throttle, a failure, a missing table) or an exception's text goes to the log only.
UNAVAILABLE_MESSAGE = (
    "a storage or queue dependency is busy or unreachable; nothing was changed that a retry would not repair. "
    "Retry the same request after Retry-After seconds."
)
INTERNAL_MESSAGE = "unexpected server error; it has been logged"
MISCONFIGURED_MESSAGE = (
    "the service is misconfigured: a table or queue it is configured with does not exist. "
    "Retrying will not help until an operator fixes it; the details are logged."
)

# OpenAPI documentation of the errors each route can return.
UNAUTHORIZED = error_responses((401, "Missing or unknown X-API-Key (when the service has keys configured)."))
INVALID = error_responses(
    (
        422,
        "Malformed JSON (invalid, truncated, not UTF-8, or no body where one is required), "
        "wrong types, missing fields, out-of-range values, or a bad call_id.",
    )
)
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "content": _ERROR_BODY,
        "description": "A storage or queue dependency is busy or unreachable; retry after Retry-After seconds.",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying the same request.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            }
        },
    }
}
INTERNAL = error_responses(
    (
        500,
        "An unexpected server error (`internal_error`), or a misconfigured deployment (`configuration_error`: "
        "a table or queue does not exist; retrying will not help). Logged; the body tells no more.",
    )
)
NOT_FOUND = error_responses((404, "No call with this call_id."))
ERROR_MODEL_ANCHOR: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No call with this call_id."}
}


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":  # FastAPI's loc is ("body", character offset)
            reason = (err.get("ctx") or {}).get("error", "invalid JSON")
            parts.append(f"body: not valid JSON: {reason} (at position {loc[-1] if len(loc) > 1 else 0})")
        elif loc == ("body",) and err.get("type") == "missing":
            parts.append("body: a JSON object is required")
        else:
            where = ".".join(str(p) for p in loc)
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class InternalErrors:
    """Answer an exception that no handler took with the 500 body, and let it go no further.

    Starlette's own last resort (ServerErrorMiddleware, which calls the Exception handler
    below) raises the exception again once it has answered, and uvicorn then closes the
    connection: a client that keeps connections alive (a PBX does) meets a reset on its
    next request. Caught here, inside it, a 500 is a plain answer on a connection that
    stays usable. Through Mangum it is the same 500, without Mangum logging it a second time.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:  # half an answer is out: only the closed connection can tell the client
                raise
            logger.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            await error_response(500, "internal_error", INTERNAL_MESSAGE)(scope, receive, send)


def install(app: FastAPI) -> None:
    """The handlers, and InternalErrors as the outermost middleware (install after adding the others)."""
    app.add_middleware(InternalErrors)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        return error_response(422, "invalid_request", _describe_validation(list(exc.errors())), details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(CallNotFoundError)
    async def not_found(request: Request, exc: CallNotFoundError) -> JSONResponse:
        return error_response(404, "call_not_found", str(exc))

    @app.exception_handler(RecordingNotFoundError)
    async def no_recording(request: Request, exc: RecordingNotFoundError) -> JSONResponse:
        return error_response(404, "recording_not_found", str(exc))

    @app.exception_handler(RecordingExpiredError)
    async def recording_expired(request: Request, exc: RecordingExpiredError) -> JSONResponse:
        return error_response(404, "recording_expired", str(exc))

    @app.exception_handler(SequenceConflictError)
    async def sequence_conflict(request: Request, exc: SequenceConflictError) -> JSONResponse:
        request.app.state.metrics.count(Metric.PACKETS_REFUSED)
        return error_response(409, "sequence_conflict", str(exc))

    @app.exception_handler(CallNotAcceptingPacketsError)
    async def call_closed(request: Request, exc: CallNotAcceptingPacketsError) -> JSONResponse:
        request.app.state.metrics.count(Metric.PACKETS_REFUSED)
        return error_response(409, "call_not_in_progress", str(exc))

    @app.exception_handler(InvalidTransitionError)
    async def invalid_transition(request: Request, exc: InvalidTransitionError) -> JSONResponse:
        return error_response(409, "invalid_state", str(exc))

    @app.exception_handler(CallTooLargeError)
    async def too_large(request: Request, exc: CallTooLargeError) -> JSONResponse:
        return error_response(413, "call_too_large", str(exc))

    @app.exception_handler(DependencyMisconfiguredError)
    async def misconfigured(request: Request, exc: DependencyMisconfiguredError) -> JSONResponse:
        # Not a 503: no retry helps until an operator fixes the table or queue name.
        logger.error("%s %s: %s is misconfigured (%s)", request.method, request.url.path, exc.dependency, exc.reason)
        return error_response(500, "configuration_error", MISCONFIGURED_MESSAGE)

    @app.exception_handler(DependencyUnavailableError)
    async def unavailable(request: Request, exc: DependencyUnavailableError) -> JSONResponse:
        # The dependency and its error code are for the operators: the client gets a stable message.
        logger.warning(
            "503 on %s %s: %s unavailable (%s); Retry-After %s s",
            request.method,
            request.url.path,
            exc.dependency,
            exc.reason,
            exc.retry_after_s,
        )
        return error_response(
            503, "dependency_unavailable", UNAVAILABLE_MESSAGE, headers={"Retry-After": str(exc.retry_after_s)}
        )

    # The last resort, for what InternalErrors lets through: an error once an answer had started.
    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", INTERNAL_MESSAGE)
