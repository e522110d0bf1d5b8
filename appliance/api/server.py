"""Running the HTTP application: in the foreground (`appliance serve`) or on a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI

STARTUP_TIMEOUT_S = 120.0  # seconds to wait for models to load and the socket to listen


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,  # keep the process's logging (JSON lines under `appliance serve`)
        server_header=False,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def serve_forever(app: FastAPI, host: str, port: int) -> None:
    uvicorn.Server(config(app, host, port)).run()


class BackgroundServer:
    """The daemon on a thread of this process (for `appliance demo` and the tests)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(config(app, self.host, self.port))
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
