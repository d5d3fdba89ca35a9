"""Typed errors and the one place that turns them into OpenAI's error shape."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class TutorError(Exception):
    """Base of every error the API reports; subclasses fix the status and type."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(TutorError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class ModelNotFound(TutorError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class AdapterNotFound(TutorError):
    status = 404
    type = "invalid_request_error"
    code = "adapter_not_found"


class InvalidAdapter(TutorError):
    status = 422
    type = "invalid_request_error"
    code = "invalid_adapter"


class Unauthorized(TutorError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(TutorError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class Conflict(TutorError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class _RetryLater(TutorError):
    """An error the client should retry: it tells when, in ``Retry-After``."""

    default_retry_after = 1

    def __init__(self, message: str, *, retry_after: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = self.default_retry_after if retry_after is None else retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimited(_RetryLater):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BodyTooLarge(InvalidRequest):
    code = "body_too_large"


class EngineUnavailable(_RetryLater):
    status = 503
    type = "service_unavailable"
    code = "engine_unavailable"
    default_retry_after = 5


class LimitsUnavailable(_RetryLater):
    """The shared store of rate limits (Redis) did not answer: the request is refused with a 503
    the client can retry, rather than served unmetered or lost in a 500."""

    status = 503
    type = "service_unavailable"
    code = "limits_unavailable"
    default_retry_after = 2


class EngineError(TutorError):
    status = 502
    type = "upstream_error"
    code = "engine_error"


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def as_tutor_error(exc: BaseException) -> TutorError:
    """Anything raised while serving becomes a TutorError; unknown ones hide their details."""
    if isinstance(exc, TutorError):
        return exc
    log.exception("unexpected error", exc_info=exc)
    return TutorError("internal server error")


def _validation_param(err: dict[str, Any]) -> str | None:
    """``body.messages.0.content.str`` -> ``messages.0.content``: drop the union-member tags."""
    loc = [
        str(p)
        for p in err.get("loc", ())
        if p != "body" and not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float"}))
    ]
    return ".".join(loc) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TutorError)
    async def _tutor(_: Request, exc: TutorError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            msg = f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
            body = error_body(
                msg.strip().rstrip(":"), "invalid_request_error", None, "invalid_json"
            )
        else:
            param = _validation_param(first)
            msg = first.get("msg", "invalid request")
            body = error_body(
                f"{param}: {msg}" if param else msg, "invalid_request_error", param, "invalid_value"
            )
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(
            error_body(detail, type_, None, None),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        err = as_tutor_error(exc)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers())
