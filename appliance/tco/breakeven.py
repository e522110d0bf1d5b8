"""The box as an investment: cost per million tokens, break-even date, the volume that pays.

An API's cost grows with use; the box's is mostly paid up front. From the ledger by day
(``daily``) and ``[tco]`` in config.toml, over the box's life so far (its first day in
service, ``in_service``, else the ledger's first day, through the report's day, whole UTC
days; ``--since`` does not cut it):

- cost to date = the purchase price spread over ``amortisation_years`` (per calendar day,
  used or not) + the running cost the ledger recorded (power: the configured box draw plus
  the GPUs' draw nvidia-smi reported while each request ran) + ``ops_usd_per_month``;
- local cost per million tokens at the observed utilisation = cost to date / tokens served
  on the box x 10^6 (and the running part alone: what one more token costs);
- for each upstream (config.toml's, at the policy's prices where it has them): what the
  box's tokens would have cost there (its input and output prices on the observed prompt
  and completion tokens), the **break-even date** (the first day on which the API cost
  avoided, at the observed daily average, reaches the whole purchase price + running + ops
  to that day: day ``ceil(price / (avoided - running - ops per day))`` in service), and the
  **volume at which the box beats it**, in tokens a day: (amortised price + ops) per day /
  (the upstream's price per token at the observed mix - the running cost per token).

Break-even extrapolates the daily average, so it needs ``min_days`` days in service and
some tokens served: with less, the figures that extrapolate are None and ``extrapolation``
says why. ``series`` gives one row per day for a plot (the CSV of ``report tco --csv``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from appliance.settings import Settings, TcoSettings
from appliance.tco.daily import Day

if TYPE_CHECKING:
    from appliance.policy.schema import Policy

DAYS_PER_YEAR = 365.25
MIN_DAYS = 7  # days in service before a daily average is extrapolated
HORIZON_YEARS = 100  # a break-even further away than this is reported as none


@dataclass(frozen=True)
class Price:
    """An upstream's price, USD per million tokens."""

    upstream: str
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        ) / 1e6


@dataclass(frozen=True)
class Life:
    """The box's days in service with the ledger's figures, and what its hardware costs a day."""

    start: date
    end: date
    days: tuple[Day, ...]  # one per calendar day from start to end, empty days included
    tco: TcoSettings

    @classmethod
    def of(cls, ledger: Sequence[Day], tco: TcoSettings, today: date) -> Life:
        start = tco.in_service or (ledger[0].day if ledger else today)
        by_day = {d.day: d for d in ledger}
        count = max(0, (today - start).days + 1)
        days = tuple(
            by_day.get(start + timedelta(i), Day(start + timedelta(i))) for i in range(count)
        )
        return cls(start, today, days, tco)

    @property
    def amortisation_days(self) -> float:
        return self.tco.amortisation_years * DAYS_PER_YEAR

    @property
    def capex_per_day(self) -> float:
        return self.tco.hardware_price_usd / self.amortisation_days

    @property
    def ops_per_day(self) -> float:
        return self.tco.ops_usd_per_month * 12 / DAYS_PER_YEAR

    def capex_on(self, index: int) -> float:
        """The purchase's share on the `index`-th day in service (0 once amortised)."""
        return self.capex_per_day if index < self.amortisation_days else 0.0


def _sum(days: Sequence[Day], field: str) -> Any:
    return sum(getattr(d, field) for d in days)


