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
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console

from appliance import __version__, runfile
from appliance.errors import ConfigError, UsageError
from appliance.home import Home
from appliance.policy_source import peek
from appliance.settings import Settings, load_settings
from appliance.status import advice, document

PROBE_TIMEOUT_S = 2.0  # seconds to wait for the daemon before calling it down
WATCH_INTERVAL_S = 2.0  # seconds between refreshes with --watch
TOKEN_ENV = "APPLIANCE_TOKEN"  # a device token, needed only for a daemon on another host
# what the daemon writes for its home in /status (appliance.api.paths.HOME_TEXT; not imported:
# this command must not load the web stack)
HOME_TEXT = "$APPLIANCE_HOME"


def default_url(settings: Settings, port: int | None = None) -> str:
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port if port is None else port}"


@dataclass(frozen=True)
class Target:
    """Where to ask for the daemon's document, and what the home's daemon record says."""

    url: str
    record: runfile.DaemonRecord | None = None  # a running daemon's record, when used
    note: str = ""  # why the record was not used (stale), for the down case

    @classmethod
    def find(
        cls, h: Home, settings: Settings, url: str | None = None, port: int | None = None
    ) -> Target:
        """--url, else --port on this box, else the running daemon's record, else config.toml.

        A record whose process is gone (killed, or its pid reused) is stale: never used, so
        it cannot make another service on that port look like this box's daemon.
        """
        if url:
            return cls(url.rstrip("/"))
        if port is not None:
            return cls(default_url(settings, port))
        record = runfile.read(h)
        if record is not None and runfile.is_running(record):
            return cls(record.url, record)
        note = f"daemon.json names pid {record.pid}, which no longer runs" if record else ""
        return cls(default_url(settings), note=note)


def collect(
    h: Home,
    settings: Settings,
    url: str | Target,
    config_error: str | None = None,
) -> dict[str, Any]:
    """The daemon's document, or one built here when it does not answer.

    `config_error` (config.toml did not load: `settings` are then the defaults) becomes the
    first problem, with the fix; everything else is still shown.
    """
    target = url if isinstance(url, Target) else Target(url)
    doc = _collect(h, settings, target)
    if config_error:
        _add_config_error(doc, config_error)
    return doc


def _add_config_error(doc: dict[str, Any], message: str) -> None:
    up = doc["daemon"].get("up")
    doc["errors"].insert(0, {"at": doc["generated_at"], "source": "config", "message": message})
    doc["problems"].insert(
        0,
        {
            "severity": "degraded",
            "what": f"config.toml is invalid: {message}",
            "do": "fix it (appliance doctor checks it); "
            + (
                "the running daemon keeps what it read at start, but will not start again "
                "until it is fixed"
                if up
                else "the daemon will not start until it is fixed; defaults are shown here"
            ),
        },
    )
    doc["health"] = advice.health(doc)
    doc["exit_code"] = advice.EXIT_CODES[doc["health"]]


def _collect(h: Home, settings: Settings, target: Target) -> dict[str, Any]:
    url = target.url
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
    if not daemon_up and target.record is not None:
        reason = (
            f"pid {target.record.pid} runs but does not answer yet (starting, loading "
            f"models?); {reason}"
        )
    elif not daemon_up and target.note:
        reason += f"; {target.note} (left by a daemon that did not stop cleanly)"
    daemon = {"up": daemon_up, "url": url, "version": __version__ if daemon_up else None}
    if target.record is not None:
        daemon["pid"] = target.record.pid
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
        None, "--url", help="The daemon's address (default: the running daemon's, else config)."
    ),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="Ask the daemon on this port of this box."
    ),
    watch: bool = typer.Option(
        False, "--watch", help="Refresh every 2 s (in place on a terminal, else a snapshot each)."
    ),
) -> None:
    """Is this box healthy? Exit 0 healthy, 1 degraded, 2 daemon down."""
    from appliance.status.render import fitted, render

    h = Home.from_env()
    config_error: str | None = None
    try:
        settings = load_settings(h.config_file)
    except ConfigError as e:  # still show the box: the broken file is the first finding
        settings, config_error = Settings(), str(e)
    target = Target.find(h, settings, url, port)

    def snapshot() -> dict[str, Any]:
        return collect(h, settings, target, config_error)

    doc = snapshot()
    if not watch:
        if as_json:
            sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        else:
            console.print(render(doc))
        raise typer.Exit(doc["exit_code"])
    try:
        if console.is_terminal and not as_json:
            from rich.live import Live

            # fitted(): cut to the window's height, the least urgent sections first
            with Live(fitted(doc), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(WATCH_INTERVAL_S)
                    doc = snapshot()
                    live.update(fitted(doc), refresh=True)
        else:
            while True:  # piped: one whole snapshot per interval, nothing cut
                if as_json:
                    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
                else:
                    console.print(render(doc))
                    console.print()
                sys.stdout.flush()
                time.sleep(WATCH_INTERVAL_S)
                doc = snapshot()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `appliance status --watch | head`: the reader is done
        _quiet_stdout()
    raise typer.Exit(doc["exit_code"])


def _quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so that exiting does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


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
