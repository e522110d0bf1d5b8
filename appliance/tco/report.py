"""``appliance report tco``: the ledger added up, straight from state.db (read-only).

Figures (USD, tokens) over the rows at or after `since`:

- served locally: requests answered on the box (routes ``local`` and ``queued``: a queued
  request's device got the local answer at once) and their tokens;
- escalated: upstream answers received (now, by sync, or by USB) and what they cost;
- API cost avoided: what the locally served tokens would have cost at the API's price;
- local cost: wall time x the box's hourly cost (hardware + power), every local run counted;
- net savings = API cost avoided - local cost;
- local share of requests and of tokens, and the cascade's escalation rate
  ((escalated + queued) / (local + escalated + queued)); refused requests count in neither.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime
from typing import Any

from appliance.errors import UsageError
from appliance.home import Home
from appliance.tco.ledger import TABLE

SERVED_LOCALLY = ("local", "queued")
STAMP = "%Y-%m-%dT%H:%M:%SZ"  # the ledger's `at` format


def parse_since(text: str) -> str:
    """`YYYY-MM-DD` (midnight UTC) or an ISO time with a zone, as the ledger's stamp."""
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise ValueError("no time zone")
    except ValueError as e:
        raise UsageError(
            f"--since {text!r} is not a date (YYYY-MM-DD) or an ISO time with a zone: {e}"
        ) from None
    return moment.astimezone(UTC).strftime(STAMP)


def _open(home: Home) -> sqlite3.Connection | None:
    if not home.state_db.exists():
        return None
    return sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=5.0)


def _rows(conn: sqlite3.Connection | None, sql: str, args: tuple[Any, ...]) -> list[Any]:
    if conn is None:
        return []
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise


def build(home: Home, since: str | None = None) -> dict[str, Any]:
    floor = since or ""
    conn = _open(home)
    try:
        by_route = {
            route: (n, tokens, avoided, local_cost, wall_ms)
            for route, n, tokens, avoided, local_cost, wall_ms in _rows(
                conn,
                f"SELECT route, COUNT(*), SUM(prompt_tokens + completion_tokens), "
                f"SUM(api_cost_usd), SUM(local_cost_usd), SUM(wall_ms) FROM {TABLE} "
                "WHERE kind = 'request' AND at >= ? GROUP BY route",
                (floor,),
            )
        }
        upstream = _rows(
            conn,
            f"SELECT COUNT(*), COALESCE(SUM(prompt_tokens + completion_tokens), 0), "
            f"COALESCE(SUM(api_cost_usd), 0) FROM {TABLE} WHERE kind = 'upstream' AND at >= ?",
            (floor,),
        )
        days = _rows(
            conn,
            f"SELECT substr(at, 1, 10), "
            f"SUM(CASE WHEN kind = 'request' AND route IN ('local', 'queued') "
            f"THEN prompt_tokens + completion_tokens ELSE 0 END), "
            f"SUM(CASE WHEN kind = 'upstream' THEN prompt_tokens + completion_tokens ELSE 0 END) "
            f"FROM {TABLE} WHERE at >= ? GROUP BY 1 ORDER BY 1",
            (floor,),
        )
        priced = _rows(
            conn,
            f"SELECT DISTINCT upstream FROM {TABLE} WHERE kind = 'request' AND at >= ? "
            "AND upstream IS NOT NULL",
            (floor,),
        )
    finally:
        if conn is not None:
            conn.close()

    def count(route: str) -> int:
        return int(by_route.get(route, (0,))[0] or 0)

    def total(index: int, routes: tuple[str, ...] | None = None) -> float:
        chosen = by_route if routes is None else {r: by_route[r] for r in routes if r in by_route}
        return float(sum((row[index] or 0) for row in chosen.values()))

    served_requests = sum(count(r) for r in SERVED_LOCALLY)
    served_tokens = int(total(1, SERVED_LOCALLY))
    avoided = total(2, SERVED_LOCALLY)
    local_cost = total(3)
    up_n, up_tokens, up_cost = upstream[0] if upstream else (0, 0, 0.0)
    decided = served_requests + count("escalated")
    all_tokens = served_tokens + int(up_tokens)
    return {
        "since": since,
        "requests": {route: count(route) for route in ("local", "queued", "escalated", "refused")},
        "served_locally": {"requests": served_requests, "tokens": served_tokens},
        "escalated": {
            "answers": int(up_n),
            "tokens": int(up_tokens),
            "cost_usd": round(float(up_cost), 6),
        },
        "api_cost_avoided_usd": round(avoided, 6),
        "local_cost_usd": round(local_cost, 6),
        "local_hours": round(total(4) / 3_600_000, 4),
        "net_savings_usd": round(avoided - local_cost, 6),
        "local_share": {
            "requests": round(served_requests / decided, 4) if decided else None,
            "tokens": round(served_tokens / all_tokens, 4) if all_tokens else None,
        },
        "escalation_rate": (
            round((count("escalated") + count("queued")) / decided, 4) if decided else None
        ),
        "priced_against": sorted(r[0] for r in priced),
        "days": [
            {"day": day, "local_tokens": int(local or 0), "escalated_tokens": int(remote or 0)}
            for day, local, remote in days
        ],
    }
