"""Money: each escalation reaches the upstream once, and every request sent is in the ledger.

The real daemon escalates to a fake upstream that records every request with its
``Idempotency-Key`` (the escalation id). The major chat APIs do not deduplicate on that key,
so a second request for one escalation is a second bill: the fake's log is the bill.

Cases: the upstream answers at once, after 0.5 s and after 2 s (``prefer`` and the cascade,
several requests at once while the outbox drain runs every 0.1 s); it answers after the
device stopped waiting (the request is not cancelled: it lands, once, and is kept for the
escalation id); it never answers within the client's deadline (then one retry by the drain,
and both attempts in the ledger, the first as an estimate); the outbox is full (never a
500: the local answer stands, and the body says why).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.api.app import create_app
from appliance.api.server import BackgroundServer
from appliance.governance.escalation import Escalation
from appliance.outbox import Outbox
from appliance.settings import (
    OutboxSettings,
    ServerSettings,
    Settings,
    SyncSettings,
    UpstreamSettings,
)
from appliance.state import utc_now
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon
from tests.fake_upstream import FakeUpstream
from tests.helpers import wait_until

DEVICE_WAIT_S = 8.0  # server.request_timeout_s: how long a device waits for an answer
CLIENT_TIMEOUT_S = 12.0  # sync.request_timeout_s: the upstream client's own deadline

CASCADE_POLICY = """
schema = 1
name = "always-escalate"
default_class = "public"
[classes.public]
egress = "allowed"
[cascade]
confidence_threshold = 1.0
"""


def _settings(fake: FakeUpstream, root: Path, **outbox: Any) -> Settings:
    key = root / "upstream.key"
    key.write_text("sk-once\n")
    policy = root / "policy.toml"
    policy.write_text(CASCADE_POLICY)
    return Settings(
        server=ServerSettings(request_timeout_s=DEVICE_WAIT_S),
        upstreams=[
            UpstreamSettings(
                name="cloud",
                kind="openai",
                base_url=fake.url,
                model="big-model",
                api_key_file=str(key),
                price_input_per_mtok=2.5,
                price_output_per_mtok=10.0,
            )
        ],
        sync=SyncSettings(
            probe_interval_s=0.2,
            interval_s=0.1,
            backoff_base_s=0.1,
            backoff_max_s=0.5,
            request_timeout_s=CLIENT_TIMEOUT_S,
        ),
        outbox=OutboxSettings(**outbox),
        policy_file=str(policy),
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key="sk-once") as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("once")
    d = start_daemon(root / "home", gemma_source(root), _settings(fake, root))
    wait_until(lambda: d.app.state.forwarding.monitor.is_up("cloud"))
    yield d
    d.server.stop()


@pytest.fixture(autouse=True)
def _no_latency(fake: FakeUpstream) -> Iterator[None]:
    yield
    fake.latency_s = 0.0


def _ask(daemon: Daemon, text: str, escalate: str) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 3,
            "appliance": {"escalate": escalate},
        },
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=60,
    )


def _sent_per_key(fake: FakeUpstream) -> Counter[str]:
    return Counter(
        r.headers.get("idempotency-key", "")
        for r in fake.requests
        if r.method == "POST" and r.path.endswith("/chat/completions")
    )


def _ledger_rows(daemon: Daemon, ident: str) -> list[tuple[str, float]]:
    daemon.app.state.forwarding.ledger.flush()
    with sqlite3.connect(daemon.home.state_db) as conn:
        return conn.execute(
            "SELECT route, api_cost_usd FROM tco_ledger WHERE kind = 'upstream' "
            "AND request_id = ? ORDER BY id",
            (ident,),
        ).fetchall()


def _state(daemon: Daemon, ident: str) -> str:
    response = httpx.get(
        f"{daemon.url}/v1/escalations/{ident}",
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=30,
    )
    return str(response.json()["state"])


@pytest.mark.parametrize("latency_s", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("escalate", ["prefer", "auto"])
def test_each_escalation_is_sent_once(daemon, fake, latency_s: float, escalate: str):
    fake.latency_s = latency_s
    texts = [f"Name a colour for crate {uuid.uuid4().hex[:6]}." for _ in range(4)]
    with ThreadPoolExecutor(len(texts)) as pool:
        responses = list(pool.map(lambda t: _ask(daemon, t, escalate), texts))
    idents = []
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.headers["X-Appliance-Route"] == "escalated"
        idents.append(response.headers["X-Appliance-Escalation-Id"])
    time.sleep(0.5)  # a few drain rounds: a duplicate would go out now
    sent = _sent_per_key(fake)
    assert {ident: sent[ident] for ident in idents} == dict.fromkeys(idents, 1)
    for ident in idents:
        [(route, cost)] = _ledger_rows(daemon, ident)
        assert route == "upstream" and cost > 0


def test_an_answer_slower_than_the_device_waits_lands_once(daemon, fake):
    fake.latency_s = DEVICE_WAIT_S + 1.5  # past the device's wait, within the client's
    response = _ask(daemon, "Which valve leaks?", "prefer")
    assert response.status_code == 200
    assert response.headers["X-Appliance-Route"] == "queued"  # the local answer, now
    ident = response.headers["X-Appliance-Escalation-Id"]
    wait_until(lambda: _state(daemon, ident) == "done")
    time.sleep(0.5)
    assert _sent_per_key(fake)[ident] == 1  # not cancelled, not sent again by the drain
    assert [route for route, _ in _ledger_rows(daemon, ident)] == ["upstream"]


def test_a_request_that_times_out_is_retried_once_and_both_are_in_the_ledger(daemon, fake):
    fake.timeout(CLIENT_TIMEOUT_S + 5)  # the first request is read and never answered
    response = _ask(daemon, "Which pump is loud?", "prefer")
    assert response.headers["X-Appliance-Route"] == "queued"
    ident = response.headers["X-Appliance-Escalation-Id"]
    wait_until(lambda: _state(daemon, ident) == "done", timeout=CLIENT_TIMEOUT_S + 20)
    time.sleep(0.5)
    assert _sent_per_key(fake)[ident] == 2  # the timed-out attempt and one retry
    rows = _ledger_rows(daemon, ident)
    assert [route for route, _ in rows] == ["upstream-estimated", "upstream"]
    assert all(cost > 0 for _, cost in rows)


def test_report_counts_what_the_upstream_was_sent(daemon, fake):
    """Every request the fake received is a row in the ledger (none billed unseen)."""
    daemon.app.state.forwarding.ledger.flush()
    sent = sum(_sent_per_key(fake).values())
    with sqlite3.connect(daemon.home.state_db) as conn:
        [(rows,)] = conn.execute("SELECT COUNT(*) FROM tco_ledger WHERE kind = 'upstream'")
    assert rows == sent


def _filler(upstream: str) -> Escalation:
    return Escalation(
        id=str(uuid.uuid4()),
        created_at=utc_now(),
        upstream=upstream,
        endpoint="chat",
        messages=({"role": "user", "content": "filler"},),
        mapping={},
    )


@pytest.mark.parametrize("escalate", ["prefer", "auto"])
def test_a_full_outbox_never_gives_a_500(
    tmp_path: Path, fake: FakeUpstream, escalate: str, monkeypatch: pytest.MonkeyPatch
):
    root = tmp_path
    settings = _settings(fake, root, max_items=2)
    daemon = start_daemon(root / "home", gemma_source(root), settings)
    try:
        wait_until(lambda: daemon.app.state.forwarding.monitor.is_up("cloud"))
        with Outbox(daemon.home, settings.outbox) as outbox:  # kept for an absent upstream
            outbox.enqueue_many([_filler("elsewhere"), _filler("elsewhere")])
        before = sum(_sent_per_key(fake).values())
        for _ in range(2):
            response = _ask(daemon, "Is the gate shut?", escalate)
            assert response.status_code == 200, response.text
            assert response.headers["X-Appliance-Route"] == "local"
            note = response.json()["appliance"]["note"]
            assert note.startswith("escalation unavailable: ") and "full" in note
        assert sum(_sent_per_key(fake).values()) == before  # nothing unrecorded went out
    finally:
        daemon.server.stop()


def test_a_restart_with_a_send_in_flight_sends_it_at_most_once_more(
    tmp_path: Path, fake: FakeUpstream
):
    """The daemon stops while the upstream holds a request: the cut attempt is in the
    ledger as an estimate, and the next daemon sends the escalation once more, not twice."""
    root = tmp_path
    settings = _settings(fake, root)
    # the client would wait longer than a stopping daemon does: the stop cuts the request
    settings = settings.model_copy(
        update={"sync": settings.sync.model_copy(update={"request_timeout_s": 60.0})}
    )
    source = gemma_source(root)
    first = start_daemon(root / "home", source, settings)
    try:
        wait_until(lambda: first.app.state.forwarding.monitor.is_up("cloud"))
        fake.timeout(60)  # read, never answered while the first daemon lives
        response = _ask(first, "Is the boiler warm?", "prefer")
        assert response.headers.get("X-Appliance-Route") == "queued", response.text
        ident = response.headers["X-Appliance-Escalation-Id"]
        assert _sent_per_key(fake)[ident] == 1
    finally:
        first.server.stop()
    assert [route for route, _ in _ledger_rows(first, ident)] == ["upstream-estimated"]

    app = create_app(first.home, settings)  # the same home, bundle and tokens
    second = Daemon(first.home, app, BackgroundServer(app), first.infer_token)
    second.server.start()
    try:
        wait_until(lambda: _state(second, ident) == "done")
        time.sleep(0.5)
        assert _sent_per_key(fake)[ident] == 2
        assert [route for route, _ in _ledger_rows(second, ident)] == [
            "upstream-estimated",
            "upstream",
        ]
    finally:
        second.server.stop()
