"""One error shape for every failure: `{"error": {"code", "message", "request_id", "details"}}`."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import ServiceError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def error_response(request: Request, status: int, code: str, message: str, details: list[str] | None = None):
    body = {"error": {"code": code, "message": message, "request_id": request_id(request)}}
    if details:
        body["error"]["details"] = details
    return JSONResponse(status_code=status, content=body, headers={REQUEST_ID_HEADER: request_id(request)})


def _location(loc: tuple) -> str:
    # ("body", "collection") -> "collection"; keep query/path prefixes, they tell where to look.
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.middleware("http")
    async def assign_request_id(request: Request, call_next):
        request.state.request_id = request.headers.get(REQUEST_ID_HEADER) or "req_" + uuid.uuid4().hex[:16]
        response = await call_next(request)
        response.headers[REQUEST_ID_HEADER] = request.state.request_id
        return response

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        if exc.http_status >= 500:
            log.error("%s: %s", exc.code, exc.message, exc_info=exc.__cause__)
        return error_response(request, exc.http_status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        details = [f"{_location(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        return error_response(request, 422, "validation_failed", "the request is not valid", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal_error", "an unexpected error occurred")
