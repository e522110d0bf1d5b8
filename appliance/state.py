"""state.db: one SQLite file for the appliance's durable state.

Opened through sqlite-utils in WAL mode with ``synchronous=FULL``: a transaction that has
returned survives power loss. Writers take ``BEGIN IMMEDIATE`` so two processes never
interleave half-done changes; readers are never blocked by the writer.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import sqlite_utils

from appliance.clock import utc_now as utc_now  # re-exported: callers import it here
from appliance.errors import StateError
from appliance.fsutil import make_private
from appliance.home import Home
from appliance.schema import SCHEMA_VERSION as SCHEMA_VERSION
from appliance.schema import migrate

BUSY_TIMEOUT_MS = 10_000  # milliseconds a writer waits for another writer



def open_state(home: Home) -> sqlite_utils.Database:
    """Open (creating if needed) state.db with the durability settings the appliance needs.

    state.db and its -wal and -shm are 0600 whatever the umask: they hold prompts, answers
    and token hashes. SQLite gives a new -wal or -shm the mode of the database file; ones an
    older version left readable are tightened here.
    """
    try:
        make_private(home.state_db)
    except OSError as e:
        raise StateError(f"cannot create {home.state_db}: {e.strerror}") from e
    try:
        conn = sqlite3.connect(home.state_db, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute("PRAGMA journal_mode=WAL")
        for suffix in ("-wal", "-shm"):
            with suppress(OSError):  # a mode it cannot change is doctor's finding
                make_private(home.state_db.with_name(home.state_db.name + suffix), create=False)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{home.state_db} was written by a newer appliance (schema {version}); "
                "upgrade this runtime"
            )
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # read again under the write lock: another process may have migrated it
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current < SCHEMA_VERSION:
                    migrate(conn, current)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
    except sqlite3.DatabaseError as e:
        raise StateError(f"cannot open {home.state_db}: {e}") from e
    return sqlite_utils.Database(conn)


@contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction: all of it commits, or none of it."""
    conn = db.conn
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        raise StateError(f"state.db is busy or locked: {e}") from e
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


class ThreadConnections:
    """One state.db connection per thread, opened on first use.

    SQLite connections belong to the thread that opened them, and the daemon's request
    threads and its background workers all use one store object, so each gets its own.
    """

    def __init__(self, home: Home) -> None:
        self.home = home
        self._local = threading.local()

    def db(self) -> sqlite_utils.Database:
        db: sqlite_utils.Database | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = open_state(self.home)
        return db

    def close(self) -> None:
        """Close this thread's connection; other threads' close when those threads end."""
        db: sqlite_utils.Database | None = self._local.__dict__.pop("db", None)
        if db is not None:
            db.close()
