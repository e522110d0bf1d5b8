"""`appliance serve`: the daemon (`appliance demo` is in demo.py)."""

from __future__ import annotations

import errno
import socket

import typer

from appliance.cli.common import console, home
from appliance.errors import StartupError
from appliance.settings import Settings, load_settings

LISTEN_BACKLOG = 2048  # connections the kernel queues while models load (uvicorn's default)


def _settings_with(settings: Settings, **server: object) -> Settings:
    changes = {k: v for k, v in server.items() if v is not None}
    return settings.model_copy(update={"server": settings.server.model_copy(update=changes)})


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to and listening on host:port, or a StartupError naming the address.

    Done before anything else (models, policy, state.db): a taken port is reported at once,
    in one line, not after a model has loaded. Requests that arrive while models load wait
    in the listen queue.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            why = (
                "the address is already in use (another appliance serve? "
                "appliance status says which); stop it, or pick another with --port"
            )
        elif e.errno in (errno.EACCES, errno.EPERM):
            why = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        elif e.errno == errno.EADDRNOTAVAIL:
            why = "no interface of this machine has that address; check --host or [server] host"
        else:
            why = e.strerror or str(e)
        raise StartupError(f"cannot listen on {shown}: {why}") from e
    except (OverflowError, socket.gaierror) as e:
        sock.close()
        raise StartupError(f"cannot listen on {shown}: {e}") from e
    return sock


def serve(
    host: str | None = typer.Option(None, "--host", help="Listen address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Listen port (default 8750)."),
) -> None:
    """Run the daemon: the OpenAI-compatible API over the active model bundles.

    Exits 3 when it cannot start (its address in use, not this machine's), 1 on an invalid
    config.toml or policy.
    """
    from appliance import __version__, logs, runfile
    from appliance.api.app import create_app
    from appliance.api.server import Server, config

    logs.configure()
    h = home().ensure()
    settings = _settings_with(load_settings(h.config_file), host=host, port=port)
    server = settings.server
    sock = listen(server.host, server.port)
    try:
        bound_port = int(sock.getsockname()[1])
        record = runfile.this_process(server.host, bound_port, __version__)
        runfile.write(h, record)
        try:
            app = create_app(h, settings)
            console.print(f"appliance listening on {record.url}")

            class Serving(Server):
                async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                    # uvicorn re-raises SIGTERM/SIGINT once the server is down, which ends
                    # the process before any `finally` of ours: remove the record here.
                    try:
                        await super().shutdown(sockets)
                    finally:
                        runfile.remove(h, record)

            Serving(config(app, server, server.host, bound_port)).run(sockets=[sock])
        finally:
            runfile.remove(h, record)
    finally:
        sock.close()
