"""Every request the box governed, as the audit, the ledger and the outbox know it.

One row per audit row (a routing decision), read from state.db opened read-only:

- from the audit: device, model, sensitivity class, route, local confidence, escalation id
  and upstream; the complexity is the pre-check's verdict as the audit's reasons record it
  (a reason ``pre-check: hard (...)``, written by ``governance.classify``): ``complex``,
  else ``simple``;
- from the TCO ledger's request row (same request id): the tokens the local model read and
  wrote, what its run cost the box, and what those tokens would have cost at the API;
- from the ledger's upstream rows (request id = the escalation id): the tokens and cost of
  the upstream's answer;
- from the outbox: the local answer and the upstream's (golden) answer, both in egress terms
  (placeholders where PII was), so they compare as they are.

A device that reuses an ``X-Request-Id`` makes the ledger match ambiguous: the ledger rows of
that id are summed and given to its first audit row only (an escalation's likewise), so
nothing is counted twice.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.tco.ledger import TABLE

HARD_REASON = "pre-check: hard"  # the start of the reason classify writes for a hard prompt
SIMPLE, COMPLEX = "simple", "complex"

_SQL = f"""
SELECT a.request_id, a.device, a.model, a.sensitivity, a.route, a.reasons, a.confidence,
       a.escalation_id, a.upstream,
       l.prompt, l.completion, l.api, l.local,
       u.tokens, u.cost,
       o.local_answer, r.text, r.upstream
FROM audit a
LEFT JOIN (
    SELECT request_id, SUM(prompt_tokens) AS prompt, SUM(completion_tokens) AS completion,
           SUM(api_cost_usd) AS api, SUM(local_cost_usd) AS local
    FROM {TABLE} WHERE kind = 'request' GROUP BY request_id
) l ON l.request_id = a.request_id
LEFT JOIN (
    SELECT request_id, SUM(prompt_tokens + completion_tokens) AS tokens,
           SUM(api_cost_usd) AS cost
    FROM {TABLE} WHERE kind = 'upstream' GROUP BY request_id
) u ON u.request_id = a.escalation_id
LEFT JOIN outbox o ON o.id = a.escalation_id
LEFT JOIN outbox_results r ON r.id = a.escalation_id
{{where}}
ORDER BY a.id
"""


@dataclass(frozen=True)
class Governed:
    """One routing decision with what it cost and, where there is one, its golden answer."""

    request_id: str
    device: str | None
    model: str
    sensitivity: str
    complexity: str  # SIMPLE or COMPLEX
    route: str  # local, escalated, queued, refused
    confidence: float | None  # the local answer's, None when the local model did not answer
    upstream: str | None
    prompt_tokens: int = 0  # the local model's run
    completion_tokens: int = 0
    local_cost_usd: float = 0.0  # the box's time for that run
    api_value_usd: float = 0.0  # those local tokens at the API's price
    upstream_tokens: int = 0
    upstream_cost_usd: float = 0.0
    local_answer: str | None = None  # in egress terms
    golden_answer: str | None = None  # the upstream's answer
    golden_upstream: str | None = None  # who gave it

    @property
    def local_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def paired(self) -> bool:
        """A local answer and the upstream's to the same query: agreement can be measured."""
        return bool(self.local_answer) and self.golden_answer is not None


def complexity(reasons: list[str]) -> str:
    return COMPLEX if any(r.startswith(HARD_REASON) for r in reasons) else SIMPLE


def read(state_db: Path, since: str | None = None) -> Iterator[Governed]:
    """The decisions at or after `since` (an audit stamp), oldest first; none without a db."""
    if not state_db.exists():
        return
    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=5.0)
    try:
        where, params = ("WHERE a.at >= ?", (since,)) if since is not None else ("", ())
        try:
            cursor = conn.execute(_SQL.format(where=where), params)
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # a state.db older than the schema's tables
                return
            raise
        requests: set[object] = set()
        escalations: set[object] = set()
        for row in cursor:
            escalation = row[7]
            yield _governed(row, row[0] not in requests, escalation not in escalations)
            requests.add(row[0])
            if escalation is not None:
                escalations.add(escalation)
    finally:
        conn.close()


def _governed(row: tuple[object, ...], new_request: bool, new_escalation: bool) -> Governed:
    """`new_*`: the first audit row of its request id / escalation id (see the docstring)."""
    (request_id, device, model, sensitivity, route, reasons, conf, _, upstream) = row[:9]
    prompt, completion, api, local = row[9:13] if new_request else (None,) * 4
    up_tokens, up_cost, local_answer, golden, golden_upstream = (
        row[13:18] if new_escalation else (None,) * 5
    )
    return Governed(
        request_id=str(request_id),
        device=None if device is None else str(device),
        model=str(model),
        sensitivity=str(sensitivity),
        complexity=complexity(json.loads(str(reasons))),
        route=str(route),
        confidence=_float(conf) if conf is not None else None,
        upstream=None if upstream is None else str(upstream),
        prompt_tokens=_int(prompt),
        completion_tokens=_int(completion),
        local_cost_usd=_float(local),
        api_value_usd=_float(api),
        upstream_tokens=_int(up_tokens),
        upstream_cost_usd=_float(up_cost),
        local_answer=None if local_answer is None else str(local_answer),
        golden_answer=None if golden is None else str(golden),
        golden_upstream=None if golden_upstream is None else str(golden_upstream),
    )


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
