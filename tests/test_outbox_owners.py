"""Leases of senders that died: taken back at once, and only when the holder is certainly gone.

A lease must outlast the longest upstream request (minutes), so a daemon killed with a
request in flight would otherwise leave its items waiting that long after a restart. The
owner name says which process on which boot of which host holds the lease; items of a
process that no longer exists, or of an earlier boot, are queued again at once. Anything
uncertain (a living process, another host, an owner in the old format) waits for the lease.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest

from appliance.forward.engine import SyncEngine
from appliance.home import Home
from appliance.outbox import Outbox, owners
from appliance.policy.load import default_policy
from appliance.settings import OutboxSettings, Settings, UpstreamSettings
from appliance.tco.ledger import Ledger
from appliance.upstream import UplinkMonitor
from tests.test_outbox_store import Clock, esc


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _owner(
    pid: int,
    token: str = "feedc0de",
    boot: str | None = None,
    host: str | None = None,
    namespace: str | None = None,
) -> str:
    boot = owners._boot_id() if boot is None else boot
    host = owners._host() if host is None else host
    namespace = owners._pid_namespace() if namespace is None else namespace
    return f"daemon-{pid}-{token}@{host}/{boot}.{namespace}"


def test_this_process_and_living_processes_are_not_gone():
    assert not owners.is_gone(owners.new_owner("daemon"))
    assert not owners.is_gone(owners.new_owner("daemon") + "/now")  # the escalator's
    assert not owners.is_gone(_owner(os.getppid()))  # a process that exists


def test_a_dead_process_an_earlier_boot_and_a_reused_pid_are_gone():
    assert owners.is_gone(_owner(_dead_pid()))
    assert owners.is_gone(_owner(_dead_pid()) + "/now")
    assert owners.is_gone(_owner(os.getppid(), boot="00000000"))  # the machine restarted
    assert owners.is_gone(_owner(os.getpid(), token="0ther000"))  # our pid, an earlier daemon


@pytest.mark.parametrize(
    "owner",
    [
        "daemon-1-abcdef12",  # the old format: no host, no boot
        "s1",
        "",
        "daemon-x-abc@host/boot",
        "@",
    ],
)
def test_owners_that_cannot_be_judged_wait_for_their_lease(owner: str):
    assert not owners.is_gone(owner)


def test_another_host_is_never_judged():
    assert not owners.is_gone(_owner(_dead_pid(), host="another-box"))
    assert not owners.is_gone(_owner(_dead_pid(), host="another-box", boot="00000000"))


def test_another_pid_namespace_is_never_judged():
    """A container sharing the state file counts its own pids: an absent pid says nothing."""
    assert not owners.is_gone(_owner(_dead_pid(), namespace="1"))
    assert not owners.is_gone(_owner(os.getpid(), token="0ther000", namespace="1"))
    assert owners.is_gone(_owner(_dead_pid(), namespace="1", boot="00000000"))  # rebooted


@pytest.fixture
def outbox(home: Home) -> Iterator[tuple[Outbox, Clock]]:
    clock = Clock()
    o = Outbox(home, OutboxSettings(ttl_s=3600, lease_s=600), clock=clock)
    yield o, clock
    o.close()


def test_items_of_a_dead_sender_are_queued_again_at_once(outbox: tuple[Outbox, Clock]):
    box, clock = outbox
    dead, alive, old = _owner(_dead_pid()), owners.new_owner("daemon"), "daemon-1-abcdef12"
    items = {who: esc(clock) for who in (dead, alive, old)}
    for who, item in items.items():
        assert box.enqueue_leased(item, who, 600)
    assert box.claim("rescuer", 10) == []  # every lease is live for ten minutes

    back = box.reclaim_gone()
    assert [i.id for i in back] == [items[dead].id]
    assert back[0].lease_owner == dead  # as it was when its sender stopped
    again = box.get(items[dead].id)
    assert again is not None
    assert (again.state, again.lease_owner) == ("queued", None)
    assert again.last_error == "its sender stopped with the request in flight"
    assert box.reclaim_gone() == []  # nothing twice

    taken = box.claim("rescuer", 10)
    assert [i.id for i in taken] == [items[dead].id]
    assert taken[0].attempts == 2  # the cut attempt counts
    for who in (alive, old):  # still theirs
        kept = box.get(items[who].id)
        assert kept is not None and (kept.state, kept.lease_owner) == ("sending", who)


def test_the_drain_takes_them_back_and_ledgers_the_cut_attempt(home: Home):
    """The engine looks for dead senders each round (at most every few seconds); the cut
    request may have been billed, so it is in the ledger as an estimate."""
    upstream = UpstreamSettings(
        name="cloud",
        kind="openai",
        base_url="http://127.0.0.1:9",
        model="m",
        price_input_per_mtok=2.5,
        price_output_per_mtok=10.0,
    )
    settings = Settings(upstreams=[upstream], outbox=OutboxSettings(lease_s=600))
    clock = Clock()
    box = Outbox(home, settings.outbox, clock=clock)
    ledger = Ledger(home, settings)
    try:
        item = esc(clock, upstream="cloud")
        box.enqueue_leased(item, _owner(_dead_pid()), 600)
        engine = SyncEngine(
            box, {}, UplinkMonitor({}, settings.sync), settings, default_policy, "e", ledger=ledger
        )
        assert asyncio.run(engine.reclaim_gone()) == 1
        assert asyncio.run(engine.reclaim_gone(every_s=0)) == 0
        ledger.flush()
        with sqlite3.connect(home.state_db) as conn:
            found = conn.execute(
                "SELECT route, api_cost_usd FROM tco_ledger WHERE request_id = ?", (item.id,)
            ).fetchall()
        assert len(found) == 1 and found[0][0] == "upstream-estimated" and found[0][1] > 0
    finally:
        ledger.close()
        box.close()
