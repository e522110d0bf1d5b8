"""The request id: taken from ``X-Request-Id`` (when sane) or made, bound for the logs,
and sent back on the response, so a device, a log line and an audit row can be matched."""

from __future__ import annotations

from typing import Any

from appliance import logs

HEADER = b"x-request-id"


class RequestIdMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope.get("headers") or []).get(HEADER, b"").decode("latin-1")
        request_id = logs.new_request_id(offered)
        token = logs.bind_request_id(request_id)

        async def tagging_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagging_send)
        finally:
            logs.unbind_request_id(token)
