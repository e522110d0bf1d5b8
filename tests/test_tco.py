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
from appliance.tco.busy import BusyTime
from appliance.tco.ledger import SCHEMA, TABLE, GpuPower, Ledger
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon

POLICY = parse_policy(
    'schema = 1\nname = "tco"\ndefault_class = "c"\n[classes.c]\negress = "never"\n'
)
CLOUD = UpstreamSettings(
    name="cloud",
    kind="openai",
    base_url="http://127.0.0.1:9/v1",
    model="m",
    price_input_per_mtok=2.0,
    price_output_per_mtok=10.0,
)
CONFIG = """[[upstreams]]
name = "cloud"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "m"
price_input_per_mtok = 2.0
price_output_per_mtok = 10.0
"""
# 0.36 USD/h of hardware + 100 W at 0.20 USD/kWh = 0.38 USD per hour of compute
TCO = TcoSettings(
    hardware_usd_per_hour=0.36, power_watts=100, electricity_usd_per_kwh=0.20, gpu_power=False
)
SETTINGS = Settings(upstreams=[CLOUD], tco=TCO)
PER_SECOND = 0.38 / 3600  # USD per second of compute, by hand from the line above


def _ledger(home: Home, stamps: list[str], settings: Settings = SETTINGS) -> Ledger:
    times = iter(stamps)
    return Ledger(home, settings, clock=lambda: next(times))


def _request(
    ledger: Ledger, route: str, prompt: int, completion: int, seconds: float, ended: float
) -> None:
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
        ended=ended,
    )


