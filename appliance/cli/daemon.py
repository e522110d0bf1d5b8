"""`appliance serve` and `appliance demo`: the daemon, and the embedded default end to end."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import typer

from appliance.cli.common import console, home
from appliance.settings import Settings, load_settings


def _settings_with(settings: Settings, **server: object) -> Settings:
    changes = {k: v for k, v in server.items() if v is not None}
    return settings.model_copy(update={"server": settings.server.model_copy(update=changes)})


def serve(
    host: str | None = typer.Option(None, "--host", help="Listen address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Listen port (default 8750)."),
) -> None:
    """Run the daemon: the OpenAI-compatible API over the active model bundles."""
    from appliance import logs
    from appliance.api.app import create_app
    from appliance.api.server import serve_forever

    logs.configure()
    h = home().ensure()
    settings = _settings_with(load_settings(h.config_file), host=host, port=port)
    app = create_app(h, settings)
    console.print(f"appliance listening on http://{settings.server.host}:{settings.server.port}")
    serve_forever(app, settings.server)


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
