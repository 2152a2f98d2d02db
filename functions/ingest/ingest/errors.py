"""Every error the API returns has a precise status and a JSON body: {error, message, details?}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from callcore.domain.errors import (
    CallNotAcceptingPacketsError,
    CallNotFoundError,
    DependencyUnavailableError,
    InvalidTransitionError,
    SequenceConflictError,
)
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


def error_responses(*pairs: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorOut, "description": text} for status, text in pairs}


# OpenAPI documentation of the errors each route can return.
UNAUTHORIZED = error_responses((401, "Missing or unknown X-API-Key (when the service has keys configured)."))
INVALID = error_responses((422, "Malformed JSON, wrong types, missing fields, or a bad call_id."))
UNAVAILABLE = error_responses((503, "DynamoDB or SQS is throttling or unreachable; retry after Retry-After seconds."))
NOT_FOUND = error_responses((404, "No call with this call_id."))


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
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

    @app.exception_handler(SequenceConflictError)
    async def sequence_conflict(request: Request, exc: SequenceConflictError) -> JSONResponse:
        return error_response(409, "sequence_conflict", str(exc))

    @app.exception_handler(CallNotAcceptingPacketsError)
    async def call_closed(request: Request, exc: CallNotAcceptingPacketsError) -> JSONResponse:
        return error_response(409, "call_not_in_progress", str(exc))

    @app.exception_handler(InvalidTransitionError)
    async def invalid_transition(request: Request, exc: InvalidTransitionError) -> JSONResponse:
        return error_response(409, "invalid_state", str(exc))

    @app.exception_handler(DependencyUnavailableError)
    async def unavailable(request: Request, exc: DependencyUnavailableError) -> JSONResponse:
        logger.warning("dependency unavailable: %s", exc)
        return error_response(
            503,
            "dependency_unavailable",
            f"{exc.dependency} is unavailable ({exc.reason}); nothing was changed that a retry would not repair. "
            "Retry the same request.",
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "unexpected server error; it has been logged")
