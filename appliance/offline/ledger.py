"""What the offline exchange remembers in state.db: batches seen, items exported or relayed.

- ``offline_batches``: every batch this home wrote (``out``) or took (``in``), by id. A
  batch id already ``in`` is a replay and is refused.
- ``offline_exports`` (on a box): which queued items went out in which batch, so the next
  export does not carry them again (``--again`` does, for a lost stick).
- ``relay_items`` (on a relay): which box each relayed item came from, and the result batch
  that carried its answer back (NULL while it has not gone back).

Item rows reference the outbox and go when ``outbox purge`` deletes their item.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import OfflineError
from appliance.home import Home
from appliance.offline import envelope, files
from appliance.offline.identity import Card, Identity
from appliance.outbox import OutboxItem
from appliance.outbox import rows as outbox_rows
from appliance.state import open_state, write_transaction


@dataclass(frozen=True)
class Batch:
    batch_id: str
    direction: str
    kind: str
    peer: str
    peer_name: str
    items: int
    at: str
    file: str


class Ledger:
    """The offline tables of one home; one connection, for one command's lifetime."""

    def __init__(self, home: Home) -> None:
        self._db = open_state(home)  # its tables come with state.db (appliance.schema)

    @property
    def conn(self) -> sqlite3.Connection:
        return self._db.conn

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- batches -----------------------------------------------------------------------

    def seen(self, batch_id: str) -> Batch | None:
        """The batch already taken or written under this id, if any."""
        row = self.conn.execute(
            "SELECT batch_id, direction, kind, peer, peer_name, items, at, file "
            "FROM offline_batches WHERE batch_id = ?",
            (batch_id,),
        ).fetchone()
        return None if row is None else Batch(*row)

    def take(
        self,
        path: Path,
        kind: envelope.Kind,
        me: Identity,
        senders: Mapping[str, Card],
        max_bytes: int,
    ) -> envelope.Opened | None:
        """Read, verify and open one batch file of `kind` that was never taken before.

        None for a batch of the other direction (on one stick, the box's requests and the
        relay's results lie side by side); OfflineError for anything refused.
        """
        data = envelope.read(path, max_bytes)
        other = "requests" if kind == "results" else "results"
        if files.peek_kind(data) == other:
            return None
        opened = envelope.open_batch(data, name=path.name, kind=kind, me=me, senders=senders)
        self.refuse_replay(opened.header.batch_id, path.name)
        return opened

    def refuse_replay(self, batch_id: str, name: str) -> None:
        """Raise OfflineError if this batch id was taken or written here before."""
        seen = self.seen(batch_id)
        if seen is not None:
            raise OfflineError(
                f"{name}: refused: batch {batch_id} was already taken on {seen.at} "
                f"(from {seen.file}); a replayed batch is never applied twice"
            )

    @staticmethod
    def _record(conn: sqlite3.Connection, batch: Batch) -> None:
        conn.execute(
            "INSERT INTO offline_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                batch.batch_id,
                batch.direction,
                batch.kind,
                batch.peer,
                batch.peer_name,
                batch.items,
                batch.at,
                batch.file,
            ),
        )

    def record(self, batch: Batch) -> None:
        with write_transaction(self._db) as conn:
            self._record(conn, batch)

    # -- the box's side ----------------------------------------------------------------

    def to_export(self, limit: int, again: bool) -> list[OutboxItem]:
        """Queued items, highest priority then oldest; unless `again`, only those not sent."""
        unsent = (
            ""
            if again
            else "AND NOT EXISTS (SELECT 1 FROM offline_exports e WHERE e.item_id = o.id) "
        )
        found = self.conn.execute(
            f"SELECT {outbox_rows.prefixed(outbox_rows.ITEM_COLUMNS, 'o')} FROM outbox o "
            f"WHERE o.state = 'queued' {unsent}"
            "ORDER BY o.priority DESC, o.created_at, o.rowid LIMIT ?",
            (limit,),
        ).fetchall()
        return [outbox_rows.item_from_row(row) for row in found]

    def exported(self, batch: Batch, item_ids: Sequence[str]) -> None:
        """Record a written request batch and the items it carries, in one transaction."""
        with write_transaction(self._db) as conn:
            self._record(conn, batch)
            conn.executemany(
                "INSERT INTO offline_exports (item_id, batch_id, at) VALUES (?, ?, ?) "
                "ON CONFLICT (item_id) DO UPDATE SET batch_id = excluded.batch_id, "
                "at = excluded.at",
                [(item_id, batch.batch_id, batch.at) for item_id in item_ids],
            )

    def was_exported(self, item_id: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM offline_exports WHERE item_id = ?", (item_id,)
        ).fetchone()
        return row is not None

    def forget_exports(self, item_ids: Iterable[str]) -> None:
        """Let these items go out again with the next export (the relay could not send them)."""
        with write_transaction(self._db) as conn:
            conn.executemany(
                "DELETE FROM offline_exports WHERE item_id = ?", [(i,) for i in item_ids]
            )

    # -- the relay's side --------------------------------------------------------------

    def owners(self, item_ids: Sequence[str]) -> dict[str, str]:
        """The box (key id) each of these already relayed items came from."""
        found: dict[str, str] = {}
        for start in range(0, len(item_ids), 500):
            chunk = item_ids[start : start + 500]
            found.update(
                self.conn.execute(
                    "SELECT item_id, peer FROM relay_items WHERE item_id IN "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
            )
        return found

    def relayed(self, batch: Batch, item_ids: Sequence[str]) -> None:
        """Record a request batch taken in and whose items are now in this outbox.

        An item sent again by its box (its result batch was lost, or the box retries it)
        is marked to go back again.
        """
        with write_transaction(self._db) as conn:
            self._record(conn, batch)
            conn.executemany(
                "INSERT INTO relay_items (item_id, peer, batch_id) VALUES (?, ?, ?) "
                "ON CONFLICT (item_id) DO UPDATE SET batch_id = excluded.batch_id, "
                "returned_in = NULL",
                [(item_id, batch.peer, batch.batch_id) for item_id in item_ids],
            )

    def finished_for(self, peer: str, limit: int) -> list[tuple[str, str]]:
        """(item id, state) of `peer`'s relayed items that are finished and not yet returned."""
        return [
            (row[0], row[1])
            for row in self.conn.execute(
                "SELECT r.item_id, o.state FROM relay_items r JOIN outbox o ON o.id = r.item_id "
                "WHERE r.peer = ? AND r.returned_in IS NULL "
                "AND o.state IN ('done', 'failed', 'expired') ORDER BY o.rowid LIMIT ?",
                (peer, limit),
            )
        ]

    def pending_for(self, peer: str) -> int:
        """How many of `peer`'s relayed items are still waiting to be sent upstream."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM relay_items r JOIN outbox o ON o.id = r.item_id "
            "WHERE r.peer = ? AND r.returned_in IS NULL AND o.state IN ('queued', 'sending')",
            (peer,),
        ).fetchone()
        return int(row[0])

    def returned(self, batch: Batch, item_ids: Sequence[str]) -> None:
        """Record a written result batch and mark its items as gone back."""
        with write_transaction(self._db) as conn:
            self._record(conn, batch)
            conn.executemany(
                "UPDATE relay_items SET returned_in = ? WHERE item_id = ?",
                [(batch.batch_id, item_id) for item_id in item_ids],
            )
