"""`appliance doctor`: check the install; each check with pass/warn/fail and the fix."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.doctor import run_checks

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def doctor(as_json: bool = JSON_OPTION) -> None:
    """Check trust store, key files, bundle hashes, state.db, disk and clock; exit 1 on a fail."""
    checks = run_checks(home())
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        print_json([c.to_json() for c in checks])
    else:
        table = Table(title="appliance doctor", title_justify="left")
        for column in ("", "check", "detail", "fix"):
            table.add_column(column, overflow="fold")
        for c in checks:
            table.add_row(Text(c.status.upper(), _STYLE[c.status]), c.name, c.detail, c.fix)
        console.print(table)
        summary = "problems found: fix the FAIL lines" if failed else "the install looks sound"
        console.print(summary, markup=False)
    if failed:
        raise typer.Exit(1)
