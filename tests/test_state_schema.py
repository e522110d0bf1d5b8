"""state.db's tables come from one module, with a version and migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance import schema
from appliance.errors import StateError
from appliance.home import Home
from appliance.state import open_state

PACKAGE = Path(schema.__file__).parent


def _objects(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}


def test_only_the_schema_module_creates_tables():
    creators = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "CREATE TABLE" in path.read_text() or "CREATE INDEX" in path.read_text()
    )
    assert creators == ["schema.py"]


def test_a_new_state_db_has_every_table_at_the_current_version(home: Home):
    open_state(home).close()
    with sqlite3.connect(home.state_db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 3
    names = _objects(home.state_db)
    for table in (
        "bundles",
        "device_tokens",
        "audit",
        "tco_ledger",
        "outbox",
        "outbox_usage",
        "offline_batches",
        "relay_items",
        "uplink_states",
    ):
        assert table in names


def test_a_version_1_box_is_migrated_keeping_its_rows(home: Home):
    with sqlite3.connect(home.state_db) as conn:  # what a box of the first schema holds
        for statement in schema.BUNDLES:
            conn.execute(statement)
        conn.execute(schema.DEVICE_TOKENS[0])  # created by the token store back then
        conn.execute(
            "INSERT INTO device_tokens VALUES ('cam-1', 'h', 'infer', '2026-01-01T00:00:00Z', NULL)"
        )
        conn.execute("PRAGMA user_version = 1")
    open_state(home).close()
    with sqlite3.connect(home.state_db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert conn.execute("SELECT device FROM device_tokens").fetchall() == [("cam-1",)]
    assert {"outbox", "audit", "tco_ledger"} <= _objects(home.state_db)


def test_a_version_2_box_gains_the_calibration_columns_keeping_its_outbox(home: Home):
    with sqlite3.connect(home.state_db) as conn:  # a box before audit sampling
        for statements in schema.MIGRATIONS[:2]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        conn.execute(
            "INSERT INTO outbox (id, created_at, priority, expires_at, upstream, endpoint, "
            "messages, params, model, sensitivity, reasons, local_answer, confidence, "
            "mapping_sealed, state, next_attempt_at, size_bytes) VALUES ('e-1', 't', 0, 't', "
            "'cloud', 'chat', '[]', '{}', 'm', 'public', '[]', 'Paris', 0.4, x'00', 'done', "
            "'t', 1)"
        )
    open_state(home).close()
    with sqlite3.connect(home.state_db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        row = conn.execute("SELECT id, local_answer, origin, audit_rate FROM outbox").fetchall()
        assert row == [("e-1", "Paris", None, None)]  # not a calibration pair: origin unknown
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE outbox SET origin = 'guess'")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE outbox SET audit_rate = 0")
    assert "outbox_audit" in _objects(home.state_db)


def test_a_state_db_from_a_newer_appliance_is_refused(home: Home):
    with sqlite3.connect(home.state_db) as conn:
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer appliance"):
        open_state(home)
