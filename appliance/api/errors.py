"""Errors on the wire: one JSON shape, OpenAI's, for every failure.

{"error": {"type": "...", "message": "...", "code": "...", "param": null}}

Messages name no filesystem path: the daemon's log has them, the network does not.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance.api.paths import hide_paths
from appliance.errors import ApplianceError, surface

RETRY_AFTER_S = 2  # seconds a client is told to wait when a queue is full
# the governed routes, by path: a body refused there is a refused request, and is audited
INFERENCE_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}


class APIError(ApplianceError):
    """An error already in HTTP terms (status, type, code), raised by the routes."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        appliance: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.headers = code, param, headers or {}
        self.appliance = appliance  # the body's `appliance` object (a routing decision)


def error_body(
    message: str, type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """The error document; a filesystem path in `message` is replaced (``paths.hide_paths``)."""
    return {"error": {"type": type, "message": hide_paths(message), "code": code, "param": param}}


def error_response(error: APIError) -> JSONResponse:
    body: dict[str, Any] = error_body(error.message, error.type, error.code, error.param)
    if error.appliance is not None:
        body["appliance"] = error.appliance
    return JSONResponse(
        body,
        status_code=error.status,
        headers=error.headers,
    )


def limit_exceeded(what: str, value: int, limit: int, unit: str, param: str | None) -> APIError:
    return APIError(
        400,
        f"{what} is {value} {unit}, over the limit of {limit} {unit}",
        code="limit_exceeded",
        param=param,
    )


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        endpoint = INFERENCE_PATHS.get(request.url.path)
        governor = getattr(request.app.state, "governor", None)
        if endpoint is not None and governor is not None:  # a refused inference: audited
            governor.record_invalid(endpoint, getattr(request.state, "device", None), message)
        return error_response(APIError(400, message, code="invalid_request", param=where or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return error_response(APIError(error.status_code, str(error.detail), type=kind))

    @app.exception_handler(ApplianceError)
    async def _appliance(_: Request, error: ApplianceError) -> JSONResponse:
        shown = surface(error)  # the one table of statuses (appliance.errors.SURFACES)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if shown.retry_after else None
        return error_response(
            APIError(
                shown.http_status,
                str(error),
                type=shown.type,
                code=shown.code,
                param=shown.param,
                headers=headers,
            )
        )
