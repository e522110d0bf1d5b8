"""The ledger by UTC day: what the box served, what it cost to run, what the API would have cost.

One aggregate query over the whole ledger (a few rows a day come back), read-only. For each
day with rows: the requests answered on the box (route ``local``) and their prompt and
completion tokens, what those tokens would have cost at the API price the ledger recorded
(the API cost avoided), the tokens and cost of upstream answers, and the box's running cost
(the ledger's ``local_cost_usd`` of every local run: power, and the hourly hardware cost
where one is configured instead of a purchase price).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from appliance.tco.ledger import TABLE

_SQL = f"""
SELECT substr(at, 1, 10),
    SUM(kind = 'request' AND route = 'local'),
    SUM(CASE WHEN kind = 'request' AND route = 'local' THEN prompt_tokens ELSE 0 END),
    SUM(CASE WHEN kind = 'request' AND route = 'local' THEN completion_tokens ELSE 0 END),
    SUM(CASE WHEN kind = 'request' AND route = 'local' THEN api_cost_usd ELSE 0 END),
    SUM(CASE WHEN kind = 'upstream' THEN prompt_tokens + completion_tokens ELSE 0 END),
    SUM(CASE WHEN kind = 'upstream' THEN api_cost_usd ELSE 0 END),
    SUM(local_cost_usd)
FROM {TABLE} GROUP BY 1 ORDER BY 1
"""


@dataclass(frozen=True)
class Day:
    day: date
    local_requests: int = 0
    prompt_tokens: int = 0  # of the local requests
    completion_tokens: int = 0
    api_cost_avoided_usd: float = 0.0  # the local tokens at the price the ledger recorded
    upstream_tokens: int = 0
    upstream_cost_usd: float = 0.0
    running_cost_usd: float = 0.0  # the box's model time: power (+ hourly hardware, if so)

    @property
    def local_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def read(state_db: Path) -> list[Day]:
    """Every day with ledger rows, oldest first; [] without a state.db or a ledger."""
    if not state_db.exists():
        return []
    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = conn.execute(_SQL).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise
    finally:
        conn.close()
    return [
        Day(
            day=date.fromisoformat(day),
            local_requests=int(n or 0),
            prompt_tokens=int(prompt or 0),
            completion_tokens=int(completion or 0),
            api_cost_avoided_usd=float(avoided or 0),
            upstream_tokens=int(up_tokens or 0),
            upstream_cost_usd=float(up_cost or 0),
            running_cost_usd=float(running or 0),
        )
        for day, n, prompt, completion, avoided, up_tokens, up_cost, running in rows
    ]
