"""``appliance report adapters``: escalation rate and cost before and after each adapter.

Does distillation pay?
For every model that an adapter bundle names as its base (``model.base``), the ledger's
requests for that model are cut into periods at each moment an adapter for it was switched
on: installed (``bundle install`` activates), activated or rolled back to, as
``bundle_events`` recorded it. The period before the first is the base alone. For each
period: the requests decided, the share escalated ((escalated + queued) / (local +
escalated + queued), as in the main report), what the upstream answers to those
escalations cost, and what 1000 requests cost (upstream + the box's own time).

An upstream answer belongs to the period in which its escalation was made (the outbox
item's ``created_at``, joined by the escalation id), not the one in which it arrived: a
queued escalation answered after the switch was caused by the model before it. Answers
whose outbox item was purged cannot be placed and are left out of these figures (the main
report still counts them). Times have one-second resolution, as the ledger does.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance.bundles.records import NOT_ACTIVATED
from appliance.home import Home
from appliance.tco.ledger import TABLE

_SWITCHES = """
SELECT e.at, json_extract(b.manifest, '$.model.base'), b.name, b.version
FROM bundle_events e JOIN bundles b ON b.digest = e.digest
WHERE b.kind = 'adapter' AND e.outcome = 'accepted'
  AND e.action IN ('install', 'activate', 'rollback')
  AND COALESCE(e.reason, '') != ?  -- an install with --no-activate switched nothing
ORDER BY e.at, e.id
"""
_REQUESTS = f"""
SELECT route, COUNT(*), SUM(local_cost_usd) FROM {TABLE}
WHERE kind = 'request' AND model = ? AND at >= ? AND at < ? GROUP BY route
"""
_ANSWERS = f"""
SELECT COUNT(*), SUM(l.api_cost_usd) FROM {TABLE} l JOIN outbox o ON o.id = l.request_id
WHERE l.kind = 'upstream' AND o.model = ?
  AND substr(o.created_at, 1, 19) || 'Z' >= ? AND substr(o.created_at, 1, 19) || 'Z' < ?
"""
_START, _END = "0000", "9999"  # before and after any stamp


def _query(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # a box that never escalated has no outbox table
            return []
        raise


def _period(
    conn: sqlite3.Connection, model: str, adapter: str | None, start: str, end: str
) -> dict[str, Any]:
    routes = {
        route: (int(n), float(c or 0))
        for route, n, c in _query(conn, _REQUESTS, (model, start, end))
    }
    local = routes.get("local", (0, 0.0))[0]
    escalated = sum(routes.get(r, (0, 0.0))[0] for r in ("escalated", "queued"))
    decided = local + escalated
    answers, upstream_usd = next(iter(_query(conn, _ANSWERS, (model, start, end))), (0, 0.0))
    upstream_usd = float(upstream_usd or 0.0)
    local_usd = sum(cost for _, cost in routes.values())
    return {
        "adapter": adapter,
        "from": None if start == _START else start,
        "to": None if end == _END else end,
        "requests": decided,
        "escalation_rate": round(escalated / decided, 4) if decided else None,
        "upstream_answers": int(answers or 0),
        "upstream_cost_usd": round(upstream_usd, 6),
        "cost_per_1000_usd": (
            round((upstream_usd + local_usd) / decided * 1000, 6) if decided else None
        ),
    }


def by_adapter(conn: sqlite3.Connection, since: str | None = None) -> list[dict[str, Any]]:
    """Per model with an adapter history: its periods, oldest first (see the docstring)."""
    switches: dict[str, list[tuple[str, str]]] = {}
    for at, base, name, version in _query(conn, _SWITCHES, (NOT_ACTIVATED,)):
        if base:
            switches.setdefault(str(base), []).append((at, f"{name} {version}"))
    models = []
    for model, events in sorted(switches.items()):
        bounds = [(_START, None), *events]
        periods = []
        for (start, adapter), (end, _) in zip(bounds, [*events, (_END, None)], strict=True):
            if since is not None and end <= since:
                continue
            begin = max(start, since) if since is not None else start
            periods.append(_period(conn, model, adapter, begin, end))
        models.append({"model": model, "periods": periods})
    return models


def build(home: Home, since: str | None = None) -> dict[str, Any]:
    """The report's document, from state.db opened read-only (nothing when there is none)."""
    models: list[dict[str, Any]] = []
    if home.state_db.exists():
        conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=5.0)
        try:
            models = by_adapter(conn, since)
        finally:
            conn.close()
    return {"since": since, "models": models}
