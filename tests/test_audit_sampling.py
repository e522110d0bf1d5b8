"""Audit sampling in the daemon: confident answers that could have left are also sent upstream
at the policy's audit_rate, in the background, and never for a query the policy keeps here.

The real Gemma model, a real outbox, and the stand-in upstream. The cascade threshold is 0, so
every local answer is confident: only audit sampling can send anything upstream.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.calibrate.sampling import AUDIT_PRIORITY, AuditSampler
from appliance.governance.audit import read_audit
from appliance.outbox import Outbox, OutboxItem
from appliance.settings import Settings, SyncSettings, UpstreamSettings
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon
from tests.fake_upstream import FakeUpstream
from tests.helpers import wait_until

EMAIL = "ines.okafor@example.net"
POLICY = """
schema = 1
name = "audit-{rate}"
default_class = "public"

[classes.secret]
keywords = ["top secret"]
egress = "never"

[classes.personal]
pii = ["EMAIL"]
egress = "redacted"

[classes.public]
egress = "allowed"

[cascade]
confidence_threshold = 0.0
audit_rate = {rate}

[budgets]
daily_usd = {budget}
"""
PROMPTS = [
    "The capital of Italy is",
    "Five, six, seven,",
    "The colour of the sky is",
    "Salt and",
    "The first month of the year is",
    "Bread is made from",
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key="sk-audit") as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("audit-daemon")
    key, policy = root / "upstream.key", root / "policy.toml"
    key.write_text("sk-audit\n")
    policy.write_text(POLICY.format(rate=0, budget=5))
    settings = Settings(
        upstreams=[
            UpstreamSettings(
                name="cloud",
                kind="openai",
                base_url=fake.url,
                model="big",
                api_key_file=str(key),
                price_input_per_mtok=2.5,
                price_output_per_mtok=10.0,
            )
        ],
        sync=SyncSettings(
            probe_interval_s=0.2, interval_s=0.2, backoff_base_s=0.1, backoff_max_s=0.5
        ),
        policy_file=str(policy),
    )
    d = start_daemon(root / "home", gemma_source(root), settings)
    yield d
    d.server.stop()


@pytest.fixture
def use_policy(daemon: Daemon):
    path = Path(daemon.app.state.settings.policy_file)

    def switch(rate: float, budget: float = 5.0) -> None:
        path.write_text(POLICY.format(rate=rate, budget=budget))
        daemon.app.state.governor.active.refresh()

    yield switch
    switch(0)


def _complete(daemon: Daemon, prompt: str, **extra: Any) -> httpx.Response:
    response = httpx.post(
        f"{daemon.url}/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": 3, "temperature": 0, **extra},
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response


def _audit_items(daemon: Daemon) -> dict[str, OutboxItem]:
    outbox: Outbox = daemon.app.state.outbox
    return {i.id: i for i in outbox.list(limit=1000) if i.origin == "audit"}


def _new_audit_items(daemon: Daemon, before: dict[str, OutboxItem]) -> list[OutboxItem]:
    return [i for i in _audit_items(daemon).values() if i.id not in before]


def _last_reasons(daemon: Daemon) -> list[str]:
    daemon.app.state.governor.audit.flush()
    return list(read_audit(daemon.home, limit=1)[0]["reasons"])


def test_an_audit_sample_leaves_the_device_answer_alone_and_is_nobodys_escalation(
    daemon: Daemon, use_policy
):
    use_policy(0)
    before = _audit_items(daemon)
    plain = _complete(daemon, PROMPTS[0])
    assert _new_audit_items(daemon, before) == []  # rate 0: none
    use_policy(1.0)
    sampled = _complete(daemon, PROMPTS[0])
    # the device's answer is the local one, unchanged, with no escalation id
    assert sampled.headers["X-Appliance-Route"] == "local"
    assert "X-Appliance-Escalation-Id" not in sampled.headers
    assert sampled.json()["choices"][0]["text"] == plain.json()["choices"][0]["text"]
    assert "escalation_id" not in sampled.json()["appliance"]
    (item,) = _new_audit_items(daemon, before)
    assert item.device is None and item.priority == AUDIT_PRIORITY and item.audit_rate == 1.0
    assert item.local_answer == plain.json()["choices"][0]["text"]
    assert any(r.startswith(f"audit sample {item.id} queued") for r in _last_reasons(daemon))
    # it is sent in the background, paid and answered, and shown to no device
    outbox: Outbox = daemon.app.state.outbox
    wait_until(lambda: outbox.counts()["done"] >= 1 and outbox.get(item.id).state == "done")
    assert outbox.result(item.id) is not None and outbox.result(item.id).cost_usd > 0
    device = httpx.get(
        f"{daemon.url}/v1/escalations/{item.id}",
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=30,
    )
    assert device.status_code == 404


def test_a_redacted_query_is_sampled_as_it_would_leave_and_keeps_no_map(daemon: Daemon, use_policy):
    use_policy(1.0)
    before = _audit_items(daemon)
    response = _complete(daemon, f"Write to {EMAIL} that the parcel")
    assert response.headers["X-Appliance-Route"] == "local"
    (item,) = _new_audit_items(daemon, before)
    assert EMAIL not in item.messages[0]["content"] and "<EMAIL_1>" in item.messages[0]["content"]
    assert EMAIL not in (item.local_answer or "")
    assert daemon.app.state.outbox.mapping(item.id) == {}  # never re-hydrated for anyone
    outbox: Outbox = daemon.app.state.outbox
    wait_until(lambda: outbox.get(item.id).state == "done")
    admin = httpx.get(
        f"{daemon.url}/v1/escalations/{item.id}",
        headers={"Authorization": f"Bearer {daemon.admin_token}"},
        timeout=30,
    ).json()
    assert EMAIL not in str(admin) and "<EMAIL_1>" in admin["answer"]["content"]


def test_never_for_a_query_the_policy_or_the_device_keeps_on_the_box(daemon: Daemon, use_policy):
    use_policy(1.0)
    before = _audit_items(daemon)
    secret = _complete(daemon, "The top secret launch code is")
    assert secret.headers["X-Appliance-Route"] == "local"
    kept = _complete(daemon, PROMPTS[1], appliance={"escalate": "never"})
    assert kept.headers["X-Appliance-Route"] == "local"
    assert _new_audit_items(daemon, before) == []
    assert not any("audit sample" in r for r in _last_reasons(daemon))


def test_the_rate_is_drawn_from_a_seeded_generator(daemon: Daemon, use_policy):
    use_policy(0.5)
    daemon.app.state.governor.audit_sampler = AuditSampler(seed=11)
    expected = random.Random(11)
    wanted = {p for p in PROMPTS if expected.random() < 0.5}  # one draw per eligible query
    assert 0 < len(wanted) < len(PROMPTS)
    before = _audit_items(daemon)
    for prompt in PROMPTS:
        assert _complete(daemon, prompt).headers["X-Appliance-Route"] == "local"
    sampled = {i.messages[0]["content"] for i in _new_audit_items(daemon, before)}
    assert sampled == wanted
    assert {i.audit_rate for i in _new_audit_items(daemon, before)} == {0.5}


def test_none_once_the_daily_budget_is_spent(daemon: Daemon, use_policy):
    use_policy(1.0, budget=0)  # 0: no paid escalation at all
    before = _audit_items(daemon)
    response = _complete(daemon, PROMPTS[2])
    assert response.headers["X-Appliance-Route"] == "local"
    assert _new_audit_items(daemon, before) == []
    assert any(
        r.startswith("audit sample skipped: the daily budget") for r in _last_reasons(daemon)
    )
