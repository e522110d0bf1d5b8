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
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 2
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
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT device FROM device_tokens").fetchall() == [("cam-1",)]
    assert {"outbox", "audit", "tco_ledger"} <= _objects(home.state_db)


def test_a_state_db_from_a_newer_appliance_is_refused(home: Home):
    with sqlite3.connect(home.state_db) as conn:
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer appliance"):
        open_state(home)