def _fill(home: Home) -> None:
    """Four decided requests on May 1st and 2nd, runs apart in time; two upstream answers."""
    (home.root / "config.toml").write_text(CONFIG)
    day = "2030-05-0{}T10:00:0{}Z"
    stamps = [day.format(1 + i // 3, i % 3) for i in range(6)]
    ledger = _ledger(home, stamps)
    _request(ledger, "local", 100, 50, 2.0, ended=1002.0)
    _request(ledger, "queued", 200, 100, 3.0, ended=1013.0)  # device got the local answer
    _request(ledger, "escalated", 80, 20, 1.0, ended=1021.0)  # its local attempt fell short
    _request(ledger, "refused", 50, 10, 0.5, ended=1030.5)
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
    ledger.close()  # writes what is pending


def _report(capsys, *args: str) -> dict:
    assert main(["report", "tco", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_figure_matches_the_hand_computed_ledger(home: Home, capsys):
    _fill(home)
    r = _report(capsys)
    assert r["requests"] == {"local": 1, "queued": 1, "escalated": 1, "refused": 1}
    # stayed on the box: the local request only (a queued one is asked upstream later)
    assert r["local"] == {"requests": 1, "tokens": 100 + 50}
    assert r["escalated"] == {
        "requests": 2,
        "answers": 2,
        "tokens": (300 + 150) + (400 + 200),
        "cost_usd": 0.0049,
        "estimated_requests": 0,
        "estimated_cost_usd": 0,
    }
    # the local request's tokens at the API: (100 x 2 + 50 x 10) / 1e6
    assert r["api_cost_avoided_usd"] == pytest.approx(0.0007)
    # every local run costs: (2 + 3 + 1 + 0.5) s at 0.38 USD per hour
    assert r["local_cost_usd"] == pytest.approx(6.5 * PER_SECOND, abs=1e-6)
    assert r["net_savings_usd"] == pytest.approx(0.0007 - 6.5 * PER_SECOND, abs=1e-6)
    assert r["local_run_hours"] == pytest.approx(6.5 / 3600, abs=1e-4)
    assert r["local_share"] == {"requests": round(1 / 3, 4), "tokens": 0.125}  # 150 / 1200
    assert r["escalation_rate"] == round(2 / 3, 4)  # escalated + queued of 3 decided
    assert r["local_share"]["requests"] + r["escalation_rate"] == pytest.approx(1, abs=1e-3)
    assert r["priced_against"] == ["cloud"] and r["pricing_note"] is None
    assert r["days"] == [
        {"day": "2030-05-01", "local_tokens": 150, "escalated_tokens": 0},
        {"day": "2030-05-02", "local_tokens": 0, "escalated_tokens": 1050},
    ]
    with sqlite3.connect(home.state_db) as conn:
        rows = conn.execute(
            f"SELECT route, upstream, api_price_in, api_price_out, api_cost_usd, wall_ms "
            f"FROM {TABLE} WHERE kind = 'request' ORDER BY id"
        ).fetchall()
    assert rows[0] == ("local", "cloud", 2.0, 10.0, pytest.approx(0.0007), 2000.0)
    assert rows[1][4] == pytest.approx((200 * 2 + 100 * 10) / 1e6)  # stored, but not avoided
    assert main(["report", "tco"]) == 0
    screen = capsys.readouterr().out
    assert "net savings" in screen and "tokens per day" in screen and "2030-05-02" in screen


def test_overlapping_runs_charge_each_second_once(home: Home, capsys):
    """Batched requests share the box: 14 s of runs inside 12 s of busy time cost 12 s."""
    ledger = _ledger(home, ["2030-05-01T10:00:00Z"] * 3)
    _request(ledger, "local", 10, 1, 1.0, ended=3.0)  # [2, 3]
    _request(ledger, "local", 10, 1, 10.0, ended=10.0)  # [0, 10]: 1 s of it already paid
    _request(ledger, "local", 10, 1, 3.0, ended=12.0)  # [9, 12]: 1 s of it already paid
    ledger.close()
    with sqlite3.connect(home.state_db) as conn:
        costs = [c for (c,) in conn.execute(f"SELECT local_cost_usd FROM {TABLE} ORDER BY id")]
    assert costs == pytest.approx([1 * PER_SECOND, 9 * PER_SECOND, 2 * PER_SECOND])
    r = _report(capsys)
    assert r["local_cost_usd"] == pytest.approx(12 * PER_SECOND, abs=1e-6)
    assert r["local_run_hours"] == pytest.approx(14 / 3600, abs=1e-4)


def test_busy_time_is_the_union_of_the_runs():
    busy = BusyTime(horizon_s=100)
    assert busy.charge(0, 10) == 10
    assert busy.charge(20, 30) == 10
    assert busy.charge(5, 25) == 10  # bridges the two: only 10..20 is new
    assert busy.charge(0, 30) == 0
    assert busy.charge(40, 40) == 0
    assert busy.charge(200, 201) == 1  # the old intervals fall out of the horizon
    assert busy.charge(0, 30) == 30  # ... so they are forgotten (no run lasts that long)


def test_since_keeps_only_the_later_rows(home: Home, capsys):
    _fill(home)
    r = _report(capsys, "--since", "2030-05-02")
    assert r["since"] == "2030-05-02T00:00:00Z"
    assert r["requests"] == {"local": 0, "queued": 0, "escalated": 0, "refused": 1}
    assert r["escalated"]["answers"] == 2 and r["local"]["tokens"] == 0
    assert r["local_cost_usd"] == pytest.approx(0.5 * PER_SECOND, abs=1e-6)
    assert r["escalation_rate"] is None  # no request with a local-or-escalate decision
    assert r["days"] == [{"day": "2030-05-02", "local_tokens": 0, "escalated_tokens": 1050}]
    for later in ("2030-05-02T10:00:02+00:00", "2030-05-02T10:00:02", "2030-05-02T12:00:02+02:00"):
        r = _report(capsys, "--since", later)  # no zone: UTC
        assert r["since"] == "2030-05-02T10:00:02Z"
        assert r["escalated"]["answers"] == 1  # only the last row, at 10:00:02


def test_an_empty_ledger_and_the_json_shape(home: Home, capsys):
    r = _report(capsys, "--as-of", "2030-05-01")
    capex = r.pop("capex")
    assert capex["in_service"] == capex["as_of"] == "2030-05-01"  # no ledger: the report's day
    assert capex["days_in_service"] == 1 and capex["local_tokens"] == 0
    assert capex["local_cost_per_mtok_usd"] is None and capex["upstreams"] == []
    assert capex["extrapolation"] == "no tokens served on the box yet: nothing to extrapolate"
    assert r == {
        "since": None,
        "requests": {"local": 0, "queued": 0, "escalated": 0, "refused": 0},
        "local": {"requests": 0, "tokens": 0},
        "escalated": {
            "requests": 0,
            "answers": 0,
            "tokens": 0,
            "cost_usd": 0,
            "estimated_requests": 0,
            "estimated_cost_usd": 0,
        },
        "api_cost_avoided_usd": 0,
        "local_cost_usd": 0,
        "local_run_hours": 0,
        "net_savings_usd": 0,
        "local_share": {"requests": None, "tokens": None},
        "escalation_rate": None,
        "priced_against": [],
        "pricing_note": None,
        "days": [],
    }
    assert not home.state_db.exists()  # a report writes nothing
    assert main(["report", "tco"]) == 0
    assert "no requests in the ledger yet" in capsys.readouterr().out


def test_an_estimated_upstream_request_is_billed_and_marked(home: Home, capsys):
    """A request sent without a usable answer may still be billed: its estimate is in the
    cost, and counted apart so the operator sees how much of the bill is a guess."""
    _fill(home)
    ledger = _ledger(home, ["2030-05-02T11:00:00Z"])
    ledger.upstream_answer(
        POLICY,
        request_id="r9",
        upstream="cloud",
        prompt_tokens=100,
        completion_tokens=64,
        cost_usd=0.001,
        estimated=True,
    )
    ledger.close()
    r = _report(capsys)
    assert r["escalated"]["answers"] == 3
    assert r["escalated"]["cost_usd"] == pytest.approx(0.0049 + 0.001)
    assert (r["escalated"]["estimated_requests"], r["escalated"]["estimated_cost_usd"]) == (
        1,
        pytest.approx(0.001),
    )
    assert main(["report", "tco"]) == 0
    assert "of which estimated" in capsys.readouterr().out


def test_a_bad_since_is_a_usage_error(home: Home, capsys):
    for bad in ("yesterday", "2030-13-01", "2030-05-02T25:00", ""):
        assert main(["report", "tco", "--since", bad]) == 2
        err = capsys.readouterr().err
        assert "--since" in err and "YYYY-MM-DD" in err and "Traceback" not in err


def test_gpu_power_is_added_to_the_local_cost(home: Home):
    gpu = GpuPower(read=lambda: [{"power_watts": 250.0}, {"power_watts": None}], interval_s=0.01)
    try:
        assert gpu.sampled.wait(5)
        ledger = Ledger(home, SETTINGS, gpu=gpu)
        # 0.36 + (100 + 250) W x 0.20 / 1000 = 0.43 USD per hour
        assert ledger.local_cost(3600) == pytest.approx(0.43)
        ledger.close()
    finally:
        gpu.close()
    none = GpuPower(read=lambda: [])
    assert none.sampled.wait(5) and none.watts == 0.0
    none._thread.join(5)
    assert not none._thread.is_alive()  # no GPU: nothing to sample again


def test_local_tokens_are_priced_at_the_policy_price_and_order(home: Home, capsys):
    policy = parse_policy(
        'schema = 1\nname = "p"\ndefault_class = "c"\n[classes.c]\negress = "never"\n'
        "[prices.cloud]\ninput_per_mtok = 5.0\n"
    )
    ledger = Ledger(home, SETTINGS, gpu=None)
    assert ledger.reference(policy, None) == ("cloud", 5.0, 10.0)  # output stays config's
    assert ledger.reference(policy, "unknown") == ("cloud", 5.0, 10.0)
    ledger.close()
    two = Settings(
        upstreams=[
            CLOUD.model_copy(update={"name": "onprem", "perimeter": "internal"}),
            CLOUD,
            CLOUD.model_copy(update={"name": "cloud2", "price_input_per_mtok": 3.0}),
        ],
        tco=TCO,
    )
    ordered = parse_policy(
        'schema = 1\nname = "o"\ndefault_class = "c"\nupstreams = ["onprem", "cloud2"]\n'
        '[classes.c]\negress = "never"\n'
    )
    ledger = Ledger(home, two, gpu=None)
    assert ledger.reference(ordered, None) == ("cloud2", 3.0, 10.0)  # external first, in order
    assert ledger.reference(ordered, "onprem") == ("onprem", 2.0, 10.0)  # the plan's own
    assert ledger.reference(POLICY, None) == ("cloud", 2.0, 10.0)  # config order
    ledger.close()

    bare = _ledger(home, ["2030-05-01T10:00:00Z"], Settings(tco=TCO))
    assert bare.reference(POLICY, None) == (None, 0.0, 0.0)
    assert bare.reference(policy, None) == ("cloud", 5.0, 0.0)  # the policy's table alone
    bare.request(
        policy,
        request_id="x",
        model="gemma",
        route="local",
        device=None,
        upstream=None,
        prompt_tokens=1000,
        completion_tokens=0,
        seconds=0.0,
    )
    bare.close()
    r = _report(capsys)  # no config.toml: no upstream configured
    assert r["api_cost_avoided_usd"] == pytest.approx(1000 * 5.0 / 1e6)
    assert "no upstream is configured" in r["pricing_note"]
    assert "policy's first price entry (cloud)" in r["pricing_note"]
    assert main(["report", "tco"]) == 0
    assert "no upstream is configured" in capsys.readouterr().out


def test_a_report_over_100k_rows_uses_the_index(home: Home, capsys):
    with sqlite3.connect(home.state_db) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
        conn.executemany(
            f"INSERT INTO {TABLE} (at, kind, route, upstream, prompt_tokens, completion_tokens, "
            "wall_ms, api_price_in, api_price_out, api_cost_usd, local_cost_usd) "
            "VALUES (?, ?, ?, 'cloud', 100, 20, 500, 2, 10, 0.0004, 0.00001)",
            (
                (
                    f"2030-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00Z",
                    "upstream" if i % 10 == 0 else "request",
                    ("local", "queued", "escalated", "refused")[i % 4],
                )
                for i in range(100_000)
            ),
        )
        plan = conn.execute(
            "EXPLAIN QUERY PLAN " + report._SQL.format(where="WHERE at >= ?"), ("2030-06-01",)
        ).fetchall()
    assert any(f"USING INDEX {TABLE}_at" in str(step) for step in plan)
    r = _report(capsys)  # (its speed is a benchmark's business, not a test's)
    assert sum(r["requests"].values()) == 90_000 and r["escalated"]["answers"] == 10_000
    assert r["local"]["tokens"] == 20_000 * 120  # i % 4 == 0, less i % 20 == 0


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
    while sum((r := report.build(daemon.home))["requests"].values()) < 1:
        assert time.monotonic() < deadline, "no ledger row"
        time.sleep(0.05)
    with sqlite3.connect(daemon.home.state_db) as conn:
        [row] = conn.execute(
            f"SELECT request_id, device, model, route, upstream, prompt_tokens, "
            f"completion_tokens, wall_ms, api_cost_usd, local_cost_usd FROM {TABLE}"
        )
    request_id, device, model, route, upstream, prompt, completion, wall_ms, api, local = row
    assert (request_id, device, model) == ("tco-1", "edge-device", MODEL)  # as logs and audit
    assert route == response.headers["X-Appliance-Route"]  # local, or queued for the uplink
    assert (prompt, completion) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert upstream == "cloud"
    assert api == pytest.approx((prompt * 2.0 + completion * 10.0) / 1e6)
    # (wall_ms is stored to the microsecond; the cost was computed before rounding)
    assert 0 < wall_ms < 120_000 and local == pytest.approx(wall_ms / 1000 * PER_SECOND, rel=1e-4)
    assert r["requests"][route] == 1
