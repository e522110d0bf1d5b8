"""The outbox tables in state.db, created ``IF NOT EXISTS`` by the first store that opens it.

``outbox_spend`` remembers what each upstream answer cost after ``purge`` deleted the answer.

``outbox_usage`` is a one-row tally of what counts against the cap (items in ``queued`` or
``sending`` and their bytes), kept exact by triggers in the same transaction as every
change. Enqueue then checks the cap with one primary-key read instead of summing the table,
and no code path (claim, purge, a future one) can forget to update it.
"""

from __future__ import annotations

import sqlite3

from appliance.outbox.model import LIVE_STATES, STATES

_STATES = ", ".join(f"'{s}'" for s in STATES)
_LIVE = ", ".join(f"'{s}'" for s in LIVE_STATES)

STATEMENTS: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS outbox (
        id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        priority INTEGER NOT NULL,
        expires_at TEXT NOT NULL,
        upstream TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        messages TEXT NOT NULL,
        params TEXT NOT NULL,
        model TEXT NOT NULL,
        device TEXT,
        sensitivity TEXT NOT NULL,
        reasons TEXT NOT NULL,
        local_answer TEXT,
        confidence REAL,
        mapping_sealed BLOB NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({_STATES})),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        lease_owner TEXT,
        lease_until TEXT,
        size_bytes INTEGER NOT NULL
    )""",
    # claim and drop-oldest walk one state by priority, then age (rowid breaks ties in order)
    "CREATE INDEX IF NOT EXISTS outbox_by_priority ON outbox (state, priority DESC, created_at)",
    # counts, list --state, oldest_queued_at, golden, purge
    "CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox (state, created_at)",
    # expire() seeks the items past their time instead of reading every queued row
    "CREATE INDEX IF NOT EXISTS outbox_by_expiry ON outbox (state, expires_at)",
    # briefly created by one build; list() merges walks of outbox_by_state instead
    "DROP INDEX IF EXISTS outbox_by_created",
    """CREATE TABLE IF NOT EXISTS outbox_results (
        id TEXT PRIMARY KEY REFERENCES outbox (id) ON DELETE CASCADE,
        upstream TEXT NOT NULL,
        model TEXT NOT NULL,
        text TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        finish_reason TEXT NOT NULL,
        received_at TEXT NOT NULL
    )""",
    # What each answer cost, kept when `purge` deletes the item and its result: the daily
    # budget (spent_since) must not reset because an operator reclaimed disk. About 60 bytes
    # an answer; filled by a trigger so no path that records a result can skip it.
    """CREATE TABLE IF NOT EXISTS outbox_spend (
        id TEXT PRIMARY KEY,
        received_at TEXT NOT NULL,
        cost_usd REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_spend_by_time ON outbox_spend (received_at)",
    """CREATE TRIGGER IF NOT EXISTS outbox_spend_insert AFTER INSERT ON outbox_results
        BEGIN
            INSERT OR IGNORE INTO outbox_spend (id, received_at, cost_usd)
            VALUES (NEW.id, NEW.received_at, NEW.cost_usd);
        END""",
    # A state.db from before outbox_spend: its answers so far are spend too.
    "INSERT OR IGNORE INTO outbox_spend (id, received_at, cost_usd) "
    "SELECT id, received_at, cost_usd FROM outbox_results",
    "DROP INDEX IF EXISTS outbox_results_by_time",  # spent_since reads outbox_spend now
    """CREATE TABLE IF NOT EXISTS outbox_usage (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        items INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    )""",
    "INSERT OR IGNORE INTO outbox_usage (id, items, bytes) VALUES (1, 0, 0)",
    f"""CREATE TRIGGER IF NOT EXISTS outbox_usage_insert AFTER INSERT ON outbox
        WHEN NEW.state IN ({_LIVE})
        BEGIN
            UPDATE outbox_usage SET items = items + 1, bytes = bytes + NEW.size_bytes
            WHERE id = 1;
        END""",
    f"""CREATE TRIGGER IF NOT EXISTS outbox_usage_delete AFTER DELETE ON outbox
        WHEN OLD.state IN ({_LIVE})
        BEGIN
            UPDATE outbox_usage SET items = items - 1, bytes = bytes - OLD.size_bytes
            WHERE id = 1;
        END""",
    f"""CREATE TRIGGER IF NOT EXISTS outbox_usage_update AFTER UPDATE OF state, size_bytes
        ON outbox
        WHEN (OLD.state IN ({_LIVE})) != (NEW.state IN ({_LIVE}))
            OR OLD.size_bytes != NEW.size_bytes
        BEGIN
            UPDATE outbox_usage SET
                items = items - (OLD.state IN ({_LIVE})) + (NEW.state IN ({_LIVE})),
                bytes = bytes
                    - (CASE WHEN OLD.state IN ({_LIVE}) THEN OLD.size_bytes ELSE 0 END)
                    + (CASE WHEN NEW.state IN ({_LIVE}) THEN NEW.size_bytes ELSE 0 END)
            WHERE id = 1;
        END""",
)

OBJECTS: tuple[str, ...] = (
    "outbox",
    "outbox_by_priority",
    "outbox_by_state",
    "outbox_by_expiry",
    "outbox_results",
    "outbox_spend",
    "outbox_spend_by_time",
    "outbox_spend_insert",
    "outbox_usage",
    "outbox_usage_insert",
    "outbox_usage_delete",
    "outbox_usage_update",
)


def missing(conn: sqlite3.Connection) -> bool:
    """Whether any outbox table, index or trigger is absent (a read; no write lock taken)."""
    marks = ", ".join("?" for _ in OBJECTS)
    found = conn.execute(
        f"SELECT COUNT(*) FROM sqlite_master WHERE name IN ({marks})", OBJECTS
    ).fetchone()[0]
    return bool(found != len(OBJECTS))


def create(conn: sqlite3.Connection) -> None:
    """Create what is missing; call inside a write transaction (each statement is idempotent)."""
    # One statement at a time: executescript() would commit the caller's transaction first.
    for statement in STATEMENTS:
        conn.execute(statement)
