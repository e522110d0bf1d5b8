"""`appliance serve` and `appliance demo`: the daemon, and the embedded default end to end."""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path

import httpx
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


def _prepare_demo_bundle(demo_dir: Path) -> tuple[Path, Path]:
    """Build, sign and return the demo bundle and the dev public key (idempotent)."""
    from appliance.bundles.keys import generate_keypair
    from appliance.bundles.pack import pack, sign
    from appliance.bundles.recipes import DEMO_RECIPE, build_source

    keys = demo_dir / "keys"
    if not (keys / "dev.key").exists():
        generate_keypair("dev", keys)
    source = build_source(DEMO_RECIPE, demo_dir / "src")
    bundle = demo_dir / "gemma3-270m-1.0.0.bundle"
    pack(source, bundle)
    sign(bundle, keys / "dev.key")
    return bundle, keys / "dev.pub"


def _ask(client: httpx.Client, path: str, body: dict[str, object]) -> tuple[str, int, float]:
    started = time.perf_counter()
    response = client.post(path, json=body)
    response.raise_for_status()
    seconds = time.perf_counter() - started
    document = response.json()
    choice = document["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return text, document["usage"]["completion_tokens"], seconds


def demo(
    port: int | None = typer.Option(None, "--port", help="Port for the daemon (default 8750)."),
    once: bool = typer.Option(False, "--once", help="Exit after the two requests."),
) -> None:
    """Build, sign and install the Gemma demo bundle, start the daemon and ask it twice."""
    from appliance.api.app import create_app
    from appliance.api.server import BackgroundServer
    from appliance.bundles import trust
    from appliance.bundles.installer import BundleManager
    from appliance.tokens import TokenStore

    h = home().ensure()
    settings = _settings_with(load_settings(h.config_file), port=port)
    demo_dir = h.root / "demo"
    console.print("building the demo bundle from the pinned Gemma 3 270M package …")
    bundle, public = _prepare_demo_bundle(demo_dir)
    trust.add_key(h, public)
    manager = BundleManager(h, settings)
    try:
        outcome = manager.install(bundle)
    finally:
        manager.close()
    console.print(f"{outcome.name} {outcome.version}: {outcome.action}")
    tokens = TokenStore(h)
    if any(t.device == "demo" for t in tokens.list()):
        tokens.revoke("demo")
    token = tokens.create("demo", "infer")

    server = BackgroundServer(create_app(h, settings), settings.server.host, settings.server.port)
    server.start()
    console.print(f"daemon listening on {server.url} (device token for 'demo': {token})")
    try:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
            chat = {
                "model": "gemma3-270m",
                "max_tokens": 48,
                "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            }
            text, count, seconds = _ask(client, "/v1/chat/completions", chat)
            console.print(f"\n[bold]chat[/bold] ({count / seconds:.1f} tokens/s): {text.strip()}")
            completion = {
                "model": "gemma3-270m",
                "prompt": "def fibonacci(n):",
                "max_tokens": 48,
                "temperature": 0,
            }
            text, count, seconds = _ask(client, "/v1/completions", completion)
            console.print(f"\n[bold]completion[/bold] ({count / seconds:.1f} tokens/s):")
            console.print(f"def fibonacci(n):{text}", markup=False)
        if once:
            return
        console.print(f"\nthe daemon keeps serving on {server.url}; Ctrl-C stops it")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
