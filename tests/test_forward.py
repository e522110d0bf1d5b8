"""Draining the outbox to a fake upstream over real HTTP: retries, failures, budgets, golden set."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.forward.wiring import Forwarding, build
from appliance.governance.escalation import Escalation
from appliance.home import Home
from appliance.policy.load import parse_policy
from appliance.settings import Settings, SyncSettings, UpstreamSettings
from appliance.state import utc_now
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream

POLICY = """
schema = 1
name = "forward-test"
default_class = "public"
[classes.public]
egress = "allowed"
{budget}
"""
EMAIL = "kim.lee@example.net"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key="sk-test-key") as server:
        yield server


def _settings(fake: FakeUpstream, key_file: Path, trainable: bool = True) -> Settings:
    key_file.write_text("sk-test-key\n")
    upstream = UpstreamSettings(
        name="cloud",
        kind="openai",
        base_url=fake.url,
        model="big-model",
        api_key_file=str(key_file),
        price_input_per_mtok=2.0,
        price_output_per_mtok=10.0,
        trainable=trainable,
    )
    sync = SyncSettings(backoff_base_s=0.05, backoff_max_s=0.1, request_timeout_s=2)
    return Settings(upstreams=[upstream], sync=sync)


def _item(text: str = "Reply to <EMAIL_1> about order 7", priority: int = 0) -> Escalation:
    return Escalation(
        id=str(uuid.uuid4()),
        created_at=utc_now(),
        upstream="cloud",
        endpoint="chat",
        messages=({"role": "user", "content": text},),
        mapping={"<EMAIL_1>": EMAIL},
        max_tokens=32,
        model="gemma3-270m",
        device="edge-1",
        local_answer="a local guess",
        confidence=0.2,
        priority=priority,
    )


def _forwarding(home: Home, settings: Settings, budget: str = "") -> Forwarding:
    policy = parse_policy(POLICY.format(budget=budget))
    return build(home, settings, lambda: policy, "test")


async def _drain(f: Forwarding):
    await f.monitor.probe_due()
    try:
        return await f.engine.drain_once()
    finally:
        await f.aclose()


def test_queued_items_reach_the_upstream_once_each_with_their_idempotency_key(
    home: Home, fake: FakeUpstream, tmp_path: Path
):
    f = _forwarding(home, _settings(fake, tmp_path / "key"))
    items = [_item(priority=p) for p in (0, 5, 1)]
    for item in items:
        f.outbox.enqueue(item)
    report = asyncio.run(_drain(f))
    assert (report.sent, report.retried, report.failed) == (3, 0, 0)
    chats = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    assert [r.headers["idempotency-key"] for r in chats] == [items[1].id, items[2].id, items[0].id]
    assert all(EMAIL not in json.dumps(r.body) for r in chats)  # placeholders only
    assert f.outbox.counts()["done"] == 3
    result = f.outbox.result(items[0].id)
    assert result is not None and result.text == "upstream: Reply to <EMAIL_1> about order 7"
    assert result.cost_usd == pytest.approx((PROMPT_TOKENS * 2 + COMPLETION_TOKENS * 10) / 1e6)


def test_retryable_failures_wait_and_permanent_ones_fail(
    home: Home, fake: FakeUpstream, tmp_path: Path
):
    settings = _settings(fake, tmp_path / "key")
    f = _forwarding(home, settings)
    busy, throttled, bad = _item(), _item(), _item()
    for item in (busy, throttled, bad):
        f.outbox.enqueue(item)
    fake.fail(503)
    fake.fail(429, retry_after=30)
    fake.fail(400)
    started = datetime.now(UTC)
    report = asyncio.run(_drain(f))
    assert (report.sent, report.retried, report.failed) == (0, 2, 1)
    states = {i.id: f.outbox.get(i.id) for i in (busy, throttled, bad)}
    assert states[bad.id].state == "failed" and "400" in states[bad.id].last_error
    assert states[busy.id].state == "queued" and states[busy.id].attempts == 1
    waits = sorted(
        datetime.fromisoformat(states[i.id].next_attempt_at.replace("Z", "+00:00")) - started
        for i in (busy, throttled)
    )
    assert waits[0] < timedelta(seconds=1)  # backoff (0.05-0.1 s here)
    assert waits[1] >= timedelta(seconds=29)  # Retry-After honoured


def test_a_lost_answer_is_sent_again_and_accepted_once(
    home: Home, fake: FakeUpstream, tmp_path: Path
):
    f = _forwarding(home, _settings(fake, tmp_path / "key"))
    item = _item()
    f.outbox.enqueue(item)
    fake.lose_answer()  # the upstream did the work, the answer never arrived
    first = asyncio.run(_drain(f))
    assert first.retried == 1
    asyncio.run(asyncio.sleep(0.15))
    f = _forwarding(home, _settings(fake, tmp_path / "key"))
    second = asyncio.run(_drain(f))
    assert second.sent == 1
    assert fake.accepted_keys[item.id] == 1  # idempotency: charged once
    assert f.outbox.get(item.id).state == "done"


def test_the_daily_budget_stops_escalations(home: Home, fake: FakeUpstream, tmp_path: Path):
    settings = _settings(fake, tmp_path / "key")
    budget = "[budgets]\ndaily_usd = 0.0001"  # one answer costs 0.000092, two exceed it
    f = _forwarding(home, settings, budget)
    for _ in range(3):
        f.outbox.enqueue(_item())
    first = asyncio.run(_drain(f))
    assert first.sent >= 1
    f = _forwarding(home, settings, budget)
    while True:
        report = asyncio.run(_drain(f))
        f = _forwarding(home, settings, budget)
        if report.waiting or report.sent == 0:
            break
    assert report.waiting is not None and "daily budget" in report.waiting
    assert f.outbox.counts()["queued"] >= 1


def test_a_round_sends_several_items_at_once(home: Home, fake: FakeUpstream, tmp_path: Path):
    """A real API takes seconds per answer: sends overlap, up to sync.concurrency."""
    settings = _settings(fake, tmp_path / "key")
    settings = settings.model_copy(
        update={"sync": settings.sync.model_copy(update={"batch": 8, "concurrency": 3})}
    )
    f = _forwarding(home, settings)
    for _ in range(8):
        f.outbox.enqueue(_item())
    client = f.clients["cloud"]
    original = client.complete
    now, most = 0, 0

    async def slow_complete(item):  # the real client, held open a moment like a real API
        nonlocal now, most
        now += 1
        most = max(most, now)
        try:
            await asyncio.sleep(0.05)
            return await original(item)
        finally:
            now -= 1

    client.complete = slow_complete  # type: ignore[method-assign]
    report = asyncio.run(_drain(f))
    assert report.sent == 8 and most == 3
    assert f.outbox.counts()["done"] == 8


def test_no_uplink_means_nothing_is_taken(home: Home, fake: FakeUpstream, tmp_path: Path):
    fake.down()
    f = _forwarding(home, _settings(fake, tmp_path / "key"))
    f.outbox.enqueue(_item())
    report = asyncio.run(_drain(f))
    assert report.waiting == "no uplink is up" and report.sent == 0
    assert f.outbox.counts()["queued"] == 1


def _cli(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "APPLIANCE_HOME": str(home.root)},
        timeout=60,
    )


def _config(home: Home, fake: FakeUpstream, key: Path, trainable: bool) -> None:
    key.write_text("sk-test-key\n")
    (home.root / "config.toml").write_text(
        f'[[upstreams]]\nname = "cloud"\nkind = "openai"\nbase_url = "{fake.url}"\n'
        f'model = "big-model"\napi_key_file = "{key}"\ntrainable = {str(trainable).lower()}\n'
    )


def test_sync_once_and_distill_export_from_the_cli(home: Home, fake: FakeUpstream, tmp_path: Path):
    _config(home, fake, tmp_path / "key", trainable=True)
    f = _forwarding(home, _settings(fake, tmp_path / "key"))
    twins = [_item("same question"), _item("same question"), _item("other question")]
    for item in twins:
        f.outbox.enqueue(item)
    synced = _cli(home, "sync", "--once", "--json")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["sent"] == 3
    out = tmp_path / "golden.jsonl"
    exported = _cli(home, "distill", "export", "--out", str(out), "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["duplicates"] == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["messages"][-1] == {"role": "assistant", "content": "upstream: same question"}
    _config(home, fake, tmp_path / "key", trainable=False)
    barred = json.loads(_cli(home, "distill", "export", "--out", str(out), "--json").stdout)
    assert (barred["written"], barred["not_trainable"]) == (0, 3)
    assert out.read_text() == ""


def test_sync_without_upstreams_is_a_clear_error(home: Home):
    result = _cli(home, "sync", "--once")
    assert result.returncode == 1
    assert "no [[upstreams]]" in result.stderr
