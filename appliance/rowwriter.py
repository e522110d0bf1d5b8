"""Rows written to state.db off the request path: one background thread, batched commits.

A decision or a ledger entry must never wait for an fsync while a device waits for its
answer, so callers hand rows to ``RowWriter.write`` (a queue put) and one thread commits
them in batches: one transaction per batch, at most ``FLUSH_S`` after the first row. A
failed write is logged, never raised (the request was served); ``close`` writes what is
pending. The audit trail and the TCO ledger each have one.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from appliance.errors import StateError
from appliance.home import Home
from appliance.state import open_state, write_transaction

log = logging.getLogger("appliance.state")

FLUSH_S = 0.2  # seconds a row may wait before it is committed
MAX_BATCH = 256  # rows per transaction


@dataclass
class _Flush:
    done: threading.Event


class RowWriter:
    """Inserts dict rows into `table` from a background thread; ``write`` never blocks."""

    def __init__(self, home: Home, table: str) -> None:
        open_state(home).close()  # the table exists once state.db is opened (appliance.schema)
        self.home, self.table = home, table
        self._queue: queue.Queue[dict[str, Any] | _Flush | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"{table}-writer", daemon=True)
        self._thread.start()

    def write(self, row: dict[str, Any]) -> None:
        self._queue.put_nowait(row)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every row given so far is committed (tests, shutdown)."""
        done = threading.Event()
        self._queue.put_nowait(_Flush(done))
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
                while len(batch) < MAX_BATCH and isinstance(batch[-1], dict):
                    try:
                        batch.append(self._queue.get(timeout=FLUSH_S))
                    except queue.Empty:
                        break
                rows = [r for r in batch if isinstance(r, dict)]
                if rows:
                    self._insert(db, rows)
                if isinstance(batch[-1], _Flush):
                    batch[-1].done.set()
                if batch[-1] is None:
                    return
        finally:
            db.conn.close()

    def _insert(self, db: Any, rows: list[dict[str, Any]]) -> None:
        columns = list(rows[0])
        sql = (
            f"INSERT INTO {self.table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + c for c in columns)})"
        )
        try:
            with write_transaction(db) as conn:
                conn.executemany(sql, rows)
        except (StateError, sqlite3.Error) as e:
            log.error("%s: %d rows not written: %s", self.table, len(rows), e)
