"""`appliance report tco`: token economics, local vs what the proprietary API would cost."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.errors import ConfigError
from appliance.home import Home
from appliance.settings import load_settings
from appliance.tco import by_adapter
from appliance.tco import report as tco_report

app = typer.Typer(help="Reports from the box's ledgers.", no_args_is_help=True)
BAR_WIDTH = 40  # characters of the longest bar
DAYS_SHOWN = 14


def _usd(value: float) -> str:
    digits = 2 if value == 0 or abs(value) >= 1 else 4 if abs(value) >= 0.01 else 6
    return ("-" if value < 0 else "") + f"${abs(value):,.{digits}f}"


def _duration(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.1f} s"
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:,.1f} h"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


@app.command("tco")
def tco(
    as_json: bool = JSON_OPTION,
    since: str | None = typer.Option(
        None,
        "--since",
        help="Only from this UTC date (YYYY-MM-DD) or ISO time (UTC unless it has a zone) on.",
    ),
) -> None:
    """Tokens served locally vs escalated, what each cost, and the net savings."""
    floor = tco_report.parse_since(since) if since is not None else None
    h = home()
    document = tco_report.build(h, floor, _configured_upstreams(h))
    if as_json:
        print_json(document)
        return
    console.print(_table(document))
    console.print(_chart(document["days"][-DAYS_SHOWN:]))
    if document["pricing_note"]:
        console.print(document["pricing_note"], markup=False)


def _configured_upstreams(h: Home) -> list[str] | None:
    """config.toml's upstream names, for the pricing note; None when it cannot be read."""
    try:
        return [u.name for u in load_settings(h.config_file).upstreams]
    except ConfigError:  # the ledger is the report's source; a broken config only costs the note
        return None


def _table(d: dict[str, Any]) -> Table:
    title = "token economics" + (f" since {d['since']}" if d["since"] else "")
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column()
    table.add_column(justify="right")
    requests = d["requests"]
    table.add_row(
        "requests",
        f"{requests['local']} local, {requests['escalated']} escalated, "
        f"{requests['queued']} queued, {requests['refused']} refused",
    )
    table.add_row("tokens served locally", f"{d['local']['tokens']:,}")
    table.add_row(
        "tokens escalated", f"{d['escalated']['tokens']:,} ({d['escalated']['answers']} answers)"
    )
    table.add_row("escalated tokens cost", _usd(d["escalated"]["cost_usd"]))
    if d["escalated"]["estimated_requests"]:
        table.add_row(
            "  of which estimated",
            f"{_usd(d['escalated']['estimated_cost_usd'])} "
            f"({d['escalated']['estimated_requests']} requests sent without a usable answer)",
        )
    table.add_row("local tokens at API prices", _usd(d["api_cost_avoided_usd"]))
    table.add_row(
        f"local cost ({_duration(d['local_run_hours'])} of model time)", _usd(d["local_cost_usd"])
    )
    table.add_row(Text("net savings", style="bold"), Text(_usd(d["net_savings_usd"]), "bold"))
    table.add_row(
        "local share",
        f"{_share(d['local_share']['requests'])} of requests, "
        f"{_share(d['local_share']['tokens'])} of tokens",
    )
    table.add_row("escalation rate", _share(d["escalation_rate"]))
    if d["priced_against"]:
        table.add_row("priced against", ", ".join(d["priced_against"]))
    return table


@app.command("adapters")
def adapters(
    as_json: bool = JSON_OPTION,
    since: str | None = typer.Option(
        None, "--since", help="Only from this UTC date (YYYY-MM-DD) or ISO time on."
    ),
) -> None:
    """Escalation rate and cost before and after each adapter version of each model."""
    floor = tco_report.parse_since(since) if since is not None else None
    document = by_adapter.build(home(), floor)
    if as_json:
        print_json(document)
        return
    for model in document["models"]:
        console.print(_adapter_table(model))
    if not document["models"]:
        console.print("no adapter bundle has been installed on this box", markup=False)


def _adapter_table(model: dict[str, Any]) -> Table:
    """Before and after each adapter version of one model: did distillation pay?"""
    table = Table(title=f"{model['model']} by adapter version", title_justify="left")
    for column in ("adapter", "from", "requests", "escalation rate", "upstream cost", "per 1000"):
        table.add_column(column, justify="left" if column in ("adapter", "from") else "right")
    for p in model["periods"]:
        per_1000 = p["cost_per_1000_usd"]
        table.add_row(
            p["adapter"] or "(base alone)",
            p["from"] or "-",
            f"{p['requests']:,}",
            _share(p["escalation_rate"]),
            _usd(p["upstream_cost_usd"]),
            "-" if per_1000 is None else _usd(per_1000),
        )
    return table


def _chart(days: list[dict[str, Any]]) -> Table:
    chart = Table(
        title="tokens per day ([green]█[/] local, [yellow]█[/] escalated)",
        title_justify="left",
        show_header=False,
        box=None,
    )
    chart.add_column()
    chart.add_column()
    most = max((day["local_tokens"] + day["escalated_tokens"] for day in days), default=0)
    for day in days:
        local = round(BAR_WIDTH * day["local_tokens"] / most) if most else 0
        remote = round(BAR_WIDTH * day["escalated_tokens"] / most) if most else 0
        bar = Text.assemble(("█" * local, "green"), ("█" * remote, "yellow"))
        bar.append(f" {day['local_tokens']:,} local / {day['escalated_tokens']:,} escalated")
        chart.add_row(day["day"], bar)
    if not days:
        chart.add_row("", "no requests in the ledger yet")
    return chart
