"""The senders' side of the lifecycle: claim under a lease, then complete, release or fail.

Each function is the SQL of one transition and runs on a connection already inside the
caller's ``BEGIN IMMEDIATE`` transaction (see :class:`appliance.outbox.store.Outbox`, which
owns connections, the clock and the public contract). Being inside one write transaction is
what makes a claim exclusive: two claimers, threads or processes, are serialized by SQLite's
write lock, and the second sees the first one's ``sending`` rows.

A lease is ``lease_owner`` + ``lease_until``. Only the owner may release or fail its item;
anyone's answer completes it, because an answer that was paid for is real even if its sender
was presumed dead and the item re-leased meanwhile.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from appliance.errors import OutboxError
from appliance.governance.escalation import UpstreamAnswer
from appliance.outbox import rows
from appliance.outbox.model import OutboxItem, fmt_time


def claim(
    conn: sqlite3.Connection,
    owner: str,
    limit: int,
    upstreams: Collection[str] | None,
    now: datetime,
    lease_s: float,
) -> list[OutboxItem]:
    """Lease the due items (see ``Outbox.claim``); returns them as they now are."""
    stamp = fmt_time(now)
    lease_until = fmt_time(now + timedelta(seconds=lease_s))
    where_upstream, names = "", []
    if upstreams is not None:
        names = sorted(set(upstreams))
        where_upstream = f"AND upstream IN ({', '.join('?' for _ in names)}) "
    # Two index walks (due queued items, dead leases), each by priority then age, merged here.
    found: list[tuple[Any, ...]] = []
    for condition in (
        "state = 'queued' AND next_attempt_at <= ?",
        "state = 'sending' AND lease_until <= ?",
    ):
        # INDEXED BY: left to itself the planner may take outbox_by_expiry for the
        # `expires_at >` term and sort every live row (50 ms at 100,000 items).
        found += conn.execute(
            f"SELECT rowid, {rows.ITEMS} FROM outbox INDEXED BY outbox_by_priority "
            f"WHERE {condition} AND expires_at > ? {where_upstream}"
            "ORDER BY priority DESC, created_at ASC, rowid ASC LIMIT ?",
            (stamp, stamp, *names, limit),
        ).fetchall()
    found.sort(key=lambda r: (-r[3], r[2], r[0]))  # priority desc, created_at, rowid
    taken = [rows.item_from_row(r[1:]) for r in found[:limit]]
    conn.executemany(
        "UPDATE outbox SET state = 'sending', lease_owner = ?, lease_until = ?, "
        "attempts = attempts + 1 WHERE id = ?",
        [(owner, lease_until, item.id) for item in taken],
    )
    return [
        replace(
            item,
            state="sending",
            lease_owner=owner,
            lease_until=lease_until,
            attempts=item.attempts + 1,
        )
        for item in taken
    ]


def take(conn: sqlite3.Connection, id: str, owner: str, now: datetime, lease_s: float) -> None:
    """A just-inserted ``queued`` item ``-> sending`` under `owner`'s lease (one attempt)."""
    conn.execute(
        "UPDATE outbox SET state = 'sending', lease_owner = ?, lease_until = ?, "
        "attempts = attempts + 1 WHERE id = ? AND state = 'queued'",
        (owner, fmt_time(now + timedelta(seconds=lease_s)), id),
    )


def complete(
    conn: sqlite3.Connection, id: str, answer: UpstreamAnswer, cost_usd: float, now: datetime
) -> bool:
    """Mark `id` done with its result; False (and the first result kept) if already done."""
    row = conn.execute("SELECT state FROM outbox WHERE id = ?", (id,)).fetchone()
    if row is None:
        raise OutboxError(f"no outbox item {id}")
    if row[0] == "done":
        return False
    conn.execute(
        "UPDATE outbox SET state = 'done', lease_owner = NULL, lease_until = NULL WHERE id = ?",
        (id,),
    )
    conn.execute(
        rows.INSERT_RESULT,
        (
            id,
            answer.upstream,
            answer.model,
            answer.text,
            answer.prompt_tokens,
            answer.completion_tokens,
            float(cost_usd),
            answer.finish_reason,
            fmt_time(now),
        ),
    )
    return True


def release(
    conn: sqlite3.Connection, id: str, owner: str, error: str, next_attempt_at: datetime
) -> None:
    """``sending -> queued`` if `owner` holds the lease; otherwise nothing changes."""
    updated = conn.execute(
        "UPDATE outbox SET state = 'queued', next_attempt_at = ?, last_error = ?, "
        "lease_owner = NULL, lease_until = NULL "
        "WHERE id = ? AND state = 'sending' AND lease_owner = ?",
        (fmt_time(next_attempt_at), error, id, owner),
    )
    if updated.rowcount == 0:
        require(conn, id)


def fail(conn: sqlite3.Connection, id: str, owner: str, error: str) -> None:
    """``queued``, or ``sending`` held by `owner`, ``-> failed``; otherwise nothing changes."""
    updated = conn.execute(
        "UPDATE outbox SET state = 'failed', last_error = ?, lease_owner = NULL, "
        "lease_until = NULL WHERE id = ? "
        "AND (state = 'queued' OR (state = 'sending' AND lease_owner = ?))",
        (error, id, owner),
    )
    if updated.rowcount == 0:
        require(conn, id)


def expire(conn: sqlite3.Connection, now: datetime) -> int:
    """Queued items, and sending ones with a dead lease, past expires_at ``-> expired``."""
    stamp = fmt_time(now)
    updated = conn.execute(
        "UPDATE outbox SET state = 'expired', lease_owner = NULL, lease_until = NULL "
        "WHERE expires_at <= ? "
        "AND (state = 'queued' OR (state = 'sending' AND lease_until <= ?))",
        (stamp, stamp),
    )
    return int(updated.rowcount)


def require(conn: sqlite3.Connection, id: str) -> None:
    """Raise :class:`OutboxError` for an unknown id (after a transition matched no row)."""
    if conn.execute("SELECT 1 FROM outbox WHERE id = ?", (id,)).fetchone() is None:
        raise OutboxError(f"no outbox item {id}")


def reclaim(
    conn: sqlite3.Connection, gone: Callable[[str], bool], now: datetime
) -> list[OutboxItem]:
    """``sending`` items whose lease owner is `gone` ``-> queued``, due now; returns them
    as they were (lease and all).

    The lease would run out on its own; a holder known to be dead has no request in flight
    any more, so its items need not wait for that.
    """
    owners = [
        owner
        for (owner,) in conn.execute(
            "SELECT DISTINCT lease_owner FROM outbox WHERE state = 'sending' "
            "AND lease_owner IS NOT NULL"
        )
        if gone(owner)
    ]
    found: list[OutboxItem] = []
    for owner in owners:
        found += [
            rows.item_from_row(row)
            for row in conn.execute(
                f"SELECT {rows.ITEMS} FROM outbox WHERE state = 'sending' AND lease_owner = ?",
                (owner,),
            )
        ]
        conn.execute(
            "UPDATE outbox SET state = 'queued', next_attempt_at = ?, "
            "last_error = 'its sender stopped with the request in flight', "
            "lease_owner = NULL, lease_until = NULL WHERE state = 'sending' AND lease_owner = ?",
            (fmt_time(now), owner),
        )
    return found
