"""The outbox: a durable store-and-forward queue of escalations in state.db.

An escalation that cannot go upstream now (uplink down, ``queue`` mode) is kept here until
a sender delivers it. Durability comes from state.db itself: WAL with ``synchronous=FULL``,
so :meth:`Outbox.enqueue` returning means the item survives a power cut, and the device may
be told "queued" with its escalation id.

Lifecycle of an item::

    queued --claim--> sending --complete--> done
       ^                 |  \\--fail-----> failed      (permanent; `retry` re-queues)
       |---release-------/
    queued/sending past expires_at --expire--> expired   (`retry` re-queues)

Senders *lease* items: :meth:`claim` marks them ``sending`` for ``lease_s`` seconds under an
owner name, in one ``BEGIN IMMEDIATE`` transaction, so two senders (threads or processes)
never take the same item. A sender that dies leaves its lease to run out, after which the
item is claimable again; when it is certainly dead (``owners.is_gone``) :meth:`reclaim_gone`
queues its items at once. Since the escalation id is also the upstream's ``Idempotency-Key``,
a resend after such a crash is not charged twice by an upstream that honours the key, and a
second answer never overwrites the first (:meth:`complete` keeps the first result).

Every time column holds UTC text in one fixed format (see ``model.fmt_time``) so comparisons
and ``ORDER BY`` work on the text. Each thread has its own SQLite connection.

This class owns connections, the clock and the contract; the tables are in ``schema``, the
column order in ``rows``, the senders' transitions in ``leases`` and the cap in ``capacity``.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import sqlite_utils

from appliance.clock import utc_now_dt
from appliance.errors import OutboxError
from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.home import Home
from appliance.outbox import capacity, leases, owners, rows
from appliance.outbox.crypto import MapCipher
from appliance.outbox.model import (
    FINISHED_STATES,
    STATES,
    OutboxItem,
    OutboxResult,
    fmt_time,
    parse_time,
)
from appliance.settings import OutboxSettings
from appliance.state import ThreadConnections, write_transaction

_IN_CHUNK = 500  # ids per "IN (...)" lookup, well under SQLite's variable limit
_GOLDEN_PAGE = 256  # rows per read while iterating golden(): no read transaction stays open
MIN_ID_PREFIX = 4  # characters of an id that `resolve` needs
AMBIGUOUS_SHOWN = 5  # ids an ambiguous prefix error lists


class Outbox:
    """The outbox of one APPLIANCE_HOME (tables ``outbox`` and ``outbox_results``)."""

    def __init__(
        self,
        home: Home,
        settings: OutboxSettings,
        clock: Callable[[], datetime] = utc_now_dt,
    ) -> None:
        self.home = home.ensure()
        self.settings = settings
        self._clock = clock
        self._cipher = MapCipher(self.home)
        self._connections = ThreadConnections(self.home)
        try:
            self._db()  # opening state.db brings its tables (appliance.schema) up to date
        except BaseException:
            self.close()
            raise

    # -- connections -------------------------------------------------------------------

    def _db(self) -> sqlite_utils.Database:
        return self._connections.db()

    def _conn(self) -> sqlite3.Connection:
        return self._db().conn

    def close(self) -> None:
        """Close this thread's connection; other threads' close when those threads end."""
        self._connections.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise OutboxError("the outbox clock returned a naive datetime; it must be UTC")
        return now.astimezone(UTC)

    # -- enqueue -----------------------------------------------------------------------

    def enqueue(self, item: Escalation) -> None:
        """Keep `item` until sent; durable when this returns. The same id again is a no-op.

        Raises :class:`OutboxFullError` when the cap is reached (see ``capacity``).
        """
        self.enqueue_many((item,))

    def enqueue_leased(self, item: Escalation, owner: str, lease_s: float) -> bool:
        """Keep `item` already leased to `owner` (``sending``) for `lease_s` seconds.

        For a sender that sends the item itself right away (an escalation answered now): no
        other sender may take it while that send is in flight, and if this process dies the
        lease runs out and the drain takes it then. False (nothing changed) when the id is
        already in the outbox: someone else owns its fate.
        """
        return self.enqueue_many((item,), lease=(owner, lease_s)) == 1

    def enqueue_many(
        self, items: Sequence[Escalation], lease: tuple[str, float] | None = None
    ) -> int:
        """Enqueue several items in one transaction: all are kept, or (on an error) none.

        Returns how many were new (an id already present is left as it is). With `lease`
        (owner, seconds) the new items start ``sending`` under that lease (see
        `enqueue_leased`).
        """
        now = self._now()
        next_attempt = fmt_time(now)
        new = [self._row(item, now, next_attempt) for item in items]  # sealed outside the lock
        if not new:
            return 0
        added = 0
        with write_transaction(self._db()) as conn:
            ids = [row[0] for row in new]
            present = {
                found[0]
                for start in range(0, len(ids), _IN_CHUNK)
                for found in conn.execute(
                    "SELECT id FROM outbox WHERE id IN "
                    f"({', '.join('?' * len(ids[start : start + _IN_CHUNK]))})",
                    ids[start : start + _IN_CHUNK],
                )
            }
            room = capacity.Room(conn, self.settings)
            for row in new:
                if row[0] in present:
                    continue  # same id again: the first one stands
                present.add(row[0])
                room.make(size=row[-1], priority=row[2])
                conn.execute(rows.INSERT_ITEM, row)
                added += 1
                if lease is not None:
                    owner, seconds = lease
                    leases.take(conn, row[0], owner, now, seconds)
        capacity.log_dropped(room.dropped)
        return added

    def note_local_answer(
        self, item: Escalation, local_answer: str, confidence: float | None
    ) -> None:
        """Keep the local answer beside a kept item that had none (it was sent upstream
        before the local model ran): golden-set material, in egress terms like any other."""
        with write_transaction(self._db()) as conn:
            conn.execute(
                "UPDATE outbox SET local_answer = ?, confidence = ? "
                "WHERE id = ? AND local_answer IS NULL",
                (rows.in_egress_terms(local_answer, item.mapping), confidence, item.id),
            )

    def _row(self, item: Escalation, now: datetime, next_attempt: str) -> tuple[Any, ...]:
        """The INSERT values of `item`; its map is sealed here, before any lock is taken."""
        rows.check_id(item.id)
        created = parse_time(item.created_at) if item.created_at else now
        expires = created + timedelta(seconds=self.settings.ttl_s)
        sealed = self._cipher.seal(item.id, item.mapping)
        return rows.insert_values(item, sealed, created, expires, next_attempt)

    # -- reads -------------------------------------------------------------------------

    def get(self, id: str) -> OutboxItem | None:
        row = self._conn().execute(f"SELECT {rows.ITEMS} FROM outbox WHERE id = ?", (id,))
        found = row.fetchone()
        return None if found is None else rows.item_from_row(found)

    def resolve(self, prefix: str) -> str:
        """The one item id that is `prefix` or starts with it (as git takes a short hash)."""
        if self.get(prefix) is not None:
            return prefix
        if len(prefix) < MIN_ID_PREFIX:
            raise OutboxError(
                f"no outbox item {prefix}; give at least {MIN_ID_PREFIX} characters of an id"
            )
        # the ids starting with prefix, as a range of the primary key's index
        upper = prefix[:-1] + chr(min(ord(prefix[-1]) + 1, 0x10FFFF))
        found = [
            r[0]
            for r in self._conn().execute(
                "SELECT id FROM outbox WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
                (prefix, upper, AMBIGUOUS_SHOWN + 1),
            )
        ]
        if not found:
            raise OutboxError(f"no outbox item has an id starting with {prefix}")
        if len(found) > 1:
            shown = ", ".join(found[:AMBIGUOUS_SHOWN])
            more = ", …" if len(found) > AMBIGUOUS_SHOWN else ""
            raise OutboxError(f"id prefix {prefix} is ambiguous: {shown}{more}; give more of it")
        return str(found[0])

    def golden_count(self, upstreams: Collection[str]) -> int:
        """Done items whose answer came from one of `upstreams` (the trainable ones)."""
        names = sorted(set(upstreams))
        if not names:
            return 0
        marks = ", ".join("?" for _ in names)
        row = self._conn().execute(
            "SELECT COUNT(*) FROM outbox o JOIN outbox_results r ON r.id = o.id "
            f"WHERE o.state = 'done' AND r.upstream IN ({marks})",
            names,
        )
        return int(row.fetchone()[0])

    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[OutboxItem]:
        """Items, newest first; only those in `state` when given.

        All states: one index walk per state, merged here, rather than an index on
        created_at alone, which would cost every enqueue about 10% for the sake of a CLI read.
        """
        if state is not None:
            _check_states((state,))
        if limit <= 0:
            return []
        found: builtins.list[tuple[Any, ...]] = []
        for one in STATES if state is None else (state,):
            found += self._conn().execute(
                f"SELECT rowid, {rows.ITEMS} FROM outbox WHERE state = ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (one, limit),
            )
        found.sort(key=lambda r: (r[2], r[0]), reverse=True)  # created_at, rowid
        return [rows.item_from_row(r[1:]) for r in found[:limit]]

    def counts(self) -> dict[str, int]:
        """Items per state, every state present (zeros included)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in (
            self._conn().execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        ):
            counts[state] = n
        return counts

    def usage(self) -> tuple[int, int]:
        """(items, bytes) counted against the cap: those queued or being sent."""
        items, used = (
            self._conn().execute("SELECT items, bytes FROM outbox_usage WHERE id = 1").fetchone()
        )
        return int(items), int(used)

    def oldest_queued_at(self) -> datetime | None:
        row = (
            self._conn()
            .execute("SELECT MIN(created_at) FROM outbox WHERE state = 'queued'")
            .fetchone()
        )
        return None if row[0] is None else parse_time(row[0])

    def mapping(self, id: str) -> dict[str, str]:
        """The decrypted placeholder map of `id`. It holds PII: never log or export it."""
        row = self._conn().execute("SELECT mapping_sealed FROM outbox WHERE id = ?", (id,))
        found = row.fetchone()
        if found is None:
            raise OutboxError(f"no outbox item {id}")
        return self._cipher.open(id, bytes(found[0]))

    def result(self, id: str) -> OutboxResult | None:
        row = (
            self._conn()
            .execute(f"SELECT {rows.RESULTS} FROM outbox_results WHERE id = ?", (id,))
            .fetchone()
        )
        return None if row is None else rows.result_from_row(row)

    def spent_since(self, since: datetime) -> float:
        """USD of every upstream answer received at or after `since`, purged ones included."""
        row = (
            self._conn()
            .execute(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM outbox_spend WHERE received_at >= ?",
                (fmt_time(since),),
            )
            .fetchone()
        )
        return float(row[0])

    def golden(self) -> Iterator[tuple[OutboxItem, OutboxResult]]:
        """Done items with their upstream answers, oldest first (distillation material).

        Read a page at a time, so a slow consumer never holds a read transaction open (which
        would stop WAL checkpoints and let the -wal file grow).
        """
        columns = (
            f"{rows.prefixed(rows.ITEM_COLUMNS, 'o')}, {rows.prefixed(rows.RESULT_COLUMNS, 'r')}"
        )
        width = len(rows.ITEM_COLUMNS)
        after: tuple[str, int] = ("", -1)
        while True:
            page = (
                self._conn()
                .execute(
                    f"SELECT o.rowid, {columns} FROM outbox o "
                    "JOIN outbox_results r ON r.id = o.id WHERE o.state = 'done' "
                    "AND (o.created_at, o.rowid) > (?, ?) "
                    "ORDER BY o.created_at, o.rowid LIMIT ?",
                    (*after, _GOLDEN_PAGE),
                )
                .fetchall()
            )
            for row in page:
                yield rows.item_from_row(row[1 : 1 + width]), rows.result_from_row(row[1 + width :])
            if len(page) < _GOLDEN_PAGE:
                return
            after = (page[-1][2], page[-1][0])

    # -- senders (the SQL of each transition is in ``leases``) -------------------------

    def claim(
        self,
        owner: str,
        limit: int,
        upstreams: Collection[str] | None = None,
        lease_s: float | None = None,
    ) -> builtins.list[OutboxItem]:
        """Lease up to `limit` items to `owner` for `lease_s` seconds (default: the
        ``lease_s`` setting); returns them updated.

        Takes queued items whose next attempt is due, and ``sending`` items whose lease ran
        out (their sender died), none past expiry; only for `upstreams` when given; highest
        priority first, then oldest. One ``BEGIN IMMEDIATE`` transaction: no item is handed
        to two claimers.
        """
        if limit <= 0 or (upstreams is not None and not upstreams):
            return []
        now = self._now()
        with write_transaction(self._db()) as conn:
            seconds = self.settings.lease_s if lease_s is None else lease_s
            return leases.claim(conn, owner, limit, upstreams, now, seconds)

    def complete(self, id: str, owner: str, answer: UpstreamAnswer, cost_usd: float) -> bool:
        """Record the upstream's answer and mark the item done, in one transaction.

        Accepted from ``sending`` whoever holds the lease (a slow sender's answer is still the
        answer), from ``queued`` (answered directly, before any lease), and from ``failed`` or
        ``expired`` (a late answer was still paid for: spent_since must count it). If the item
        is already done the first result is kept and False is returned. `owner` is accepted
        for symmetry with release/fail; it does not gate an answer.
        """
        now = self._now()
        with write_transaction(self._db()) as conn:
            return leases.complete(conn, id, answer, cost_usd, now)

    def release(self, id: str, owner: str, error: str, next_attempt_at: datetime) -> None:
        """Give a leased item back to the queue after a failed attempt (``sending -> queued``).

        `error` is kept as last_error. A sender whose lease was taken over (or whose item was
        meanwhile completed) changes nothing.
        """
        with write_transaction(self._db()) as conn:
            leases.release(conn, id, owner, error, next_attempt_at)

    def fail(self, id: str, owner: str, error: str) -> None:
        """Give up on an item for good (the upstream refused it); `error` says why.

        From ``sending`` held by `owner`, or from ``queued``; otherwise nothing changes.
        """
        with write_transaction(self._db()) as conn:
            leases.fail(conn, id, owner, error)

    # -- housekeeping ------------------------------------------------------------------

    def reclaim_gone(self) -> builtins.list[OutboxItem]:
        """Queue again, due now, the items leased to senders that are certainly dead (see
        ``owners.is_gone``: another boot, or a process that no longer exists); returns them
        as they were when their sender stopped, so that the caller can account for a
        request that may have reached the upstream."""
        now = self._now()
        with write_transaction(self._db()) as conn:
            return leases.reclaim(conn, owners.is_gone, now)


    def expire(self) -> int:
        """Mark items past expires_at (queued, or sending with a dead lease) expired."""
        now = self._now()
        with write_transaction(self._db()) as conn:
            return leases.expire(conn, now)

    def retry(self, id: str) -> OutboxItem:
        """Queue a failed or expired item again, now, with a fresh TTL; attempts are kept.

        It counts against the cap again, so a full outbox applies ``when_full`` to it.
        """
        now = self._now()
        with write_transaction(self._db()) as conn:
            row = conn.execute(
                "SELECT state, size_bytes, priority FROM outbox WHERE id = ?", (id,)
            ).fetchone()
            if row is None:
                raise OutboxError(f"no outbox item {id}")
            if row[0] not in ("failed", "expired"):
                raise OutboxError(f"outbox item {id} is {row[0]}; only failed or expired retry")
            room = capacity.Room(conn, self.settings)
            room.make(size=row[1], priority=row[2])
            conn.execute(
                "UPDATE outbox SET state = 'queued', next_attempt_at = ?, expires_at = ?, "
                "lease_owner = NULL, lease_until = NULL WHERE id = ?",
                (fmt_time(now), fmt_time(now + timedelta(seconds=self.settings.ttl_s)), id),
            )
        capacity.log_dropped(room.dropped)
        item = self.get(id)
        if item is None:  # purged between the commit and this read
            raise OutboxError(f"no outbox item {id}")
        return item

    def purge(
        self, states: Collection[str] = FINISHED_STATES, keep_golden: Collection[str] = ()
    ) -> int:
        """Delete finished items (and their results) in `states`; returns how many went.

        Only done, failed and expired can be purged: a queued item is a promise to the device.
        What the purged answers cost stays counted by :meth:`spent_since`; purged done items
        are no longer in :meth:`golden`, so export distillation data first. Done items whose
        answer came from an upstream named in `keep_golden` (golden answers still wanted for
        training) stay.
        """
        wanted = sorted(set(states))
        _check_states(wanted)
        live = [s for s in wanted if s not in FINISHED_STATES]
        if live:
            raise OutboxError(
                f"cannot purge {', '.join(live)} items; purge removes only "
                f"{', '.join(FINISHED_STATES)}"
            )
        if not wanted:
            return 0
        marks = ", ".join("?" for _ in wanted)
        kept = sorted(set(keep_golden))
        spare = ""
        if kept:
            spare = (
                " AND NOT (state = 'done' AND id IN (SELECT id FROM outbox_results "
                f"WHERE upstream IN ({', '.join('?' for _ in kept)})))"
            )
        with write_transaction(self._db()) as conn:
            # Results go with their items (ON DELETE CASCADE).
            deleted = conn.execute(
                f"DELETE FROM outbox WHERE state IN ({marks}){spare}", [*wanted, *kept]
            )
            return int(deleted.rowcount)


def _check_states(states: Collection[str]) -> None:
    unknown = [s for s in states if s not in STATES]
    if unknown:
        raise OutboxError(f"unknown outbox state {unknown[0]!r}; one of: {', '.join(STATES)}")
