"""Every table of state.db, created here and nowhere else, with a version and migrations.

``open_state`` brings a state.db up to ``SCHEMA_VERSION`` by running, in one ``BEGIN
IMMEDIATE`` transaction, every migration above the file's ``PRAGMA user_version``; a file
written by a newer appliance is refused. A migration is a list of statements; a new table,
column or index is a new migration at the end of ``MIGRATIONS``, never an edit of an old one
(a box may have run it already). Migration 2 gathered the tables that the modules used to
create on their own, ``IF NOT EXISTS``, so a box of either age reaches the same schema.

The outbox's state names live here too, for its CHECK constraint and its triggers.
"""

from __future__ import annotations

import sqlite3

OUTBOX_STATES: tuple[str, ...] = ("queued", "sending", "done", "failed", "expired")
OUTBOX_LIVE_STATES: tuple[str, ...] = ("queued", "sending")  # those that count against the cap
_STATES = ", ".join(f"'{s}'" for s in OUTBOX_STATES)
_LIVE = ", ".join(f"'{s}'" for s in OUTBOX_LIVE_STATES)
TCO_LEDGER = "tco_ledger"

# bundles, activations, anti-rollback floors, revocations and their events
BUNDLES: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS bundles (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    manifest TEXT NOT NULL,
    signers TEXT NOT NULL,
    created TEXT NOT NULL,
    expires TEXT,
    total_size INTEGER NOT NULL,
    installed_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
)""",
    """CREATE TABLE IF NOT EXISTS active_bundles (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    activated_at TEXT NOT NULL,
    FOREIGN KEY (name, version) REFERENCES bundles (name, version)
)""",
    """CREATE TABLE IF NOT EXISTS sequence_floors (
    name TEXT PRIMARY KEY,
    floor INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS revoked_keys (
    keyid TEXT PRIMARY KEY,
    revoked_at TEXT NOT NULL,
    by_bundle TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS revoked_bundles (
    digest TEXT PRIMARY KEY,
    revoked_at TEXT NOT NULL,
    by_bundle TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS bundle_events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    name TEXT,
    version TEXT,
    digest TEXT,
    reason TEXT
)""",
)

DEVICE_TOKENS: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS device_tokens (
    device TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL CHECK (scope IN ('infer', 'admin')),
    created_at TEXT NOT NULL,
    last_used_at TEXT
)""",
)

AUDIT: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS audit (
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
)""",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit (at)",
)

LEDGER: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {TCO_LEDGER} (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('request', 'upstream')),
        request_id TEXT,
        model TEXT,
        route TEXT,
        device TEXT,
        upstream TEXT,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        wall_ms REAL NOT NULL,
        api_price_in REAL NOT NULL,
        api_price_out REAL NOT NULL,
        api_cost_usd REAL NOT NULL,
        local_cost_usd REAL NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {TCO_LEDGER}_at ON {TCO_LEDGER} (at)",
)

# ``outbox_spend`` remembers what each upstream answer cost after ``purge`` deleted the answer.
# ``outbox_usage`` is a one-row tally of what counts against the cap (items in ``queued`` or
# ``sending`` and their bytes), kept exact by triggers in the same transaction as every
# change: enqueue checks the cap with one primary-key read, and no code path can forget it.
OUTBOX: tuple[str, ...] = (
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

OFFLINE: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS offline_batches (
        batch_id TEXT PRIMARY KEY,
        direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
        kind TEXT NOT NULL,
        peer TEXT NOT NULL,
        peer_name TEXT NOT NULL,
        items INTEGER NOT NULL,
        at TEXT NOT NULL,
        file TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS offline_exports (
        item_id TEXT PRIMARY KEY REFERENCES outbox (id) ON DELETE CASCADE,
        batch_id TEXT NOT NULL,
        at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS relay_items (
        item_id TEXT PRIMARY KEY REFERENCES outbox (id) ON DELETE CASCADE,
        peer TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        returned_in TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS relay_items_pending ON relay_items (peer, returned_in)",
)

UPLINK_STATES: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS uplink_states (
    name TEXT PRIMARY KEY,
    up INTEGER NOT NULL,
    last_ok_at TEXT,
    last_error TEXT,
    failures INTEGER NOT NULL,
    checked_at TEXT
)""",
)

# Why an outbox item is a calibration pair (``appliance calibrate``): ``origin`` 'cascade' (the
# local answer's confidence was below the threshold), 'audit' (a confident local answer sampled
# at ``audit_rate``, sent upstream only to measure it: never re-hydrated for anyone), NULL
# (neither: the upstream was asked first, or the item predates this column). The partial index
# serves ``appliance status``'s look at the audit samples without touching other items.
OUTBOX_ORIGIN: tuple[str, ...] = (
    "ALTER TABLE outbox ADD COLUMN origin TEXT "
    "CHECK (origin IS NULL OR origin IN ('cascade', 'audit'))",
    "ALTER TABLE outbox ADD COLUMN audit_rate REAL "
    "CHECK (audit_rate IS NULL OR (audit_rate > 0 AND audit_rate <= 1))",
    "CREATE INDEX IF NOT EXISTS outbox_audit ON outbox (confidence) WHERE origin = 'audit'",
)

# version N is reached by running MIGRATIONS[N - 1]; never edit one that has shipped
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    BUNDLES,
    (*DEVICE_TOKENS, *AUDIT, *LEDGER, *OUTBOX, *OFFLINE, *UPLINK_STATES),
    OUTBOX_ORIGIN,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, from_version: int) -> None:
    """Run every migration above `from_version`; call inside a write transaction."""
    # One statement at a time: executescript() would commit the caller's transaction first.
    for statements in MIGRATIONS[from_version:]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
