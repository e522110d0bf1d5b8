"""`appliance status`: is this box healthy, and if not, what to do. Exit 0, 1 or 2.

Asks the running daemon for ``GET /status``; when it does not answer, builds the same
document from APPLIANCE_HOME (state.db read-only) and says the daemon is down.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import typer

from appliance import __version__
from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.governance.active import find_source, load
from appliance.home import Home
from appliance.settings import Settings, load_settings
from appliance.status import document

PROBE_TIMEOUT_S = 2.0  # seconds to wait for the daemon before calling it down
WATCH_INTERVAL_S = 2.0  # seconds between refreshes with --watch
TOKEN_ENV = "APPLIANCE_TOKEN"  # a device token, needed only for a daemon on another host


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
    try:
        response = httpx.get(f"{url}/status", headers=headers, timeout=PROBE_TIMEOUT_S)
        if response.status_code == 200:
            return response.json()  # type: ignore[no-any-return]
        daemon_up = True
        reason = f"GET /status answered HTTP {response.status_code}"
        if response.status_code in (401, 403):
            reason += f"; set {TOKEN_ENV} to a device token for the live details"
    except httpx.HTTPError as e:
        reason = f"no answer from {url}: {type(e).__name__}"
    except ValueError:
        daemon_up, reason = True, "GET /status did not return JSON"
    daemon = {"up": daemon_up, "url": url, "version": __version__ if daemon_up else None}
    if reason:
        daemon["error"] = reason
    return document.build(
        h,
        settings,
        daemon=daemon,
        policy=lambda: load(find_source(h, settings, read_only=True)),
    )


def status(
    as_json: bool = JSON_OPTION,
    url: str | None = typer.Option(
        None, "--url", help="The daemon's address (default: from config.toml)."
    ),
    watch: bool = typer.Option(False, "--watch", help="Refresh in place every 2 s."),
) -> None:
    """Is this box healthy? Exit 0 healthy, 1 degraded, 2 daemon down."""
    from appliance.status.render import render

    h = home()
    settings = load_settings(h.config_file)
    target = (url or default_url(settings)).rstrip("/")
    if not watch:
        doc = collect(h, settings, target)
        if as_json:
            print_json(doc)
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
