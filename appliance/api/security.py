"""What every request passes before it reaches a route: Host allow-list, body size, token.

- Host: only loopback names, the bind address and ``server.allowed_hosts``; anything else is
  refused, so a web page in a browser on the box cannot reach the API by DNS rebinding.
- Body: larger than ``server.max_body_bytes`` is refused (413) before it is read whole: by
  its Content-Length, or, when chunked, as soon as the bytes received pass the limit, whatever
  the route was answering by then (FastAPI turns a failed body read into a 400). A 413 closes
  the connection, so the rest of the body is never read.
- Token: ``Authorization: Bearer TOKEN`` from ``appliance tokens create``; scopes ``infer``
  and ``admin``. ``auth = "none"`` is accepted only while the daemon listens on loopback.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Request

from appliance.api.errors import APIError, error_body
from appliance.settings import ServerSettings

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
PUBLIC_PATHS = frozenset({"/healthz"})  # liveness needs no token (a supervisor probes it)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(server: ServerSettings) -> frozenset[str]:
    names = set(LOOPBACK_NAMES) | {h.lower() for h in server.allowed_hosts}
    if server.host not in ("0.0.0.0", "::"):
        names.add(server.host.lower())
    return frozenset(names)


def host_of(header: str) -> str:
    """The host part of a Host header: 'a:1' -> 'a', '[::1]:80' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


async def _reject(
    send: Callable[[Any], Awaitable[None]],
    status: int,
    message: str,
    type: str,
    code: str,
    *,
    close: bool = False,
) -> None:
    body = json.dumps(error_body(message, type, code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:  # a body is left unread: do not wait for it on a kept-alive connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Host allow-list and body-size limit, as plain ASGI (no body is buffered here)."""

    def __init__(self, app: ASGIApp, server: ServerSettings) -> None:
        self.app = app
        self.hosts = allowed_hosts(server)
        self.max_body = server.max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = host_of(headers.get(b"host", b"").decode("latin-1"))
        if host not in self.hosts:
            await _reject(
                send,
                403,
                f"Host '{host}' is not allowed (server.allowed_hosts)",
                "permission_error",
                "host_not_allowed",
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _reject(
                send,
                413,
                f"request body is {int(declared)} bytes, over the limit of "
                f"{self.max_body} bytes (server.max_body_bytes)",
                "invalid_request_error",
                "limit_exceeded",
                close=True,
            )
            return
        received = 0
        too_large = False  # the body passed the limit: the answer is 413, whatever the app says
        answered = False  # a response has begun on the wire

        async def too_large_reply() -> None:
            nonlocal answered
            answered = True
            await _reject(
                send,
                413,
                f"request body is over the limit of {self.max_body} bytes (server.max_body_bytes)",
                "invalid_request_error",
                "limit_exceeded",
                close=True,
            )

        async def counting_receive() -> Any:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal answered
            if too_large:  # the app's own answer to a failed body read (FastAPI: a 400)
                if message["type"] == "http.response.start" and not answered:
                    await too_large_reply()
                return
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if not answered:
                await too_large_reply()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _check(request: Request, needed: str) -> None:
    settings = request.app.state.settings
    if settings.server.auth == "none":
        return
    token = _bearer(request)
    if token is None:
        raise APIError(
            401,
            "missing Authorization: Bearer TOKEN (see appliance tokens create)",
            type="authentication_error",
            code="missing_api_key",
        )
    info = request.app.state.tokens.authenticate(token)
    if info is None:
        raise APIError(
            401, "invalid or revoked token", type="authentication_error", code="invalid_api_key"
        )
    if needed == "admin" and info.scope != "admin":
        raise APIError(
            403,
            f"device '{info.device}' has scope '{info.scope}'; admin needed",
            type="permission_error",
            code="insufficient_scope",
        )
    request.state.device = info.device
    request.state.scope = info.scope


async def require_infer(request: Request) -> None:
    _check(request, "infer")


async def require_admin(request: Request) -> None:
    _check(request, "admin")


async def require_readiness(request: Request) -> None:
    """``/readyz``: per ``server.readyz_public``, open on loopback (a local supervisor probes
    it; as ``/status``) or always behind a token. Its body names the models, their versions
    and why one did not load: not for anyone on the network."""
    if request.app.state.settings.server.readyz_public == "loopback":
        await require_observer(request)
    else:
        _check(request, "infer")


async def require_observer(request: Request) -> None:
    """``/status`` and ``/metrics``: open to a client on the box itself, else a token.

    A field tech at the box's terminal (``appliance status``) and a local Prometheus agent
    need no token; neither document holds a secret, a prompt or a PII value. From the
    network, any valid device token (infer or admin) is needed.
    """
    client = request.client.host if request.client else ""
    if is_loopback(client):
        return
    _check(request, "infer")
