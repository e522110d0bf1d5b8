"""The outbox store: durability, leases, lifecycle, the disk cap and the sealed maps."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.home import Home
from appliance.outbox import MapCipher, Outbox, OutboxError, OutboxFullError
from appliance.outbox.capacity import DROPPED
from appliance.outbox.model import fmt_time
from appliance.pii.redact import rehydrate
from appliance.settings import MiB, OutboxSettings

PII = "jordan.blake@example.net"
PLACEHOLDER = "<EMAIL_1>"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings() -> OutboxSettings:
    return OutboxSettings(ttl_s=3600, lease_s=60)


@pytest.fixture
def outbox(home: Home, settings: OutboxSettings, clock: Clock) -> Iterator[Outbox]:
    o = Outbox(home, settings, clock=clock)
    yield o
    o.close()


def esc(clock: Clock, **fields: Any) -> Escalation:
    """An escalation created now (by `clock`); a second later for the next one."""
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "created_at": fmt_time(clock.now),
        "upstream": "openai-main",
        "endpoint": "chat",
        "messages": ({"role": "user", "content": f"Mail {PLACEHOLDER} about the pallet."},),
        "mapping": {PLACEHOLDER: PII},
        "model": "tiny-chat",
        "device": "cam-01",
        "sensitivity": "personal",
        "reasons": ("EMAIL_ADDRESS",),
        "local_answer": "I will look into it.",
        "confidence": 0.4,
    }
    values.update(fields)
    clock.advance(1)
    return Escalation(**values)


def answer(text: str = f"Dear {PLACEHOLDER}, done.", **fields: Any) -> UpstreamAnswer:
    values: dict[str, Any] = {"text": text, "upstream": "openai-main", "model": "gpt-4o"}
    values.update(fields)
    return UpstreamAnswer(prompt_tokens=20, completion_tokens=5, **values)


def usage_from_rows(home: Home) -> tuple[int, int]:
    with sqlite3.connect(home.state_db) as conn:
        row = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM outbox "
            "WHERE state IN ('queued', 'sending')"
        ).fetchone()
    return row[0], row[1]


# -- durability and identity ------------------------------------------------------------


def test_enqueued_item_survives_a_reopened_store(home: Home, settings: OutboxSettings, clock):
    item = esc(clock, priority=3, stop=("END",), max_tokens=99)
    with Outbox(home, settings, clock=clock) as first:
        first.enqueue(item)
    with Outbox(home, settings, clock=clock) as second:
        got = second.get(item.id)
        assert got is not None
        assert got.state == "queued" and got.attempts == 0 and got.priority == 3
        assert got.messages == tuple(dict(m) for m in item.messages)
        assert got.params == {"max_tokens": 99, "temperature": 1.0, "top_p": 1.0, "stop": ["END"]}
        assert got.reasons == ("EMAIL_ADDRESS",) and got.device == "cam-01"
        assert got.created_at == "2030-01-02T03:04:05.000000Z"
        assert got.expires_at == "2030-01-02T04:04:05.000000Z"  # created + ttl_s
        assert got.size_bytes > 0
        assert second.mapping(item.id) == {PLACEHOLDER: PII}
        assert "mapping" not in got.to_json() and PII not in str(got.to_json())


_CRASHING_SENDER = """
import sys, time
from pathlib import Path
from appliance.governance.escalation import Escalation
from appliance.home import Home
from appliance.outbox import Outbox
from appliance.settings import OutboxSettings

outbox = Outbox(Home(Path(sys.argv[1])), OutboxSettings())
outbox.enqueue(Escalation(id=sys.argv[2], created_at="", upstream="u", endpoint="chat",
                          messages=({"role": "user", "content": "hi <P_1>"},),
                          mapping={"<P_1>": "Jordan"}))
