"""`GET /metrics`: Prometheus text from the real daemon, counting what actually happened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance import __version__
from appliance.api.app import create_app
from appliance.api.server import BackgroundServer, free_port
from appliance.bundles.installer import BundleManager
from appliance.errors import BundleError
from appliance.home import Home
from appliance.settings import Settings, SyncSettings, UpstreamSettings
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon
from tests.helpers import make_bundle, make_key

EMAIL = "quinn.harlow@example.com"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("metrics-daemon")
    d = start_daemon(root / "home", gemma_source(root), Settings())
    yield d
    d.server.stop()


def _scrape(daemon: Daemon) -> tuple[str, dict[tuple[str, tuple], float]]:
    response = httpx.get(f"{daemon.url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    return response.text, samples


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_tokens_latency_and_decisions_are_counted(daemon: Daemon):
    _, before = _scrape(daemon)
    headers = {"Authorization": f"Bearer {daemon.infer_token}"}
    chat = httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Say hi to {EMAIL}."}],
            "max_tokens": 4,
        },
        headers=headers,
        timeout=120,
    )
    assert chat.status_code == 200
    usage = chat.json()["usage"]
    assert httpx.get(f"{daemon.url}/v1/models", timeout=30).status_code == 401
    assert httpx.get(f"{daemon.url}/v1/escalations/nope-{EMAIL}", timeout=30).status_code == 401

    text, after = _scrape(daemon)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    route = "/v1/chat/completions"
    assert delta("appliance_http_requests_total", route=route, status="200") == 1
    assert delta("appliance_http_requests_total", route="/v1/models", status="401") == 1
    assert delta("appliance_http_request_duration_seconds_count", route=route) == 1
    assert delta("appliance_prompt_tokens_total", model=MODEL) == usage["prompt_tokens"]
    assert delta("appliance_generated_tokens_total", model=MODEL) == usage["completion_tokens"]
    assert delta("appliance_time_to_first_token_seconds_count", model=MODEL) == 1
    assert delta("appliance_time_per_output_token_seconds_count", model=MODEL) == 1
    assert delta("appliance_routing_decisions_total", route="local") == 1
    assert _value(after, "appliance_queue_depth", model=MODEL) == 0
    assert _value(after, "appliance_model_slots", model=MODEL) == 4  # [runtime] slots
    assert _value(after, "appliance_model_slots_busy", model=MODEL) == 0
    assert _value(after, "appliance_model_loaded", model=MODEL, device="cpu") == 1
    assert _value(after, "appliance_info", version=__version__) == 1
    assert _value(after, "process_resident_memory_bytes") > 0
    # Raw paths and request contents never become labels.
    assert EMAIL not in text and "nope-" not in text
    assert 'route="/v1/escalations/{escalation_id}"' in text


def test_a_shared_system_prompt_is_counted_as_reused(daemon: Daemon):
    system = "You are the gate assistant of the north dock. Answer in one short sentence. " * 3
    _, before = _scrape(daemon)
    for question in ("Is the gate open?", "Who has the key?"):
        answer = httpx.post(
            f"{daemon.url}/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                "max_tokens": 2,
            },
            headers={"Authorization": f"Bearer {daemon.infer_token}"},
            timeout=120,
        )
        assert answer.status_code == 200
    _, after = _scrape(daemon)
    name = "appliance_prompt_tokens_reused_total"
    assert _value(after, name, model=MODEL) - _value(before, name, model=MODEL) >= 40


def test_each_upstream_has_an_uplink_gauge(tmp_path: Path):
    """A daemon with an upstream (down: nothing listens there) and no model at all."""
    down = free_port()
    settings = Settings(
        upstreams=[
            UpstreamSettings(
                name="cloud", kind="openai", base_url=f"http://127.0.0.1:{down}/v1", model="m"
            )
        ],
        sync=SyncSettings(probe_interval_s=0.2, interval_s=0.2),
    )
    app = create_app(Home(tmp_path / "home").ensure(), settings)
    with BackgroundServer(app) as server:
        response = httpx.get(f"{server.url}/metrics", timeout=30)
        assert response.status_code == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }
    assert _value(samples, "appliance_uplink_up", upstream="cloud") == 0


def test_bundle_installs_are_counted_by_outcome_and_reason(daemon: Daemon, tmp_path: Path):
    _, before = _scrape(daemon)
    stranger = make_key(tmp_path, "stranger")
    bundle = make_bundle(tmp_path, [stranger], name="unknown-signer")
    manager = BundleManager(daemon.home)
    try:
        with pytest.raises(BundleError):
            manager.install(bundle)
    finally:
        manager.close()
    _, after = _scrape(daemon)
    name = "appliance_bundle_installs_total"
    assert _value(after, name, outcome="accepted", reason="") >= 1  # the demo model
    refused = _value(after, name, outcome="refused", reason="UnknownKeyError")
    assert refused - _value(before, name, outcome="refused", reason="UnknownKeyError") == 1


def test_outbox_depth_is_reported_even_before_any_escalation(daemon: Daemon):
    """No upstream configured, so no outbox table yet: every state is there, at zero."""
    _, samples = _scrape(daemon)
    for state in ("queued", "sending", "done", "failed", "expired"):
        assert samples[("appliance_outbox_items", (("state", state),))] == 0
    assert samples[("appliance_upstream_spend_today_usd", ())] == 0


def test_metrics_from_the_network_need_a_token(daemon: Daemon):
    from fastapi.testclient import TestClient

    client = TestClient(daemon.app, base_url="http://127.0.0.1", client=("203.0.113.11", 4000))
    assert client.get("/metrics").status_code == 401
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {daemon.infer_token}"})
    assert ok.status_code == 200 and "appliance_http_requests_total" in ok.text
