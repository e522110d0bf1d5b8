"""``appliance report tco``: the ledger added up, straight from state.db (read-only).

Figures (USD, tokens) over the rows at or after `since`:

- local: requests that stayed on the box (route ``local``) and their tokens;
- escalated: requests that went, or wait to go, to an upstream (routes ``escalated`` and
  ``queued``: a queued request's device got the local answer at once, but the upstream is
  asked and paid later), and the upstream answers received (now, by sync, or by USB): their
  tokens and what they cost;
- API cost avoided: what the local requests' tokens would have cost at the API's price;
- local cost: the box's busy time x its hourly cost (hardware + power), for every local run
  (a queued or escalated request's local attempt, and a second shared by overlapping runs
  counted once);
- net savings = API cost avoided - local cost;
- local share of requests (local / (local + escalated + queued)) and of tokens (local tokens /
  (local tokens + upstream tokens)), and the cascade's escalation rate ((escalated + queued) /
  (local + escalated + queued)); refused requests count in neither.

One aggregate query (grouped by day, kind, route and upstream; a few hundred groups a year)
does the work; the index on ``at`` serves ``--since``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from appliance.errors import UsageError
from appliance.home import Home
from appliance.tco.ledger import ESTIMATED_ROUTE, TABLE

ROUTES = ("local", "queued", "escalated", "refused")
ESCALATED = ("escalated", "queued")
STAMP = "%Y-%m-%dT%H:%M:%SZ"  # the ledger's `at` format
_SQL = (
    "SELECT substr(at, 1, 10), kind, route, upstream, COUNT(*), "
    "SUM(prompt_tokens + completion_tokens), SUM(api_cost_usd), SUM(local_cost_usd), "
    f"SUM(wall_ms) FROM {TABLE} {{where}} GROUP BY 1, 2, 3, 4"
)


def parse_since(text: str) -> str:
    """`YYYY-MM-DD` (midnight UTC) or an ISO time (UTC unless it names a zone), as a stamp."""
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError as e:
        raise UsageError(
            f"--since {text!r} is not a date (YYYY-MM-DD) or an ISO time "
            f"(YYYY-MM-DDTHH:MM[:SS][+HH:MM], UTC by default): {e}"
        ) from None
    return moment.astimezone(UTC).strftime(STAMP)


@dataclass
class _Sum:
    count: int = 0
    tokens: int = 0
    api_usd: float = 0.0
    local_usd: float = 0.0
    wall_ms: float = 0.0

    def add(self, count: int, tokens: int, api: float, local: float, wall: float) -> None:
        self.count += count
        self.tokens += tokens
        self.api_usd += api
        self.local_usd += local
        self.wall_ms += wall


def _groups(home: Home, since: str | None) -> list[tuple[Any, ...]]:
    if not home.state_db.exists():
        return []
    conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=5.0)
    try:
        if since is None:  # every row: a plain scan beats walking the index
            return conn.execute(_SQL.format(where="")).fetchall()
        return conn.execute(_SQL.format(where="WHERE at >= ?"), (since,)).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise
    finally:
        conn.close()


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def build(
    home: Home, since: str | None = None, upstreams: Sequence[str] | None = None
) -> dict[str, Any]:
    """The report's figures; `upstreams`: config.toml's upstream names (None: not known)."""
    routes = {route: _Sum() for route in ROUTES}
    answers = _Sum()
    estimated = _Sum()  # upstream requests without usage (no answer): estimated cost
    priced: set[str] = set()
    days: dict[str, dict[str, int]] = {}
    for day, kind, route, upstream, count, tokens, api, local, wall in _groups(home, since):
        row = (int(count), int(tokens or 0), float(api or 0), float(local or 0), float(wall or 0))
        tally = days.setdefault(day, {"local_tokens": 0, "escalated_tokens": 0})
        if kind == "upstream":
            answers.add(*row)
            if route == ESTIMATED_ROUTE:
                estimated.add(*row)
            tally["escalated_tokens"] += row[1]
            continue
        routes.setdefault(route, _Sum()).add(*row)
        if route == "local":
            tally["local_tokens"] += row[1]
        if upstream is not None:
            priced.add(upstream)

    local = routes["local"]
    escalated = sum(routes[r].count for r in ESCALATED)
    decided = local.count + escalated
    avoided = local.api_usd
    local_cost = sum(s.local_usd for s in routes.values())
    requests = sum(s.count for s in routes.values())
    return {
        "since": since,
        "requests": {route: routes[route].count for route in ROUTES},
        "local": {"requests": local.count, "tokens": local.tokens},
        "escalated": {
            "requests": escalated,
            "answers": answers.count,
            "tokens": answers.tokens,
            "cost_usd": round(answers.api_usd, 6),
            "estimated_requests": estimated.count,
            "estimated_cost_usd": round(estimated.api_usd, 6),
        },
        "api_cost_avoided_usd": round(avoided, 6),
        "local_cost_usd": round(local_cost, 6),
        "local_run_hours": round(sum(s.wall_ms for s in routes.values()) / 3_600_000, 4),
        "net_savings_usd": round(avoided - local_cost, 6),
        "local_share": {
            "requests": _ratio(local.count, decided),
            "tokens": _ratio(local.tokens, local.tokens + answers.tokens),
        },
        "escalation_rate": _ratio(escalated, decided),
        "priced_against": sorted(priced),
        "pricing_note": _pricing_note(requests, sorted(priced), upstreams),
        "days": [{"day": day, **days[day]} for day in sorted(days)],
    }


def _pricing_note(requests: int, priced: list[str], upstreams: Sequence[str] | None) -> str | None:
    """Why the local tokens' API price may not be what the operator expects."""
    if not requests:
        return None
    if not priced:
        return (
            "no upstream price is known: local tokens are priced at $0 (give [[upstreams]] "
            "prices in config.toml, or a [prices] table in the policy)"
        )
    if upstreams is not None and not upstreams:
        return (
            "no upstream is configured: local tokens are priced with the policy's first "
            f"price entry ({', '.join(priced)})"
        )
    return None
