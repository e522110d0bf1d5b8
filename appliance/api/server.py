"""Running the HTTP application: in the foreground (`appliance serve`) or on a thread.

Both serve through ``connections.GuardedH11Protocol`` (read deadlines, connection caps) and
with the event loop's error reports rate-limited: when the process runs out of file
descriptors, asyncio reports every failed ``accept()`` with a traceback, and other tasks
fail in a burst; one line per kind per interval says as much (issue 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import resource
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from appliance.api.connections import (
    LOOPBACK_RESERVE,
    ConnectionGuard,
    ConnectionLimits,
    GuardedH11Protocol,
)
from appliance.api.ratelog import RateLimitedLog
from appliance.settings import ServerSettings

STARTUP_TIMEOUT_S = 120.0  # seconds to wait for models to load and the socket to listen
LOOP_ERROR_INTERVAL_S = 10.0  # seconds between two reports of one kind of event-loop error
FD_LIMIT_WHEN_UNLIMITED = 65536  # open files asked for when the hard limit is "unlimited"

log = logging.getLogger("appliance.daemon")


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the soft one.

    Shells and many service managers start a process with a soft limit of 1024, a few
    hundred connections away from failing every open() (state.db, model files, sockets).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_LIMIT_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return FD_LIMIT_WHEN_UNLIMITED if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft
    return wanted


def connection_limits(server: ServerSettings, open_files: int) -> ConnectionLimits:
    """The configured limits, with the connection cap kept to half the open-files limit.

    The other half is for everything else the daemon opens (state.db, models, upstream
    connections, the refused connections' brief descriptors).
    """
    room = max(open_files // 2 - LOOPBACK_RESERVE, 1)
    if server.max_connections > room:
        log.warning(
            "server.max_connections = %d, but this process may open only %d files; "
            "serving at most %d connections",
            server.max_connections,
            open_files,
            room,
        )
    return ConnectionLimits.of(server, min(server.max_connections, room))


def config(app: FastAPI, server: ServerSettings, host: str, port: int) -> uvicorn.Config:
    guard = ConnectionGuard(connection_limits(server, raise_open_files_limit()))
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvicorn takes a protocol class or a factory; its stub names only the class
        http=functools.partial(GuardedH11Protocol, guard=guard),  # type: ignore[arg-type]
        log_level="warning",
        log_config=None,  # keep the process's logging (JSON lines under `appliance serve`)
        server_header=False,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


class LoopErrors:
    """An event-loop exception handler: each kind of error once per interval, then a count.

    ``socket.accept() out of system resource`` (EMFILE, ENFILE …) is logged without its
    traceback: the message says all; other kinds keep the first traceback of each interval.
    """

    ACCEPT_FAILED = "socket.accept() out of system resource"

    def __init__(self, interval_s: float = LOOP_ERROR_INTERVAL_S) -> None:
        self.log = RateLimitedLog(logging.getLogger("appliance.loop"), interval_s)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "event loop error")
        error = context.get("exception")
        if message == self.ACCEPT_FAILED:
            self.log.note(message, f"cannot accept connections: {error}")
            return
        kind = f"{message}: {type(error).__name__}" if error is not None else message
        if self.log.note(kind, kind, emit=False):
            loop.default_exception_handler(context)


class Server(uvicorn.Server):
    """uvicorn's server with the loop's error reports rate-limited (see ``LoopErrors``)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(LoopErrors())
        await super().startup(sockets)


def serve_forever(app: FastAPI, server: ServerSettings) -> None:
    Server(config(app, server, server.host, server.port)).run()


class BackgroundServer:
    """The daemon on a thread of this process (for `appliance demo` and the tests)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        settings = getattr(app.state, "settings", None)
        server = settings.server if settings is not None else ServerSettings()
        self._server = Server(config(app, server, self.host, self.port))
        self._thread = threading.Thread(target=self._server.run, name="appliance-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server.started:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                        return self
            if not self._thread.is_alive():
                raise RuntimeError("the daemon stopped while starting; see its log")
            time.sleep(0.05)
        raise TimeoutError(f"the daemon did not start within {timeout:.0f} s")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