print("acknowledged", flush=True)
time.sleep(60)  # killed here: no close(), no checkpoint, the item only in the -wal
"""


def test_acknowledged_enqueue_survives_a_killed_process(home: Home, settings: OutboxSettings):
    item_id = str(uuid.uuid4())
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_SENDER, str(home.root), item_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "acknowledged\n"
    finally:
        child.kill()
        child.wait()
    with Outbox(home, settings) as fresh:
        got = fresh.get(item_id)
        assert got is not None and got.state == "queued"
        assert fresh.mapping(item_id) == {"<P_1>": "Jordan"}
        # Power loss is the pragmas' job: an acknowledged commit is fsynced WAL.
        conn = fresh._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_same_id_twice_is_a_no_op(outbox: Outbox, clock: Clock):
    item = esc(clock)
    outbox.enqueue(item)
    outbox.enqueue(esc(clock, id=item.id, priority=9, upstream="other"))
    outbox.enqueue_many([item, item])
    assert outbox.counts()["queued"] == 1
    kept = outbox.get(item.id)
    assert kept is not None and (kept.priority, kept.upstream) == (0, "openai-main")


def test_non_uuid_id_is_refused(outbox: Outbox, clock: Clock):
    with pytest.raises(OutboxError, match="not a UUID"):
        outbox.enqueue(esc(clock, id="../etc"))


def test_reads_and_counts(outbox: Outbox, clock: Clock):
    assert outbox.counts() == dict.fromkeys(("queued", "sending", "done", "failed", "expired"), 0)
    assert outbox.oldest_queued_at() is None
    items = [esc(clock) for _ in range(3)]
    outbox.enqueue_many(items)
    assert [i.id for i in outbox.list()] == [i.id for i in reversed(items)]
    assert [i.id for i in outbox.list(limit=2)] == [items[2].id, items[1].id]
    assert outbox.oldest_queued_at() == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    outbox.claim("s", 1)
    assert outbox.counts()["queued"] == 2 and outbox.counts()["sending"] == 1
    assert [i.id for i in outbox.list("sending")] == [items[0].id]
    assert outbox.get(str(uuid.uuid4())) is None
    with pytest.raises(OutboxError, match="unknown outbox state"):
        outbox.list("lost")


# -- claiming -----------------------------------------------------------------------------


def test_claim_takes_highest_priority_then_oldest(outbox: Outbox, clock: Clock):
    low_old = esc(clock, priority=0)
    high_new = esc(clock, priority=5)
    low_new = esc(clock, priority=0)
    high_newer = esc(clock, priority=5)
    other = esc(clock, priority=9, upstream="anthropic-b")
    outbox.enqueue_many([low_old, high_new, low_new, high_newer, other])

    first = outbox.claim("s1", 2, upstreams={"openai-main"})
    assert [i.id for i in first] == [high_new.id, high_newer.id]
    assert all(i.state == "sending" and i.lease_owner == "s1" and i.attempts == 1 for i in first)
    assert all(i.lease_until == "2030-01-02T03:05:10.000000Z" for i in first)  # now + lease_s
    stored = outbox.get(high_new.id)
    assert stored == first[0]

    assert [i.id for i in outbox.claim("s1", 10)] == [other.id, low_old.id, low_new.id]
    assert outbox.claim("s1", 10) == []
    assert outbox.claim("s1", 10, upstreams=()) == []


def test_claim_skips_items_not_yet_due_and_expired(outbox: Outbox, clock: Clock):
    retry_later, expiring = esc(clock), esc(clock)
    outbox.enqueue_many([retry_later, expiring])
    [taken] = outbox.claim("s", 1)
    outbox.release(taken.id, "s", "HTTP 503", clock.now + timedelta(seconds=30))
    assert [i.id for i in outbox.claim("s", 10)] == [expiring.id]
    clock.advance(30)
    assert [i.id for i in outbox.claim("s", 10)] == [retry_later.id]

    late = esc(clock)
    outbox.enqueue(late)
    clock.advance(3600)
    assert outbox.claim("s", 10) == []  # past expires_at


def _drain(outbox: Outbox, owner: str, taken: list[str]) -> None:
    while batch := outbox.claim(owner, 3):
        taken.extend(i.id for i in batch)
    outbox.close()


@pytest.mark.parametrize("separate_stores", [False, True])
def test_concurrent_claimers_never_share_an_item(
    home: Home, settings: OutboxSettings, outbox: Outbox, clock: Clock, separate_stores: bool
):
    items = [esc(clock) for _ in range(120)]
    outbox.enqueue_many(items)
    clock.advance(1)
    stores = [Outbox(home, settings, clock=clock) if separate_stores else outbox for _ in range(4)]
    taken: list[list[str]] = [[] for _ in stores]
    threads = [
        threading.Thread(target=_drain, args=(store, f"s{n}", taken[n]))
        for n, store in enumerate(stores)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in stores:
        if store is not outbox:
            store.close()  # the connection its __init__ opened on this thread
    everything = [i for part in taken for i in part]
    assert len(everything) == len(set(everything)) == 120
    assert outbox.counts()["sending"] == 120
    assert sum(1 for part in taken if part) >= 1


def test_dead_lease_is_reclaimed_after_lease_s(outbox: Outbox, clock: Clock):
    item = esc(clock)
    outbox.enqueue(item)
    assert [i.id for i in outbox.claim("crashed", 1)] == [item.id]
    clock.advance(59)
    assert outbox.claim("rescuer", 1) == []
    clock.advance(1)
    [again] = outbox.claim("rescuer", 1)
    assert (again.id, again.lease_owner, again.attempts) == (item.id, "rescuer", 2)
    # The crashed sender's late release changes nothing: the rescuer holds it.
    outbox.release(item.id, "crashed", "timeout", clock.now)
    outbox.fail(item.id, "crashed", "gave up")
    assert outbox.get(item.id) == again


def test_late_answer_of_a_presumed_dead_sender_counts_once(outbox: Outbox, clock: Clock):
    item = esc(clock)
    outbox.enqueue(item)
    outbox.claim("slow", 1)
    clock.advance(61)
    [again] = outbox.claim("rescuer", 1)
    assert again.lease_owner == "rescuer"  # a live lease, not the slow sender's
    assert outbox.complete(item.id, "slow", answer("from slow"), 0.02)  # the answer is real
    done = outbox.get(item.id)
    assert done is not None and (done.state, done.lease_owner) == ("done", None)
    assert not outbox.complete(item.id, "rescuer", answer("from rescuer"), 0.02)
    outbox.release(item.id, "rescuer", "too late", clock.now)  # changes nothing
    assert outbox.get(item.id) == done
    result = outbox.result(item.id)
    assert result is not None and result.text == "from slow"
    assert outbox.spent_since(clock.now - timedelta(hours=1)) == 0.02


# -- finishing ----------------------------------------------------------------------------


def test_complete_from_sending_stores_the_result(outbox: Outbox, clock: Clock):
    item = esc(clock)
    outbox.enqueue(item)
    outbox.claim("s", 1)
    assert outbox.complete(item.id, "s", answer(), cost_usd=0.0012)
    done = outbox.get(item.id)
    assert done is not None and done.state == "done" and done.lease_owner is None
    result = outbox.result(item.id)
    assert result is not None
    assert result.text == f"Dear {PLACEHOLDER}, done." and result.cost_usd == 0.0012
    assert (result.prompt_tokens, result.completion_tokens) == (20, 5)
    assert result.received_at == fmt_time(clock.now)


def test_complete_from_queued_and_twice_keeps_the_first(outbox: Outbox, clock: Clock):
    item = esc(clock)
    outbox.enqueue(item)
    assert outbox.complete(item.id, "router", answer("first"), 0.01)
    assert not outbox.complete(item.id, "sender", answer("second"), 0.02)
    result = outbox.result(item.id)
    assert result is not None and (result.text, result.cost_usd) == ("first", 0.01)
    assert outbox.spent_since(clock.now - timedelta(days=1)) == 0.01


def test_unknown_ids_are_refused(outbox: Outbox, clock: Clock):
    ghost = str(uuid.uuid4())
    with pytest.raises(OutboxError, match=f"no outbox item {ghost}"):
        outbox.complete(ghost, "s", answer(), 0.0)
    for call in (
        lambda: outbox.release(ghost, "s", "x", clock.now),
        lambda: outbox.fail(ghost, "s", "x"),
        lambda: outbox.retry(ghost),
        lambda: outbox.mapping(ghost),
    ):
        with pytest.raises(OutboxError, match="no outbox item"):
            call()
    assert outbox.result(ghost) is None


def test_release_and_fail(outbox: Outbox, clock: Clock):
    a, b = esc(clock), esc(clock)
    outbox.enqueue_many([a, b])
    outbox.claim("s", 2)
    later = clock.now + timedelta(seconds=8)
    outbox.release(a.id, "s", "HTTP 429", later)
    released = outbox.get(a.id)
    assert released is not None
    assert (released.state, released.last_error, released.attempts) == ("queued", "HTTP 429", 1)
    assert released.next_attempt_at == fmt_time(later) and released.lease_owner is None

    outbox.fail(b.id, "s", "HTTP 400: context too long")
    failed = outbox.get(b.id)
    assert failed is not None and failed.state == "failed"
    assert failed.last_error == "HTTP 400: context too long"
    outbox.fail(a.id, "anyone", "refused by policy")  # from queued
    assert outbox.counts()["failed"] == 2


def test_ttl_expiry_and_retry(outbox: Outbox, clock: Clock):
    queued, leased, held = esc(clock), esc(clock), esc(clock)
    outbox.enqueue_many([queued, leased, held])
    outbox.claim("dead", 2)  # queued and leased
    outbox.release(queued.id, "dead", "HTTP 503", clock.now)
    clock.advance(3600 - 4)  # one second before `queued` (created first) expires
    assert outbox.expire() == 0
    clock.advance(2)
    # queued and leased are past expires_at (leased's 60 s lease is long dead); held is not.
    assert outbox.expire() == 2
    assert outbox.get(queued.id).state == "expired"  # type: ignore[union-attr]
    assert outbox.get(leased.id).state == "expired"  # type: ignore[union-attr]
    assert outbox.get(held.id).state == "queued"  # type: ignore[union-attr]

    again = outbox.retry(queued.id)
    assert (again.state, again.attempts) == ("queued", 1)
    assert again.expires_at == fmt_time(clock.now + timedelta(seconds=3600))
    assert [i.id for i in outbox.claim("s", 10)] == [queued.id, held.id]
    with pytest.raises(OutboxError, match="only failed or expired"):
        outbox.retry(held.id)


def test_live_lease_is_not_expired(outbox: Outbox, clock: Clock):
    item = esc(clock)
    outbox.enqueue(item)
    clock.advance(3600 - 10)
    outbox.claim("s", 1)  # lease until +60 s
    clock.advance(20)
    assert outbox.expire() == 0
    clock.advance(60)
    assert outbox.expire() == 1


def test_purge_removes_finished_items_and_results(outbox: Outbox, clock: Clock):
    done, failed, queued = esc(clock), esc(clock), esc(clock)
    outbox.enqueue_many([done, failed, queued])
    outbox.complete(done.id, "s", answer(), 0.5)
    outbox.fail(failed.id, "s", "no")
    with pytest.raises(OutboxError, match="cannot purge queued"):
        outbox.purge(["queued", "done"])
    assert outbox.purge(["failed"]) == 1
    assert outbox.purge() == 1
    assert outbox.result(done.id) is None
    assert outbox.counts() == {"queued": 1, "sending": 0, "done": 0, "failed": 0, "expired": 0}


def test_spent_since_and_golden(outbox: Outbox, clock: Clock):
    items = [esc(clock) for _ in range(4)]
    outbox.enqueue_many(items)
    start = clock.now
    outbox.complete(items[2].id, "s", answer("c"), 0.25)
    clock.advance(10)
    outbox.complete(items[0].id, "s", answer("a"), 0.5)
    outbox.fail(items[1].id, "s", "no")
    assert outbox.spent_since(start) == 0.75
    assert outbox.spent_since(start + timedelta(seconds=1)) == 0.5
    assert outbox.spent_since(clock.now + timedelta(seconds=1)) == 0.0
    golden = list(outbox.golden())
    assert [(i.id, r.text) for i, r in golden] == [(items[0].id, "a"), (items[2].id, "c")]


def test_purge_keeps_the_spend(outbox: Outbox, clock: Clock):
    item = esc(clock)
    outbox.enqueue(item)
    since = clock.now
    outbox.complete(item.id, "s", answer(), 1.25)
    assert outbox.purge() == 1
    assert outbox.result(item.id) is None and list(outbox.golden()) == []
    # an operator reclaiming disk must not hand the daily budget back
    assert outbox.spent_since(since) == 1.25


def test_golden_pages_through_many(outbox: Outbox, clock: Clock):
    items = [esc(clock) for _ in range(600)]
    outbox.enqueue_many(items)
    for item in items:
        outbox.complete(item.id, "s", answer(), 0.0)
    assert [i.id for i, _ in outbox.golden()] == [i.id for i in items]


# -- the cap ------------------------------------------------------------------------------


def big(clock: Clock, kb: int = 400, **fields: Any) -> Escalation:
    return esc(clock, messages=({"role": "user", "content": "x" * (kb * 1024)},), **fields)


def test_cap_reject_by_items_and_bytes(home: Home, clock: Clock):
    with Outbox(home, OutboxSettings(max_items=2), clock=clock) as outbox:
        outbox.enqueue_many([esc(clock), esc(clock)])
        with pytest.raises(OutboxFullError, match=r"max_items \(2 items\)"):
            outbox.enqueue(esc(clock))
        # a whole batch is one transaction: refused entirely
        [first] = outbox.claim("s", 1)
        outbox.complete(first.id, "s", answer(), 0.0)  # done no longer counts
        batch = [esc(clock), esc(clock)]
        with pytest.raises(OutboxFullError):
            outbox.enqueue_many(batch)
        assert outbox.get(batch[0].id) is None
        outbox.enqueue(batch[0])
    with Outbox(home, OutboxSettings(max_bytes=1 * MiB), clock=clock) as outbox:
        outbox.purge()
        with pytest.raises(OutboxFullError, match="max_bytes"):
            outbox.enqueue_many([big(clock), big(clock), big(clock)])
        with pytest.raises(OutboxFullError, match="on its own"):
            outbox.enqueue(big(clock, kb=1100))
    assert usage_from_rows(home)[0] == 2


def test_cap_drop_oldest_of_lowest_priority(home: Home, clock: Clock):
    settings = OutboxSettings(max_items=4, when_full="drop-oldest")
    with Outbox(home, settings, clock=clock) as outbox:
        sending = esc(clock, priority=-5, upstream="anthropic-b")
        low_old, low_new, mid = (
            esc(clock, priority=0),
            esc(clock, priority=0),
            esc(clock, priority=1),
        )
        outbox.enqueue_many([sending, low_old, low_new, mid])
        assert [i.id for i in outbox.claim("s", 1, upstreams={"anthropic-b"})] == [sending.id]

        newcomer = esc(clock, priority=0)
        outbox.enqueue(newcomer)  # drops low_old: oldest of the lowest queued priority <= 0
        dropped = outbox.get(low_old.id)
        assert dropped is not None and (dropped.state, dropped.last_error) == ("failed", DROPPED)
        assert outbox.get(sending.id).state == "sending"  # type: ignore[union-attr]

        with pytest.raises(OutboxFullError, match="priority -1 or lower"):
            outbox.enqueue(esc(clock, priority=-1))  # nothing at or below -1 is queued

        urgent = esc(clock, priority=7)
        outbox.enqueue(urgent)  # drops low_new (priority 0 is below mid's 1)
        assert outbox.get(low_new.id).state == "failed"  # type: ignore[union-attr]
        assert outbox.get(mid.id).state == "queued"  # type: ignore[union-attr]
        assert outbox.counts()["queued"] + outbox.counts()["sending"] == 4
        assert outbox.usage() == usage_from_rows(home)


def test_refused_batch_drops_nothing(home: Home, clock: Clock):
    settings = OutboxSettings(max_items=2, when_full="drop-oldest")
    with Outbox(home, settings, clock=clock) as outbox:
        old = [esc(clock), esc(clock)]
        outbox.enqueue_many(old)
        with pytest.raises(OutboxFullError, match="priority -1 or lower"):
            outbox.enqueue_many([esc(clock), esc(clock, priority=-1)])
        assert outbox.counts()["queued"] == 2 and outbox.counts()["failed"] == 0
        assert {i.id for i in outbox.list()} == {i.id for i in old}


def test_usage_tally_follows_every_transition(outbox: Outbox, home: Home, clock: Clock):
    items = [esc(clock) for _ in range(6)]
    outbox.enqueue_many(items)
    outbox.claim("s", 3)
    outbox.complete(items[0].id, "s", answer(), 0.0)
    outbox.fail(items[1].id, "s", "no")
    outbox.release(items[2].id, "s", "x", clock.now)
    clock.advance(7200)
    outbox.expire()
    outbox.retry(items[3].id)
    outbox.purge()
    assert outbox.usage() == usage_from_rows(home)
    assert outbox.usage()[0] == 1


def test_hot_queries_walk_an_index(home: Home, clock: Clock):
    """No query sorts or reads the whole table: at the default 100,000 items a sort under the
    write lock cost 50-150 ms per claim or drop, and `outbox list` 380 ms, before the indexes
    and INDEXED BY."""
    settings = OutboxSettings(max_items=3, when_full="drop-oldest", ttl_s=3600, lease_s=60)
    with Outbox(home, settings, clock=clock) as outbox:
        statements: list[str] = []
        outbox._conn().set_trace_callback(statements.append)
        items = [esc(clock, priority=p) for p in (0, 1, 1, 2)]  # the fourth drops one
        outbox.enqueue_many(items)
        outbox.claim("s", 2, upstreams={"openai-main"})
        outbox.complete(items[3].id, "s", answer(), 0.1)
        outbox.release(items[2].id, "s", "x", clock.now)
        outbox.fail(items[2].id, "s", "no")
        outbox.retry(items[2].id)
        outbox.list(), outbox.list("queued"), outbox.counts(), outbox.oldest_queued_at()
        outbox.spent_since(clock.now), list(outbox.golden()), outbox.result(items[3].id)
        clock.advance(7200)
        outbox.expire()
        outbox.purge()
        outbox._conn().set_trace_callback(None)
        plans = {
            sql: " | ".join(
                row[3] for row in outbox._conn().execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            )
            for sql in statements
            if sql.split(None, 1)[0].upper() in ("SELECT", "UPDATE", "DELETE")
        }
    assert len(plans) > 15
    for sql, plan in plans.items():
        assert "TEMP B-TREE" not in plan, (sql, plan)
        # a SCAN in index order stops at the LIMIT (list) or reads only the index (counts)
        assert all("INDEX" in step for step in plan.split(" | ") if "SCAN" in step), (sql, plan)


# -- the sealed map -----------------------------------------------------------------------


def test_pii_never_reaches_the_database_files(home: Home, outbox: Outbox, clock: Clock):
    item = esc(clock)
    outbox.enqueue(item)
    files = [home.state_db, home.state_db.with_name("state.db-wal")]
    blob = b"".join(p.read_bytes() for p in files if p.exists())
    assert PLACEHOLDER.encode() in blob  # the egress text is there: we read the right bytes
    assert PII.encode() not in blob
    outbox.close()
    blob = b"".join(p.read_bytes() for p in files if p.exists())
    assert PII.encode() not in blob
    key = home.root / "outbox.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32


def test_local_answer_is_kept_in_egress_terms(home: Home, outbox: Outbox, clock: Clock):
    said = f"I wrote to {PII} and to jordan.blake, as asked."
    item = esc(clock, local_answer=said, mapping={PLACEHOLDER: PII, "<PERSON_1>": "jordan.blake"})
    outbox.enqueue(item)
    stored = outbox.get(item.id)
    assert stored is not None
    assert stored.local_answer == f"I wrote to {PLACEHOLDER} and to <PERSON_1>, as asked."
    assert rehydrate(stored.local_answer, outbox.mapping(item.id)) == said
    files = [home.state_db, home.state_db.with_name("state.db-wal")]
    assert PII.encode() not in b"".join(p.read_bytes() for p in files if p.exists())


def test_tampered_or_moved_blob_is_refused(home: Home, outbox: Outbox, clock: Clock):
    a, b = esc(clock), esc(clock, mapping={"<PHONE_1>": "+44 20 7946 0958"})
    outbox.enqueue_many([a, b])
    with sqlite3.connect(home.state_db) as conn:
        sealed = conn.execute("SELECT mapping_sealed FROM outbox WHERE id = ?", (a.id,)).fetchone()
        conn.execute("UPDATE outbox SET mapping_sealed = ? WHERE id = ?", (sealed[0], b.id))
        flipped = bytearray(sealed[0])
        flipped[-1] ^= 1
        conn.execute("UPDATE outbox SET mapping_sealed = ? WHERE id = ?", (bytes(flipped), a.id))
    for item_id in (a.id, b.id):
        with pytest.raises(OutboxError, match="does not authenticate"):
            outbox.mapping(item_id)


def test_cipher_round_trip_and_bad_blobs(home: Home):
    cipher = MapCipher(home)
    one = cipher.seal("id-1", {"<A>": "secret"})
    assert cipher.open("id-1", one) == {"<A>": "secret"}
    assert cipher.seal("id-1", {"<A>": "secret"}) != one  # fresh nonce each time
    with pytest.raises(OutboxError, match="does not authenticate"):
        cipher.open("id-2", one)
    with pytest.raises(OutboxError, match="truncated"):
        cipher.open("id-1", one[:20])
    assert MapCipher(home).open("id-1", one) == {"<A>": "secret"}  # same key from the file


@pytest.mark.parametrize(
    ("mode", "size", "message"),
    [(0o644, 32, "accessible to group or others"), (0o600, 31, "not a 32-byte outbox key")],
)
def test_bad_key_file_is_refused(home: Home, outbox: Outbox, clock, mode, size, message):
    item = esc(clock)
    outbox.enqueue(item)
    key = home.root / "outbox.key"
    if size != 32:
        key.write_bytes(key.read_bytes()[:size])
    os.chmod(key, mode)
    with Outbox(home, OutboxSettings(), clock=clock) as fresh:
        with pytest.raises(OutboxError, match=message):
            fresh.mapping(item.id)
        with pytest.raises(OutboxError, match=message):
            fresh.enqueue(esc(clock))


def test_key_creation_race_yields_one_key(home: Home):
    ciphers = [MapCipher(home) for _ in range(6)]
    blobs: list[bytes] = []
    barrier = threading.Barrier(len(ciphers))

    def seal(c: MapCipher) -> None:
        barrier.wait()
        blobs.append(c.seal("id", {"<A>": "v"}))

    threads = [threading.Thread(target=seal, args=(c,)) for c in ciphers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = MapCipher(home)
    assert all(reader.open("id", b) == {"<A>": "v"} for b in blobs)
    assert [p.name for p in home.root.iterdir() if "outbox.key" in p.name] == ["outbox.key"]
