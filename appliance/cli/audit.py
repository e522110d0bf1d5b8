"""`appliance audit`: which workloads belong where, by sensitivity x complexity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.distill.evaluate import policy_in_force
from appliance.errors import UsageError
from appliance.settings import load_settings
from appliance.tco import csvfile
from appliance.tco.report import parse_since
from appliance.workload import report
from appliance.workload.cells import SPLITS
from appliance.workload.rules import Rules

_DEFAULT = Rules()


def audit(
    as_json: bool = JSON_OPTION,
    csv_out: Path | None = typer.Option(
        None, "--csv", help="Also write one row per cell to this CSV file (for a spreadsheet)."
    ),
    since: str | None = typer.Option(
        None, "--since", help="Only from this UTC date (YYYY-MM-DD) or ISO time on."
    ),
    by: str | None = typer.Option(
        None, "--by", help=f"Split each cell further by: {', '.join(SPLITS)}."
    ),
    min_requests: int = typer.Option(
        _DEFAULT.min_requests, "--min-requests", min=1, help="Requests before a cell is judged."
    ),
    min_pairs: int = typer.Option(
        _DEFAULT.min_pairs, "--min-pairs", min=1, help="Golden pairs before agreement counts."
    ),
    agree: float = typer.Option(
        _DEFAULT.agree, "--agree", min=0.0, max=1.0, help="Token F1 that counts as agreement."
    ),
    distill_pairs: int = typer.Option(
        _DEFAULT.distill_pairs, "--distill-pairs", min=1, help="Trainable pairs to distill."
    ),
) -> None:
    """Workloads by sensitivity x complexity: counts, tokens, confidence, escalation,
    agreement with the upstream, cost so far, and what to change in the policy."""
    if by is not None and by not in SPLITS:
        raise UsageError(f"--by {by!r}: use one of {', '.join(SPLITS)}")
    floor = parse_since(since) if since is not None else None
    h = home()
    settings = load_settings(h.config_file)
    rules = Rules(
        min_requests=min_requests,
        min_pairs=min_pairs,
        agree=agree,
        distill_pairs=distill_pairs,
        low_escalation=_DEFAULT.low_escalation,
        low_confidence=_DEFAULT.low_confidence,
    )
    policy = policy_in_force(h, settings)
    document = report.build(h, settings, policy, since=floor, split=by, rules=rules)
    if csv_out is not None:
        try:
            csvfile.write(report.csv_rows(document), report.CSV_COLUMNS, csv_out)
        except OSError as e:
            raise UsageError(f"--csv: cannot write {csv_out}: {e.strerror}") from None
    if as_json:
        print_json(document)
        return
    if not document["cells"]:
        console.print("no governed requests in the audit yet", markup=False)
        return
    console.print(_table(document))
    for cell in document["cells"]:
        _advice(cell, by)
    if csv_out is not None:
        console.print(f"{len(document['cells'])} cells written to {csv_out}", markup=False)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _name(cell: dict[str, Any], by: str | None) -> str:
    name = f"{cell['sensitivity']} / {cell['complexity']}"
    return f"{name} / {cell[by] or '-'}" if by else name


def _table(d: dict[str, Any]) -> Table:
    title = f"workloads under policy {d['policy']['name']}" + (
        f" since {d['since']}" if d["since"] else ""
    )
    table = Table(title=title, title_justify="left")
    headers = ["cell", "egress", "requests", "escalated", "local tok", "upstream tok"]
    headers += ["confidence p10/med/p90", "below thr", "pairs", "F1", "cost", "action"]
    for header in headers:
        table.add_column(
            header, justify="left" if header in ("cell", "egress", "action") else "right"
        )
    for c in d["cells"]:
        conf, agreement = c["confidence"], c["agreement"]
        table.add_row(
            _name(c, d["by"]),
            c["egress"] or "-",
            f"{c['requests']:,}",
            _pct(c["escalation_rate"]),
            f"{c['tokens']['local']:,}",
            f"{c['tokens']['upstream']:,}",
            f"{_num(conf['p10'])}/{_num(conf['median'])}/{_num(conf['p90'])}",
            _pct(conf["below_threshold"]),
            str(agreement["golden_pairs"]),
            _num(agreement["token_f1"]),
            f"${c['cost_usd']['total']:,.4f}",
            c["recommendation"]["action"],
        )
    return table


def _advice(cell: dict[str, Any], by: str | None) -> None:
    advice = cell["recommendation"]
    console.print(f"\n{_name(cell, by)}: {advice['action']}: {advice['why']}", markup=False)
    if advice["change"]:
        for line in advice["change"].splitlines():
            console.print(f"    {line}", markup=False, highlight=False)
