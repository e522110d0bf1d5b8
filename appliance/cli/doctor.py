"""`appliance doctor`: check the install; each check with pass/warn/fail and the fix."""

from __future__ import annotations

from collections import Counter

import typer
from rich.table import Table
from rich.text import Text

from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.doctor import failed, run_checks

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def doctor(as_json: bool = JSON_OPTION) -> None:
    """Check trust store, key files, bundle hashes, state.db, disk, clock, config; 1 on a fail."""
    checks = run_checks(home())
    if as_json:
        print_json([c.to_json() for c in checks])
    else:
        table = Table(title="appliance doctor", title_justify="left")
        for column in ("", "check", "detail", "fix"):
            table.add_column(column, overflow="fold")
        for c in checks:
            table.add_row(
                Text(c.status.upper(), _STYLE[c.status]), Text(c.name), Text(c.detail), Text(c.fix)
            )
        console.print(table)
        counts = Counter(c.status for c in checks)
        verdict = "problems found: fix the FAIL lines" if failed(checks) else "the install is sound"
        console.print(
            f"{counts['pass']} passed, {counts['warn']} warning(s), {counts['fail']} failed: "
            f"{verdict}",
            markup=False,
        )
    if failed(checks):
        raise typer.Exit(1)