def _usd(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _per_mtok(usd: float, tokens: int) -> float | None:
    return round(usd / tokens * 1e6, 6) if tokens else None


def extrapolation_note(life: Life, tokens: int, min_days: int) -> str | None:
    """Why the daily average cannot be extrapolated; None when it can."""
    if not life.days:
        return f"in_service ({life.start}) is after the report's day ({life.end})"
    if not tokens:
        return "no tokens served on the box yet: nothing to extrapolate"
    if len(life.days) < min_days:
        return (
            f"too little history to extrapolate: {len(life.days)} day(s) in service, "
            f"{min_days} needed (--min-days)"
        )
    return None


def _upstream(life: Life, price: Price, extrapolate: bool) -> dict[str, Any]:
    days = life.days
    prompt, completion = _sum(days, "prompt_tokens"), _sum(days, "completion_tokens")
    tokens = prompt + completion
    running = _sum(days, "running_cost_usd")
    avoided = price.cost(prompt, completion)
    entry: dict[str, Any] = {
        "upstream": price.upstream,
        "input_per_mtok": price.input_per_mtok,
        "output_per_mtok": price.output_per_mtok,
        "api_cost_avoided_usd": round(avoided, 6),
        "api_cost_per_mtok_usd": _per_mtok(avoided, tokens),
        "break_even": None,
        "break_even_reached": None,
        "break_even_note": None,
        "beats_at_tokens_per_day": None,
    }
    if tokens:
        fixed = life.capex_per_day + life.ops_per_day
        margin = (avoided - running) / tokens  # USD per token the box saves over running
        if margin <= 0:
            entry["break_even_note"] = (
                f"never: a token costs more to run on the box than at {price.upstream}"
            )
        else:
            entry["beats_at_tokens_per_day"] = round(fixed / margin, 1)
    if not extrapolate or entry["break_even_note"] is not None:
        return entry
    if life.tco.hardware_price_usd <= 0:
        entry["break_even_note"] = "no purchase price configured ([tco] hardware_price_usd)"
        return entry
    per_day = (avoided - running) / len(days) - life.ops_per_day
    if per_day <= 0:
        entry["break_even_note"] = (
            f"never at the observed volume: {len(days)} days avoided "
            f"${avoided:,.6f} at {price.upstream}, running and ops cost more"
        )
        return entry
    day_number = math.ceil(life.tco.hardware_price_usd / per_day)  # 1: the first day
    if day_number > HORIZON_YEARS * DAYS_PER_YEAR:
        entry["break_even_note"] = (
            f"not within {HORIZON_YEARS} years at the observed volume "
            f"(${per_day:,.6f} a day towards ${life.tco.hardware_price_usd:,.2f})"
        )
        return entry
    when = life.start + timedelta(day_number - 1)
    entry["break_even"] = when.isoformat()
    entry["break_even_reached"] = when <= life.end
    if day_number > life.amortisation_days:
        entry["break_even_note"] = "after the amortisation period"
    return entry


def build(
    ledger: Sequence[Day],
    tco: TcoSettings,
    prices: Sequence[Price],
    today: date,
    *,
    min_days: int = MIN_DAYS,
    gpu_watts: float | None = None,
) -> dict[str, Any]:
    """The break-even section of ``report tco`` (see the module docstring)."""
    life = Life.of(ledger, tco, today)
    days = life.days
    tokens = _sum(days, "local_tokens")
    running = _sum(days, "running_cost_usd")
    capex = sum(life.capex_on(i) for i in range(len(days)))
    ops = life.ops_per_day * len(days)
    total = capex + running + ops
    note = extrapolation_note(life, tokens, min_days)
    return {
        "hardware_price_usd": tco.hardware_price_usd,
        "amortisation_years": tco.amortisation_years,
        "ops_usd_per_month": tco.ops_usd_per_month,
        "in_service": life.start.isoformat(),
        "as_of": life.end.isoformat(),
        "days_in_service": len(days),
        "power": {
            "box_watts": tco.power_watts,
            "gpu_watts_now": gpu_watts,
            "source": "measured (nvidia-smi) + configured" if gpu_watts else "configured",
            "electricity_usd_per_kwh": tco.electricity_usd_per_kwh,
        },
        "local_tokens": tokens,
        "local_tokens_per_day": round(tokens / len(days), 1) if days else None,
        "cost_to_date_usd": {
            "hardware": round(capex, 6),
            "running": round(running, 6),
            "ops": round(ops, 6),
            "total": round(total, 6),
        },
        "local_cost_per_mtok_usd": _per_mtok(total, tokens),
        "running_cost_per_mtok_usd": _per_mtok(running, tokens),
        "api_cost_avoided_usd": round(_sum(days, "api_cost_avoided_usd"), 6),
        "upstreams": [_upstream(life, p, note is None) for p in prices],
        "extrapolation": note,
    }


SERIES_COLUMNS = (
    "day",
    "local_requests",
    "prompt_tokens",
    "completion_tokens",
    "local_tokens",
    "upstream_tokens",
    "api_cost_avoided_usd",
    "upstream_cost_usd",
    "running_cost_usd",
    "hardware_usd",
    "ops_usd",
    "local_cost_usd",
    "net_usd",
    "cumulative_api_cost_avoided_usd",
    "cumulative_cost_usd",
    "cumulative_net_usd",
)


def series(
    ledger: Sequence[Day], tco: TcoSettings, prices: Sequence[Price], today: date
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """One row per UTC day in service, and the columns (SERIES_COLUMNS + one per upstream).

    ``cumulative_cost_usd`` counts the whole purchase price from the first day (the line the
    API cost avoided must cross to break even); ``local_cost_usd`` a day's amortised share.
    """
    life = Life.of(ledger, tco, today)
    columns = SERIES_COLUMNS + tuple(f"api_cost_at_{p.upstream}_usd" for p in prices)
    rows = []
    avoided_sum = 0.0
    cost_sum = tco.hardware_price_usd
    for index, d in enumerate(life.days):
        capex, ops = life.capex_on(index), life.ops_per_day
        local_cost = capex + d.running_cost_usd + ops
        avoided_sum += d.api_cost_avoided_usd
        cost_sum += d.running_cost_usd + ops
        row: dict[str, Any] = {
            "day": d.day.isoformat(),
            "local_requests": d.local_requests,
            "prompt_tokens": d.prompt_tokens,
            "completion_tokens": d.completion_tokens,
            "local_tokens": d.local_tokens,
            "upstream_tokens": d.upstream_tokens,
            "api_cost_avoided_usd": _usd(d.api_cost_avoided_usd),
            "upstream_cost_usd": _usd(d.upstream_cost_usd),
            "running_cost_usd": _usd(d.running_cost_usd),
            "hardware_usd": _usd(capex),
            "ops_usd": _usd(ops),
            "local_cost_usd": _usd(local_cost),
            "net_usd": _usd(d.api_cost_avoided_usd - local_cost),
            "cumulative_api_cost_avoided_usd": _usd(avoided_sum),
            "cumulative_cost_usd": _usd(cost_sum),
            "cumulative_net_usd": _usd(avoided_sum - cost_sum),
        }
        for p in prices:
            row[f"api_cost_at_{p.upstream}_usd"] = _usd(
                p.cost(d.prompt_tokens, d.completion_tokens)
            )
        rows.append(row)
    return rows, columns


def prices(settings: Settings, policy: Policy | None) -> list[Price]:
    """Each configured upstream's price (the policy's where it names one, as the ledger
    prices them); with no upstream configured, the policy's price table."""
    found = [
        Price(u.name, u.price_input_per_mtok, u.price_output_per_mtok)
        if policy is None
        else Price(
            u.name, *policy.price_for(u.name, u.price_input_per_mtok, u.price_output_per_mtok)
        )
        for u in settings.upstreams
    ]
    if found or policy is None:
        return found
    return [
        Price(name, p.input_per_mtok or 0.0, p.output_per_mtok or 0.0)
        for name, p in policy.prices.items()
    ]
