"""`appliance doctor`: the slower checks of an install, each with pass/warn/fail and its fix.

Where ``appliance status`` answers "is it running well right now", the doctor answers "is
this install sound":

- ``files``: the trust store (keys that parse, enough for the threshold, writable by no one
  else), the home's permissions, the secret key files (0600, plain files), free disk;
- ``bundles``: every installed bundle's manifest and files against what was verified at
  install (size and SHA-256; a missing or extra file fails too), the clock, bundle expiry;
- ``state``: state.db's ``integrity_check``, config.toml, the policy in force.

It only reads, and needs no daemon. state.db is opened read-only: in WAL mode a reader never
blocks the daemon's writer (SQLite may leave the empty -wal and -shm files a reader needs,
owned like state.db).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import sqlite_utils

from appliance.bundles import records
from appliance.doctor.bundles import check_bundles, check_clock
from appliance.doctor.check import Check, Context, DiskUsage, Status
from appliance.doctor.files import check_disk, check_home, check_key_files, check_trust
from appliance.doctor.state import check_config, check_database
from appliance.errors import ApplianceError
from appliance.home import Home
from appliance.settings import Settings, load_settings

__all__ = ["Check", "DiskUsage", "Status", "failed", "run_checks"]

STATE_BUSY_TIMEOUT_S = 10.0  # seconds a read waits on a lock (WAL readers rarely wait at all)

CHECKS: tuple[tuple[str, Callable[[Context], Iterable[Check]]], ...] = (
    ("trust store", check_trust),
    ("home permissions", check_home),
    ("key files", check_key_files),
    ("state.db", check_database),
    ("bundles", check_bundles),
    ("disk", check_disk),
    ("clock", check_clock),
    ("config.toml", check_config),
)


def run_checks(
    home: Home,
    *,
    now: datetime | None = None,
    disk_usage: DiskUsage | None = None,
    euid: int | None = None,
) -> list[Check]:
    """Every check of `home`, in order; `now`, `disk_usage` and `euid` are for tests."""
    if not home.root.is_dir():
        return [
            Check(
                "home",
                "fail",
                f"APPLIANCE_HOME {home.root} does not exist",
                "set APPLIANCE_HOME to the box's home (/var/lib/appliance with the service "
                "wrapper), or run appliance serve once to create it",
            )
        ]
    settings, settings_error = _settings(home)
    conn, state_error = _open_state(home)
    try:
        installed, installed_error = _installed(conn)
        ctx = Context(
            home=home,
            now=now or datetime.now(UTC),
            euid=os.geteuid() if euid is None else euid,
            disk_usage=disk_usage or shutil.disk_usage,
            conn=conn,
            state_error=state_error,
            settings=settings,
            settings_error=settings_error,
            installed=installed,
            installed_error=state_error or installed_error,
        )
        return [check for name, run in CHECKS for check in _guarded(name, run, ctx)]
    finally:
        if conn is not None:
            conn.close()


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def _guarded(name: str, run: Callable[[Context], Iterable[Check]], ctx: Context) -> list[Check]:
    """A check's results; one that cannot finish fails, and never hides the others."""
    results: list[Check] = []
    try:
        results.extend(run(ctx))
    except Exception as e:  # the doctor must report what it could not check, not crash
        results.append(
            Check(
                name,
                "fail",
                f"the check could not finish: {type(e).__name__}: {e}",
                "run the doctor as the service user (sudo appliance doctor); "
                "the error names what could not be read",
            )
        )
    return results


def _settings(home: Home) -> tuple[Settings | None, str | None]:
    try:
        return load_settings(home.config_file), None
    except (ApplianceError, OSError) as e:
        return None, str(e)


def _open_state(home: Home) -> tuple[sqlite3.Connection | None, str | None]:
    """state.db read-only, or why it cannot be opened; (None, None) when there is none yet."""
    if not os.path.lexists(home.state_db):
        return None, None
    try:
        uri = f"file:{home.state_db}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=STATE_BUSY_TIMEOUT_S), None
    except sqlite3.Error as e:
        return None, str(e)


def _installed(
    conn: sqlite3.Connection | None,
) -> tuple[list[records.InstalledBundle], str | None]:
    if conn is None:
        return [], None
    try:
        return records.query(sqlite_utils.Database(conn, recursive_triggers=False)), None
    except sqlite3.DatabaseError as e:
        if "no such table" in str(e):  # a state.db made before any bundle table
            return [], None
        return [], str(e)
    except ValueError as e:  # a damaged manifest or signers column
        return [], f"a bundle record is damaged: {e}"
