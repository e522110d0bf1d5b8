"""What every subcommand shares: the root app, consoles, JSON output, the home."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

from appliance import __version__
from appliance.home import Home

app = typer.Typer(
    help="Appliance: signed local models behind an OpenAI-compatible API, for air-gapped sites.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Off a terminal (pipes, CI logs) Rich would wrap at 80 columns and cut key ids; don't.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def _print_version(value: bool) -> None:
    if value:
        console.print(f"appliance {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Appliance command line."""


def home() -> Home:
    return Home.from_env()


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
