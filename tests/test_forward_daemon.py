"""The daemon with a real outbox and a fake upstream: escalate, queue, drain, fetch the answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.settings import Settings, SyncSettings, UpstreamSettings
from appliance.tokens import TokenStore
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon
from tests.fake_upstream import FakeUpstream
from tests.helpers import wait_until

EMAIL = "ana.ruiz@example.com"
PROMPT = f"Write to {EMAIL} that the crane is fixed."
POLICY = """
schema = 1
name = "forward-daemon"
default_class = "public"
[classes.personal]
pii = ["EMAIL"]
egress = "redacted"
[classes.public]
egress = "allowed"
[cascade]
confidence_threshold = 1.0
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key="sk-daemon-key") as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("forward-daemon")
    key, policy = root / "upstream.key", root / "policy.toml"
    key.write_text("sk-daemon-key\n")
    policy.write_text(POLICY)
    settings = Settings(
        upstreams=[
            UpstreamSettings(
                name="cloud",
                kind="openai",
                base_url=fake.url,
                model="big-model",
                api_key_file=str(key),
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


def _chat(daemon: Daemon, token: str) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )


def _escalation(daemon: Daemon, ident: str, token: str) -> httpx.Response:
    return httpx.get(
        f"{daemon.url}/v1/escalations/{ident}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def test_escalated_now_queued_when_down_and_delivered_when_back(daemon: Daemon, fake: FakeUpstream):
    monitor = daemon.app.state.forwarding.monitor
    wait_until(lambda: monitor.is_up("cloud"), timeout=15.0)
    now = _chat(daemon, daemon.infer_token)
    assert now.headers["X-Appliance-Route"] == "escalated"
    assert (
        now.json()["choices"][0]["message"]["content"]
        == f"upstream: Write to {EMAIL} that the crane is fixed."
    )
    sent = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    assert EMAIL not in str(sent[-1].body) and "<EMAIL_1>" in str(sent[-1].body)

    fake.down()
    wait_until(lambda: not monitor.is_up("cloud"), timeout=15.0)
    queued = _chat(daemon, daemon.infer_token)
    assert queued.headers["X-Appliance-Route"] == "queued"
    ident = queued.headers["X-Appliance-Escalation-Id"]
    pending = _escalation(daemon, ident, daemon.infer_token).json()
    assert pending["state"] in ("queued", "sending") and "answer" not in pending

    fake.up()
    wait_until(
        lambda: _escalation(daemon, ident, daemon.infer_token).json()["state"] == "done",
        timeout=15.0,
    )
    done = _escalation(daemon, ident, daemon.infer_token).json()
    assert done["answer"]["content"] == f"upstream: Write to {EMAIL} that the crane is fixed."
    assert done["answer"]["usage"]["total_tokens"] > 0
    assert fake.accepted_keys[ident] == 1

    other = TokenStore(daemon.home).create("another-device", "infer")
    assert _escalation(daemon, ident, other).status_code == 404  # not its escalation
    assert _escalation(daemon, ident, daemon.admin_token).status_code == 200
    assert _escalation(daemon, "no-such-id", daemon.infer_token).status_code == 404


def test_the_outbox_never_holds_the_pii_in_clear(daemon: Daemon):
    for path in Path(daemon.home.root).glob("state.db*"):
        assert EMAIL.encode() not in path.read_bytes(), path.name
