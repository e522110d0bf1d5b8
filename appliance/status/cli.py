"""`appliance status`: is this box healthy, and if not, what to do. Exit 0, 1 or 2.

Asks the running daemon for ``GET /status``; when it does not answer, builds the same
document from APPLIANCE_HOME (state.db read-only) and says the daemon is down.

Checklist scripts run this often, so it lives outside ``appliance.cli`` (whose package
imports every command): ``appliance._entry`` runs it with only what it needs, in well under
a second even with a 100k-item outbox (``scripts/bench_status.py``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import typer
from rich.console import Console

from appliance import __version__
from appliance.errors import UsageError
from appliance.home import Home
from appliance.policy_source import peek
from appliance.settings import Settings, load_settings
from appliance.status import document

PROBE_TIMEOUT_S = 2.0  # seconds to wait for the daemon before calling it down
WATCH_INTERVAL_S = 2.0  # seconds between refreshes with --watch
TOKEN_ENV = "APPLIANCE_TOKEN"  # a device token, needed only for a daemon on another host
# what the daemon writes for its home in /status (appliance.api.paths.HOME_TEXT; not imported:
# this command must not load the web stack)
HOME_TEXT = "$APPLIANCE_HOME"


def default_url(settings: Settings) -> str:
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


def collect(h: Home, settings: Settings, url: str) -> dict[str, Any]:
    """The daemon's document, or one built here when it does not answer."""
    headers = {}
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    reason = ""
    daemon_up = False
    # urllib, not httpx: this command must start fast (httpx costs ~0.2 s to import)
    try:
        request = urllib.request.Request(f"{url}/status", headers=headers)
    except ValueError as e:
        raise UsageError(f"--url {url!r} is not an http:// address: {e}") from e
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
            live: dict[str, Any] = json.loads(response.read())
        return _with_home(live, h) if _is_loopback(url) else live
    except urllib.error.HTTPError as e:
        daemon_up = True
        reason = f"GET /status answered HTTP {e.code}"
        if e.code in (401, 403):
            reason += f"; set {TOKEN_ENV} to a device token for the live details"
    except (urllib.error.URLError, OSError) as e:
        reason = f"no answer from {url}: {getattr(e, 'reason', e)}"
    except ValueError:
        daemon_up, reason = True, "GET /status did not return JSON"
    daemon = {"up": daemon_up, "url": url, "version": __version__ if daemon_up else None}
    if reason:
        daemon["error"] = reason
    return document.build(
        h,
        settings,
        daemon=daemon,
        policy=lambda: peek(h, settings.policy_file),
    )


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _with_home(document: Any, h: Home) -> Any:
    """The daemon's document with the home written out again: the daemon names it
    ``$APPLIANCE_HOME`` (no path goes over HTTP), and a field tech on the box wants the path."""
    if isinstance(document, str):
        return document.replace(HOME_TEXT, str(h.root))
    if isinstance(document, dict):
        return {key: _with_home(value, h) for key, value in document.items()}
    if isinstance(document, list):
        return [_with_home(value, h) for value in document]
    return document


# Off a terminal (pipes, CI logs) Rich would wrap at 80 columns; don't.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def status(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON on stdout."),
    url: str | None = typer.Option(
        None, "--url", help="The daemon's address (default: from config.toml)."
    ),
    watch: bool = typer.Option(False, "--watch", help="Refresh in place every 2 s."),
) -> None:
    """Is this box healthy? Exit 0 healthy, 1 degraded, 2 daemon down."""
    from appliance.status.render import render

    h = Home.from_env()
    settings = load_settings(h.config_file)
    target = (url or default_url(settings)).rstrip("/")
    if not watch:
        doc = collect(h, settings, target)
        if as_json:
            sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        else:
            console.print(render(doc))
        raise typer.Exit(doc["exit_code"])

    from rich.live import Live

    doc = collect(h, settings, target)
    try:
        with Live(render(doc), console=console, screen=False, auto_refresh=False) as live:
            while True:
                time.sleep(WATCH_INTERVAL_S)
                doc = collect(h, settings, target)
                live.update(render(doc), refresh=True)
    except KeyboardInterrupt:
        pass
    raise typer.Exit(doc["exit_code"])


def run(args: list[str]) -> int:
    """`appliance [--debug] status …` without loading the other commands."""
    from appliance.errors import ApplianceError

    debug = "--debug" in args
    rest = [a for a in args if a != "--debug"]
    rest.remove("status")
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(status)
    try:
        app(args=rest, prog_name="appliance status", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except ApplianceError as e:
        if debug:
            raise
        printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))
        Console(stderr=True, highlight=False).print(f"error: {printable}", markup=False)
        return e.exit_code
    return 0
