"""The TCO ledger and `appliance report tco`: every figure against a hand-computed ledger."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from appliance.cli import main
from appliance.home import Home
from appliance.policy.load import parse_policy
from appliance.settings import Settings, TcoSettings, UpstreamSettings
from appliance.tco import report
from appliance.tco.ledger import GpuPower, Ledger
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon

POLICY = parse_policy(
    'schema = 1\nname = "tco"\ndefault_class = "c"\n[classes.c]\negress = "never"\n'
)
SETTINGS = Settings(
    upstreams=[
        UpstreamSettings(
            name="cloud",
            kind="openai",
            base_url="http://127.0.0.1:9/v1",
            model="m",
            price_input_per_mtok=2.0,
            price_output_per_mtok=10.0,
        )
    ],
    # 0.36 USD/h of hardware + 100 W at 0.20 USD/kWh = 0.38 USD per hour of compute
    tco=TcoSettings(
        hardware_usd_per_hour=0.36, power_watts=100, electricity_usd_per_kwh=0.20, gpu_power=False
    ),
)


def _ledger(home: Home, stamps: list[str], settings: Settings = SETTINGS) -> Ledger:
    times = iter(stamps)
    return Ledger(home, settings, clock=lambda: next(times))


def _request(ledger: Ledger, route: str, prompt: int, completion: int, seconds: float) -> None:
    ledger.request(
        POLICY,
        request_id=f"r-{route}",
        model="gemma",
        route=route,
        device="cam-1",
        upstream=None,
        prompt_tokens=prompt,
        completion_tokens=completion,
        seconds=seconds,
    )


def _fill(home: Home) -> None:
    day = "2030-05-0{}T10:00:0{}Z"
    stamps = [day.format(1 + i // 3, i % 3) for i in range(6)]
    ledger = _ledger(home, stamps)
    _request(ledger, "local", 100, 50, 2.0)
    _request(ledger, "queued", 200, 100, 3.0)
    _request(ledger, "escalated", 80, 20, 1.0)  # its local attempt was not served
    _request(ledger, "refused", 50, 10, 0.5)
    for request_id, prompt, completion, cost in (
        ("r3", 300, 150, 0.0021),
        ("r2", 400, 200, 0.0028),
    ):
        ledger.upstream_answer(
            POLICY,
            request_id=request_id,
            upstream="cloud",
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
        )
    ledger.close()


def _report(capsys, *args: str) -> dict:
    assert main(["report", "tco", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_figure_matches_the_hand_computed_ledger(home: Home, capsys):
    _fill(home)
    r = _report(capsys)
    assert r["requests"] == {"local": 1, "queued": 1, "escalated": 1, "refused": 1}
    # served locally: the local and the queued request (the device got the local answer)
    assert r["served_locally"] == {"requests": 2, "tokens": 150 + 300}
    # at the API: (100*2 + 50*10)/1e6 + (200*2 + 100*10)/1e6 = 0.0007 + 0.0014
    assert r["api_cost_avoided_usd"] == pytest.approx(0.0021)
    # every local run costs: (2 + 3 + 1 + 0.5) s x 0.38 USD / 3600 s
    assert r["local_cost_usd"] == pytest.approx(6.5 * 0.38 / 3600, abs=1e-6)
    assert r["net_savings_usd"] == pytest.approx(0.0021 - 6.5 * 0.38 / 3600, abs=1e-6)
    assert r["local_hours"] == pytest.approx(6.5 / 3600, abs=1e-4)
    assert r["escalated"] == {"answers": 2, "tokens": 450 + 600, "cost_usd": 0.0049}
    assert r["local_share"]["requests"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["local_share"]["tokens"] == pytest.approx(450 / 1500)
    assert r["escalation_rate"] == pytest.approx(2 / 3, abs=1e-4)  # escalated + queued
    assert r["priced_against"] == ["cloud"]
    assert r["days"] == [
        {"day": "2030-05-01", "local_tokens": 450, "escalated_tokens": 0},
        {"day": "2030-05-02", "local_tokens": 0, "escalated_tokens": 1050},
    ]
    assert main(["report", "tco"]) == 0
    screen = capsys.readouterr().out
    assert "net savings" in screen and "tokens per day" in screen and "2030-05-02" in screen


def test_since_keeps_only_the_later_rows(home: Home, capsys):
    _fill(home)
    r = _report(capsys, "--since", "2030-05-02")
    assert r["since"] == "2030-05-02T00:00:00Z"
    assert r["requests"] == {"local": 0, "queued": 0, "escalated": 0, "refused": 1}
    assert r["escalated"]["answers"] == 2 and r["served_locally"]["tokens"] == 0
    assert r["local_cost_usd"] == pytest.approx(0.5 * 0.38 / 3600, abs=1e-6)
    assert r["escalation_rate"] is None  # no request with a local-or-escalate decision
    later = _report(capsys, "--since", "2030-05-02T10:00:02+00:00")
    assert later["escalated"]["answers"] == 1  # only the last row, at 10:00:02


def test_an_empty_ledger_and_bad_dates(home: Home, capsys):
    r = _report(capsys)
    assert r["requests"] == {"local": 0, "queued": 0, "escalated": 0, "refused": 0}
    assert r["net_savings_usd"] == 0 and r["local_share"] == {"requests": None, "tokens": None}
    assert not home.state_db.exists()  # a report writes nothing
    for bad in ("yesterday", "2030-13-01", "2030-05-02T10:00:00"):
        assert main(["report", "tco", "--since", bad]) == 2
        assert "--since" in capsys.readouterr().err


def test_gpu_power_is_added_to_the_local_cost(home: Home):
    gpu = GpuPower(read=lambda: [{"power_watts": 250.0}, {"power_watts": None}])
    try:
        ledger = Ledger(home, SETTINGS, gpu=gpu)
        # 0.36 + (100 + 250) W x 0.20 / 1000 = 0.43 USD per hour
        assert ledger.local_cost(3600) == pytest.approx(0.43)
        ledger.close()
    finally:
        gpu.close()
    assert GpuPower(read=lambda: []).watts == 0.0


def test_local_tokens_are_priced_at_the_policy_price_when_it_has_one(home: Home):
    policy = parse_policy(
        'schema = 1\nname = "p"\ndefault_class = "c"\n[classes.c]\negress = "never"\n'
        "[prices.cloud]\ninput_per_mtok = 5.0\n"
    )
    ledger = Ledger(home, SETTINGS, gpu=None)
    assert ledger.reference(policy, None) == ("cloud", 5.0, 10.0)  # output stays config's
    assert ledger.reference(policy, "unknown") == ("cloud", 5.0, 10.0)
    ledger.close()
    bare = Ledger(home, Settings(), gpu=None)
    assert bare.reference(policy, None) == ("cloud", 5.0, 0.0)  # the policy's table alone
    assert bare.reference(POLICY, None) == (None, 0.0, 0.0)
    bare.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("tco-daemon")
    d = start_daemon(root / "home", gemma_source(root), SETTINGS)
    yield d
    d.server.stop()


def test_a_request_through_the_daemon_lands_in_the_ledger(daemon: Daemon):
    response = httpx.post(
        f"{daemon.url}/v1/completions",
        json={"model": MODEL, "prompt": "The capital of France is", "max_tokens": 3},
        headers={"Authorization": f"Bearer {daemon.infer_token}", "X-Request-Id": "tco-1"},
        timeout=120,
    )
    assert response.status_code == 200
    usage = response.json()["usage"]
    deadline = time.monotonic() + 10  # rows are committed off the request path
    while (r := report.build(daemon.home))["served_locally"]["requests"] < 1:
        assert time.monotonic() < deadline, "no ledger row"
        time.sleep(0.05)
    route = response.headers["X-Appliance-Route"]  # local, or queued for the uplink
    assert r["requests"][route] == 1 and r["served_locally"]["requests"] == 1
    assert r["served_locally"]["tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    price = usage["prompt_tokens"] * 2.0 + usage["completion_tokens"] * 10.0
    assert r["api_cost_avoided_usd"] == pytest.approx(price / 1e6, abs=1e-6)
    assert r["local_cost_usd"] > 0
    with sqlite3.connect(daemon.home.state_db) as conn:
        [(request_id, device)] = conn.execute("SELECT request_id, device FROM tco_ledger")
    assert (request_id, device) == ("tco-1", "edge-device")  # the same id as logs and audit
