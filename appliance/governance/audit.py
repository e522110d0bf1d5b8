"""The audit trail: one row per routing decision, in state.db's ``audit`` table.

A row says which policy decided, the request's sensitivity class, the route, the reasons,
the local answer's confidence, and how many findings of each PII type there were: never a
finding's value, never the prompt. Rows are written by one background thread in batches
(one transaction per batch, at most ``FLUSH_S`` after the decision) so that a decision never
waits for an fsync on the request path; ``close`` writes what is pending.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance import metrics
from appliance.home import Home
from appliance.rowwriter import RowWriter
from appliance.state import open_state, utc_now


@dataclass(frozen=True)
class AuditRecord:
    request_id: str
    model: str
    endpoint: str  # "chat" or "completion"
    policy: str  # name@first 12 hex of the policy's digest
    sensitivity: str
    route: str
    reasons: tuple[str, ...]
    confidence: float | None = None
    finding_types: dict[str, int] = field(default_factory=dict)
    escalation_id: str | None = None
    upstream: str | None = None
    device: str | None = None
    at: str = field(default_factory=utc_now)

    def row(self) -> dict[str, Any]:
        row = asdict(self)
        row["reasons"] = json.dumps(list(self.reasons))
        row["finding_types"] = json.dumps(self.finding_types, sort_keys=True)
        return row


def read_audit(home: Home, limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` rows, newest first, with JSON columns decoded."""
    db = open_state(home)
    try:
        rows = list(db.query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", [limit]))
    finally:
        db.conn.close()
    for row in rows:
        row["reasons"] = json.loads(row["reasons"])
        row["finding_types"] = json.loads(row["finding_types"])
    return rows


class AuditLog:
    """Writes audit records from a background thread; ``record`` never blocks."""

    def __init__(self, home: Home) -> None:
        self._writer = RowWriter(home, "audit")

    def record(self, record: AuditRecord) -> None:
        metrics.DECISIONS.labels(record.route).inc()
        self._writer.write(record.row())

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every record given so far is committed (tests, shutdown)."""
        self._writer.flush(timeout)

    def close(self) -> None:
        self._writer.close()
