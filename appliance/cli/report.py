"""`appliance report tco`: token economics, local vs what the proprietary API would cost."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table
from rich.text import Text

from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.errors import ApplianceError, ConfigError, UsageError
from appliance.home import Home
from appliance.settings import Settings, load_settings
from appliance.tco import breakeven, by_adapter, csvfile, daily
from appliance.tco import report as tco_report

if TYPE_CHECKING:
    from appliance.policy.schema import Policy

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
    csv_out: Path | None = typer.Option(
        None, "--csv", help="Also write one row per day in service to this CSV file (a plot)."
    ),
    as_of: str | None = typer.Option(
        None, "--as-of", help="The hardware figures as of this UTC date (default: today)."
    ),
    min_days: int = typer.Option(
        breakeven.MIN_DAYS, "--min-days", min=1, help="Days in service before extrapolating."
    ),
) -> None:
    """Tokens served locally vs escalated, what each cost, and the net savings; the hardware's
    cost per million tokens, break-even date and the volume that pays for it."""
    floor = tco_report.parse_since(since) if since is not None else None
    today = _day(as_of) if as_of is not None else datetime.now(UTC).date()
    h = home()
    settings = _settings(h)
    document = tco_report.build(
        h, floor, [u.name for u in settings.upstreams] if settings is not None else None
    )
    document["capex"] = None
    if settings is not None:
        ledger, prices = daily.read(h.state_db), breakeven.prices(settings, _policy(h, settings))
        document["capex"] = breakeven.build(
            ledger, settings.tco, prices, today, min_days=min_days, gpu_watts=_gpu_watts(settings)
        )
        if csv_out is not None:
            rows, columns = breakeven.series(ledger, settings.tco, prices, today)
            try:
                csvfile.write(rows, columns, csv_out)
            except OSError as e:
                raise UsageError(f"--csv: cannot write {csv_out}: {e.strerror}") from None
    elif csv_out is not None:
        raise ConfigError(f"{h.config_file} cannot be read: no daily figures to write")
    if as_json:
        print_json(document)
        return
    console.print(_table(document))
    console.print(_chart(document["days"][-DAYS_SHOWN:]))
    if document["pricing_note"]:
        console.print(document["pricing_note"], markup=False)
    if document["capex"] is not None:
        console.print(_capex_table(document["capex"]))
        if document["capex"]["extrapolation"]:
            console.print(document["capex"]["extrapolation"], markup=False)
    if csv_out is not None:
        console.print(f"daily figures written to {csv_out}", markup=False)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--as-of {text!r} is not a date (YYYY-MM-DD)") from None


def _settings(h: Home) -> Settings | None:
    """config.toml; None when it cannot be read (the ledger is the report's source: a broken
    config only costs the pricing note and the hardware figures)."""
    try:
        return load_settings(h.config_file)
    except ConfigError:
        return None


def _policy(h: Home, settings: Settings) -> Policy | None:
    """The policy in force, for its prices; None when it cannot be read (config's prices)."""
    from appliance.distill.evaluate import policy_in_force

    try:
        return policy_in_force(h, settings)
    except ApplianceError:
        return None


def _gpu_watts(settings: Settings) -> float | None:
    """The GPUs' draw now (nvidia-smi), when the ledger counts it and there is a reading."""
    if not settings.tco.gpu_power:
        return None
    from appliance.runtime.gpu import gpus

    readings = [g["power_watts"] for g in gpus() if isinstance(g.get("power_watts"), float)]
    return sum(readings) if readings else None


def _capex_table(c: dict[str, Any]) -> Table:
    table = Table(
        title=f"the box as an investment ({c['days_in_service']} days in service since "
        f"{c['in_service']}, as of {c['as_of']})",
        title_justify="left",
        show_header=False,
    )
    table.add_column()
    table.add_column(justify="right")
    years = c["amortisation_years"]
    table.add_row("purchase price", f"{_usd(c['hardware_price_usd'])} over {years:g} years")
    power = c["power"]
    gpu = f" + GPUs {power['gpu_watts_now']:.0f} W now" if power["gpu_watts_now"] else ""
    table.add_row("power", f"box {power['box_watts']:g} W{gpu} ({power['source']})")
    cost = c["cost_to_date_usd"]
    table.add_row(
        "cost to date",
        f"{_usd(cost['total'])} (hardware {_usd(cost['hardware'])}, running "
        f"{_usd(cost['running'])}, ops {_usd(cost['ops'])})",
    )
    table.add_row(
        "tokens served locally",
        f"{c['local_tokens']:,} ({c['local_tokens_per_day'] or 0:,.0f} a day)",
    )
    per_mtok = c["local_cost_per_mtok_usd"]
    table.add_row(
        "local cost per million tokens",
        "-"
        if per_mtok is None
        else f"{_usd(per_mtok)} (running alone {_usd(c['running_cost_per_mtok_usd'])})",
    )
    table.add_row("API cost avoided", _usd(c["api_cost_avoided_usd"]))
    for u in c["upstreams"]:
        if u["break_even"]:
            when = u["break_even"] + (" (reached)" if u["break_even_reached"] else "")
            when += f" ({u['break_even_note']})" if u["break_even_note"] else ""
        else:
            when = u["break_even_note"] or c["extrapolation"] or "-"
        beats = u["beats_at_tokens_per_day"]
        table.add_row(f"vs {u['upstream']}: avoided", _usd(u["api_cost_avoided_usd"]))
        table.add_row(f"vs {u['upstream']}: break-even", when)
        table.add_row(
            f"vs {u['upstream']}: beats it from",
            "-" if beats is None else f"{beats:,.0f} tokens a day",
        )
    return table


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
