"""The audit trail: one row per routing decision, in state.db's ``audit`` table.

A row says which policy decided, the request's sensitivity class, the route, the reasons,
the local answer's confidence, and how many findings of each PII type there were: never a
finding's value, never the prompt. Rows are written by one background thread in batches
(one transaction per batch, at most ``FLUSH_S`` after the decision) so that a decision never
waits for an fsync on the request path; ``close`` writes what is pending.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance import metrics
from appliance.errors import StateError
from appliance.home import Home
from appliance.state import open_state, utc_now, write_transaction

log = logging.getLogger("appliance.audit")

FLUSH_S = 0.2  # seconds a decision may wait before its row is committed
MAX_BATCH = 256  # rows per transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    request_id TEXT NOT NULL,
    device TEXT,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    policy TEXT NOT NULL,
    sensitivity TEXT NOT NULL,
    route TEXT NOT NULL,
    reasons TEXT NOT NULL,
    confidence REAL,
    finding_types TEXT NOT NULL,
    escalation_id TEXT,
    upstream TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
"""


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


def ensure_table(home: Home) -> None:
    db = open_state(home)
    try:
        db.conn.executescript(_SCHEMA)
    finally:
        db.conn.close()


def read_audit(home: Home, limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` rows, newest first, with JSON columns decoded."""
    ensure_table(home)
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
        ensure_table(home)
        self.home = home
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, record: AuditRecord) -> None:
        metrics.DECISIONS.labels(record.route).inc()
        self._queue.put_nowait(record)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every record given so far is committed (tests, shutdown)."""
        done = threading.Event()
        self._queue.put_nowait(_Flush(done))  # type: ignore[arg-type]
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put_nowait(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        db = open_state(self.home)
        try:
            while True:
                batch = [self._queue.get()]
                # gather more rows for one transaction, unless told to write now
                while len(batch) < MAX_BATCH and isinstance(batch[-1], AuditRecord):
                    try:
                        batch.append(self._queue.get(timeout=FLUSH_S))
                    except queue.Empty:
                        break
                rows = [r.row() for r in batch if isinstance(r, AuditRecord)]
                if rows:
                    self._write(db, rows)
                if isinstance(batch[-1], _Flush):
                    batch[-1].done.set()
                if batch[-1] is None:
                    return
        finally:
            db.conn.close()

    @staticmethod
    def _write(db: Any, rows: list[dict[str, Any]]) -> None:
        columns = list(rows[0])
        sql = (
            f"INSERT INTO audit ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})"
        )
        try:
            with write_transaction(db) as conn:
                conn.executemany(sql, rows)
        except (StateError, sqlite3.Error) as e:
            # the decision was made and served; losing its row is logged, never raised
            log.error("audit: %d rows not written: %s", len(rows), e)


@dataclass
class _Flush:
    done: threading.Event
