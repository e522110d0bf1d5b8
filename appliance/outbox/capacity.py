"""The disk cap: what happens when an escalation arrives and the outbox is full.

Like the Greengrass stream manager's ``maxSize`` with ``StrategyOnFull``, the outbox bounds
what it keeps: items still to be sent (``queued`` or ``sending``) count against
``max_items`` and against ``max_bytes`` (their messages, parameters and sealed map). Items
that are done, failed or expired no longer count; ``appliance outbox purge`` reclaims their
disk.

When a new item would not fit:

* ``when_full = "reject"``: it is refused with :class:`OutboxFullError` naming the limit; the
  daemon turns that into 503 + ``Retry-After`` and the device keeps its local answer.
* ``when_full = "drop-oldest"``: the oldest ``queued`` item of the *lowest* priority that is
  not above the new item's priority is marked ``failed`` with last_error
  ``"dropped: outbox full"``, and so on until the new item fits. Items being sent are never
  dropped, and nothing of higher priority ever makes room for lower-priority work: if not
  enough can go, the new item is refused with :class:`OutboxFullError` and, since this runs
  inside the enqueue transaction, nothing was dropped.

An item larger than ``max_bytes`` on its own is refused in both modes, dropping nothing.
"""

from __future__ import annotations

import logging
import sqlite3

from appliance.errors import OutboxFullError
from appliance.settings import OutboxSettings

DROPPED = "dropped: outbox full"

log = logging.getLogger(__name__)


class Room:
    """The cap, checked inside one write transaction: reads the tally once, then counts.

    Raising from :meth:`make` leaves every change of the transaction to be rolled back.
    """

    def __init__(self, conn: sqlite3.Connection, settings: OutboxSettings) -> None:
        self._conn = conn
        self._settings = settings
        row = conn.execute("SELECT items, bytes FROM outbox_usage WHERE id = 1").fetchone()
        self.items, self.bytes = int(row[0]), int(row[1])
        self.dropped: list[str] = []

    def make(self, size: int, priority: int) -> None:
        """Ensure one more item of `size` bytes fits, dropping per ``when_full``; count it."""
        settings = self._settings
        if size > settings.max_bytes:
            raise OutboxFullError(
                f"an escalation of {size} bytes exceeds the outbox max_bytes "
                f"({settings.max_bytes} bytes) on its own"
            )
        while self.items + 1 > settings.max_items or self.bytes + size > settings.max_bytes:
            limit = (
                f"max_items ({settings.max_items} items)"
                if self.items + 1 > settings.max_items
                else f"max_bytes ({settings.max_bytes} bytes; {self.bytes} in use, "
                f"{size} more asked)"
            )
            if settings.when_full == "reject":
                raise OutboxFullError(f"outbox full: {limit} reached")
            victim = self._victim(priority)
            if victim is None:
                raise OutboxFullError(
                    f"outbox full: {limit} reached and no queued item of priority {priority} "
                    "or lower can be dropped"
                )
            self._conn.execute(
                "UPDATE outbox SET state = 'failed', last_error = ?, lease_owner = NULL, "
                "lease_until = NULL WHERE id = ?",
                (DROPPED, victim[0]),
            )
            self.dropped.append(victim[0])
            self.items -= 1
            self.bytes -= victim[1]
        self.items += 1
        self.bytes += size

    def _victim(self, priority: int) -> tuple[str, int] | None:
        """The oldest queued item of the lowest priority not above `priority`, if any.

        Two index seeks: the lowest priority, then the oldest of it. One query ordered by
        ``priority ASC, created_at ASC`` runs against the claim index's ``priority DESC``
        and sorts every queued row of that priority: 150 ms per drop at 100,000 items,
        all of it under the write lock.
        """
        lowest = self._conn.execute(
            "SELECT MIN(priority) FROM outbox WHERE state = 'queued' AND priority <= ?",
            (priority,),
        ).fetchone()[0]
        if lowest is None:
            return None
        row = self._conn.execute(
            "SELECT id, size_bytes FROM outbox WHERE state = 'queued' AND priority = ? "
            "ORDER BY created_at ASC, rowid ASC LIMIT 1",
            (lowest,),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))


def log_dropped(dropped: list[str]) -> None:
    """Ids only: an item's text and map never go to a log."""
    for item_id in dropped:
        log.warning("outbox full: dropped queued escalation %s to make room", item_id)
