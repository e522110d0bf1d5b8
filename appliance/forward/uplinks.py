"""The uplink states the daemon last saw, kept in state.db for when it is not running.

The monitor keeps its states in memory (the router asks on every request); the daemon
copies them here when they change, so ``appliance status`` with the daemon down can still
say which uplink was up, since when, and the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from appliance.home import Home

if TYPE_CHECKING:  # kept light: `appliance status` reads the table without these
    from appliance.upstream.monitor import UplinkMonitor, UplinkState

log = logging.getLogger("appliance.sync")

FLUSH_INTERVAL_S = 2.0  # seconds between looks for a change to write


def _time(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _row(state: UplinkState) -> tuple[Any, ...]:
    return (
        state.name,
        int(state.up),
        _time(state.last_ok_at),
        state.last_error,
        state.failures,
        _time(state.checked_at),
    )


def save(home: Home, states: list[UplinkState]) -> None:
    """Replace the stored states with `states` (upstreams no longer configured go)."""
    from appliance.state import open_state, write_transaction

    db = open_state(home)
    try:
        with write_transaction(db) as conn:
            conn.execute("DELETE FROM uplink_states")
            conn.executemany(
                "INSERT INTO uplink_states VALUES (?, ?, ?, ?, ?, ?)", [_row(s) for s in states]
            )
    finally:
        db.close()


def load(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """The stored states by name; {} when the daemon never wrote any."""
    try:
        rows = conn.execute(
            "SELECT name, up, last_ok_at, last_error, failures, checked_at FROM uplink_states"
        ).fetchall()
    except sqlite3.OperationalError:  # no such table: never written
        return {}
    return {
        r[0]: {
            "up": bool(r[1]),
            "last_ok_at": r[2],
            "last_error": r[3],
            "failures": r[4],
            "checked_at": r[5],
        }
        for r in rows
    }


def live(state: UplinkState) -> dict[str, Any]:
    """A monitor state in the stored shape."""
    _, up, last_ok_at, last_error, failures, checked_at = _row(state)
    return {
        "up": bool(up),
        "last_ok_at": last_ok_at,
        "last_error": last_error,
        "failures": failures,
        "checked_at": checked_at,
    }


async def keep(home: Home, monitor: UplinkMonitor, stop: asyncio.Event) -> None:
    """Write the monitor's states whenever they change, until `stop` (and once more then)."""
    written: list[tuple[Any, ...]] | None = None
    while True:
        current = [_row(s) for s in monitor.states()]
        # checked_at moves with every probe; write on a change of what status shows.
        shown = [row[:5] for row in current]
        if shown != written:
            try:
                await asyncio.to_thread(save, home, monitor.states())
                written = shown
            except Exception:
                log.exception("could not record the uplink states; will retry")
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FLUSH_INTERVAL_S)
