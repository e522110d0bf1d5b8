"""`appliance report tco`'s hardware figures: cost per million tokens, break-even, the volume
that pays, and the daily CSV, against a ledger computed by hand and against the real daemon."""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.cli import main
from appliance.errors import ConfigError
from appliance.home import Home
from appliance.policy.load import parse_policy
from appliance.settings import Settings, TcoSettings, UpstreamSettings, load_settings
from appliance.tco import breakeven
from appliance.tco.daily import Day
from appliance.tco.ledger import TABLE, Ledger
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon

POLICY = parse_policy(
    'schema = 1\nname = "capex"\ndefault_class = "c"\n[classes.c]\negress = "never"\n'
)
UPSTREAMS = """
[[upstreams]]
name = "cloud"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "m"
price_input_per_mtok = 2.0
price_output_per_mtok = 10.0

[[upstreams]]
name = "premium"
kind = "anthropic"
base_url = "http://127.0.0.1:9/v1"
model = "m"
price_input_per_mtok = 15.0
price_output_per_mtok = 75.0
"""
# 14,610 USD over 4 years (1,461 days) = 10 USD a day; 30.4375 USD a month = 1 USD a day;
# 500 W at 0.20 USD/kWh = 0.10 USD an hour of model time
TCO = """
[tco]
hardware_price_usd = 14610.0
amortisation_years = 4
ops_usd_per_month = 30.4375
power_watts = 500
electricity_usd_per_kwh = 0.2
gpu_power = false
in_service = 2030-05-01
"""
START = date(2030, 5, 1)
AS_OF = "2030-05-10"  # ten days in service
# (day of May, prompt tokens, completion tokens, seconds of model time): 6M + 2M tokens
LOCAL = [
    (1, 3_000_000, 1_000_000, 3600.0),
    (5, 2_000_000, 1_000_000, 7200.0),
    (8, 1_000_000, 0, 1800.0),
]


def _fill(home: Home, tco: str = TCO, upstreams: str = UPSTREAMS) -> None:
    (home.root / "config.toml").write_text(upstreams + tco)
    settings = load_settings(home.config_file)
    stamps = iter([f"2030-05-0{day}T10:00:00Z" for day, *_ in LOCAL] + ["2030-05-05T11:00:00Z"] * 2)
    ledger = Ledger(home, settings, gpu=None, clock=lambda: next(stamps))
    for i, (_, prompt, completion, seconds) in enumerate(LOCAL):
        ledger.request(
            POLICY,
            request_id=f"r{i}",
            model="gemma",
            route="local",
            device="cam-1",
            upstream=None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            seconds=seconds,
            ended=100_000.0 * (i + 1),
        )
    ledger.request(  # escalated at once, no local run: not the box's tokens
        POLICY,
        request_id="r9",
        model="gemma",
        route="escalated",
        device="cam-1",
        upstream="cloud",
        prompt_tokens=0,
        completion_tokens=0,
        seconds=0.0,
    )
    ledger.upstream_answer(
        POLICY,
        request_id="e9",
        upstream="cloud",
        prompt_tokens=500,
        completion_tokens=100,
        cost_usd=0.002,
    )
    ledger.close()


def _report(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main(["report", "tco", "--json", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return dict(json.loads(captured.out))


def test_every_hardware_figure_matches_the_hand_computed_ledger(home: Home, capsys):
    _fill(home)
    c = _report(capsys, "--as-of", AS_OF)["capex"]
    assert (c["in_service"], c["as_of"], c["days_in_service"]) == ("2030-05-01", AS_OF, 10)
    assert c["local_tokens"] == 8_000_000 and c["local_tokens_per_day"] == 800_000
    # 10 days x 10 USD + 0.35 USD of power (1 h + 2 h + 0.5 h at 0.10) + 10 days x 1 USD
    assert c["cost_to_date_usd"] == {
        "hardware": pytest.approx(100.0),
        "running": pytest.approx(0.35),
        "ops": pytest.approx(10.0),
        "total": pytest.approx(110.35),
    }
    assert c["local_cost_per_mtok_usd"] == pytest.approx(110.35 / 8)
    assert c["running_cost_per_mtok_usd"] == pytest.approx(0.35 / 8)
    assert c["api_cost_avoided_usd"] == pytest.approx(32.0)  # at cloud's price, as recorded
    assert c["power"]["source"] == "configured" and c["power"]["gpu_watts_now"] is None
    assert c["extrapolation"] is None
    cloud, premium = c["upstreams"]
    # 6M x 2 + 2M x 10 = 32 USD; 6M x 15 + 2M x 75 = 240 USD
    assert cloud["api_cost_avoided_usd"] == pytest.approx(32.0)
    assert premium["api_cost_avoided_usd"] == pytest.approx(240.0)
    assert premium["api_cost_per_mtok_usd"] == pytest.approx(30.0)
    # break-even: the whole price / ((avoided - running) / days - ops a day), rounded up
    # cloud: 14610 / (31.65 / 10 - 1) = 6748.3 -> day 6749, after the 1461 days of amortisation
    assert cloud["break_even"] == (START + timedelta(6748)).isoformat()
    assert cloud["break_even_reached"] is False
    assert cloud["break_even_note"] == "after the amortisation period"
    # premium: 14610 / (239.65 / 10 - 1) = 636.2 -> day 637
    assert premium["break_even"] == (START + timedelta(636)).isoformat() == "2032-01-27"
    assert premium["break_even_note"] is None
    # beats it from: (10 + 1) USD a day / ((avoided - running) per token)
    assert cloud["beats_at_tokens_per_day"] == pytest.approx(11 / (31.65 / 8e6), abs=0.1)
    assert premium["beats_at_tokens_per_day"] == pytest.approx(11 / (239.65 / 8e6), abs=0.1)
    # the observed 800k tokens a day beat premium (367k needed) but not cloud (2.78M)
    assert premium["beats_at_tokens_per_day"] < 800_000 < cloud["beats_at_tokens_per_day"]

    assert main(["report", "tco", "--as-of", AS_OF]) == 0
    screen = capsys.readouterr().out
    assert "the box as an investment" in screen and "2032-01-27" in screen
    assert "local cost per million tokens" in screen and "tokens a day" in screen


def test_the_policy_price_is_the_one_an_upstream_is_worth(home: Home, capsys, tmp_path: Path):
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'schema = 1\nname = "p"\ndefault_class = "c"\n[classes.c]\negress = "never"\n'
        "[prices.premium]\ninput_per_mtok = 30.0\n"
    )
    _fill(home)
    config = home.config_file.read_text()
    home.config_file.write_text(f'policy_file = "{policy}"\n' + config)
    premium = _report(capsys, "--as-of", AS_OF)["capex"]["upstreams"][1]
    assert premium["input_per_mtok"] == 30.0 and premium["output_per_mtok"] == 75.0
    assert premium["api_cost_avoided_usd"] == pytest.approx(6 * 30 + 2 * 75)


def test_the_daily_csv_has_every_day_in_service(home: Home, capsys, tmp_path: Path):
    _fill(home)
    out = tmp_path / "daily.csv"
    assert main(["report", "tco", "--as-of", AS_OF, "--csv", str(out)]) == 0
    assert f"daily figures written to {out}" in capsys.readouterr().out
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["day"] for r in rows] == [(START + timedelta(i)).isoformat() for i in range(10)]
    first, second, last = rows[0], rows[1], rows[-1]
    assert (first["local_requests"], first["prompt_tokens"], first["completion_tokens"]) == (
        "1",
        "3000000",
        "1000000",
    )
    assert float(first["api_cost_avoided_usd"]) == pytest.approx(16.0)  # 3 x 2 + 1 x 10
    assert float(first["api_cost_at_premium_usd"]) == pytest.approx(120.0)  # 3 x 15 + 1 x 75
    assert float(first["running_cost_usd"]) == pytest.approx(0.1)
    assert (float(first["hardware_usd"]), float(first["ops_usd"])) == (
        pytest.approx(10.0),
        pytest.approx(1.0),
    )
    assert float(first["local_cost_usd"]) == pytest.approx(11.1)
    assert float(first["net_usd"]) == pytest.approx(16 - 11.1)
    assert float(first["cumulative_cost_usd"]) == pytest.approx(14610 + 0.1 + 1)
    assert second["local_tokens"] == "0" and float(second["cumulative_cost_usd"]) == pytest.approx(
        14610 + 0.1 + 2
    )
    assert rows[4]["upstream_tokens"] == "600" and float(rows[4]["upstream_cost_usd"]) == 0.002
    assert float(last["cumulative_api_cost_avoided_usd"]) == pytest.approx(32.0)
    assert float(last["cumulative_cost_usd"]) == pytest.approx(14610 + 0.35 + 10)
    assert float(last["cumulative_net_usd"]) == pytest.approx(32 - 14610 - 0.35 - 10)


def test_too_little_history_is_said_and_not_extrapolated(home: Home, capsys):
    _fill(home)
    c = _report(capsys, "--as-of", AS_OF, "--min-days", "11")["capex"]
    assert c["extrapolation"] == (
        "too little history to extrapolate: 10 day(s) in service, 11 needed (--min-days)"
    )
    for upstream in c["upstreams"]:
        assert upstream["break_even"] is None and upstream["break_even_reached"] is None
        assert upstream["beats_at_tokens_per_day"] is not None  # a rate, not a forecast
    assert c["local_cost_per_mtok_usd"] == pytest.approx(110.35 / 8)  # observed, not forecast
    assert main(["report", "tco", "--as-of", AS_OF, "--min-days", "11"]) == 0
    assert "too little history to extrapolate" in capsys.readouterr().out
    early = _report(capsys, "--as-of", "2030-04-30")["capex"]
    assert early["days_in_service"] == 0 and "after the report's day" in early["extrapolation"]


def test_no_purchase_price_and_an_upstream_the_box_cannot_beat(home: Home, capsys):
    free = UPSTREAMS + (
        '\n[[upstreams]]\nname = "onprem"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'model = "m"\nperimeter = "internal"\n'
    )
    _fill(home, TCO.replace("14610.0", "0"), free)
    c = _report(capsys, "--as-of", AS_OF)["capex"]
    cloud, _, onprem = c["upstreams"]
    assert cloud["break_even"] is None
    assert cloud["break_even_note"] == "no purchase price configured ([tco] hardware_price_usd)"
    assert cloud["beats_at_tokens_per_day"] == pytest.approx(1 / (31.65 / 8e6), abs=0.1)
    assert onprem["api_cost_avoided_usd"] == 0 and onprem["beats_at_tokens_per_day"] is None
    assert onprem["break_even_note"] == "never: a token costs more to run on the box than at onprem"


def test_a_purchase_price_and_an_hourly_hardware_cost_are_refused_together(home: Home, capsys):
    home.config_file.write_text("[tco]\nhardware_price_usd = 1000\nhardware_usd_per_hour = 0.5\n")
    with pytest.raises(ConfigError, match="hardware would be counted twice"):
        load_settings(home.config_file)
    r = _report(capsys)  # the ledger is still reported; the hardware figures need the config
    assert r["capex"] is None
    out = home.root / "daily.csv"
    assert main(["report", "tco", "--csv", str(out)]) == 1
    assert "cannot be read" in capsys.readouterr().err and not out.exists()
    assert TcoSettings(hardware_price_usd=1000).amortisation_years == 3.0  # the default


def test_bad_report_options(home: Home, capsys, tmp_path: Path):
    _fill(home)
    for args, words in (
        (["--as-of", "10 May"], "--as-of '10 May' is not a date"),
        (["--min-days", "0"], "--min-days"),
        (["--csv", str(tmp_path / "missing" / "daily.csv")], "cannot write"),
    ):
        assert main(["report", "tco", *args]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    assert not (tmp_path / "missing").exists()


def test_the_gpu_draw_is_read_from_nvidia_smi(home: Home, capsys, tmp_path: Path, monkeypatch):
    """With gpu_power on, the report reads the GPUs' draw now (nvidia-smi on the PATH)."""
    _fill(home, TCO.replace("gpu_power = false", "gpu_power = true"))
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(
        "#!/bin/sh\necho '0, Test GPU, 100, 8000, 5, 45, 70.5'\necho '1, B, 1, 2, 3, 4, [N/A]'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:{os.environ['PATH']}")
    power = _report(capsys, "--as-of", AS_OF)["capex"]["power"]
    assert power["gpu_watts_now"] == 70.5 and power["source"].startswith("measured")


# -- the demo box: real requests, the figures that follow from them ------------------------

# a dear API (2 and 10 cents a token), so that a few demo tokens reach a date in the test
PRICE_IN, PRICE_OUT = 20_000.0, 100_000.0
CLOUD = UpstreamSettings(
    name="cloud",
    kind="openai",
    base_url="http://127.0.0.1:9/v1",
    model="m",
    price_input_per_mtok=PRICE_IN,
    price_output_per_mtok=PRICE_OUT,
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("capex-daemon")
    policy = root / "policy.toml"
    policy.write_text(
        'schema = 1\nname = "box"\ndefault_class = "c"\n[classes.c]\negress = "never"\n'
    )
    settings = Settings(
        upstreams=[CLOUD],
        tco=TcoSettings(power_watts=100, electricity_usd_per_kwh=0.2, gpu_power=False),
        policy_file=str(policy),
    )
    d = start_daemon(root / "home", gemma_source(root), settings)
    (d.home.root / "config.toml").write_text(
        f'policy_file = "{policy}"\n[[upstreams]]\nname = "cloud"\nkind = "openai"\n'
        f'base_url = "http://127.0.0.1:9/v1"\nmodel = "m"\nprice_input_per_mtok = {PRICE_IN}\n'
        f"price_output_per_mtok = {PRICE_OUT}\n[tco]\nhardware_price_usd = 1000.0\n"
        "amortisation_years = 1\npower_watts = 100\nelectricity_usd_per_kwh = 0.2\n"
        "gpu_power = false\n"
    )
    yield d
    d.server.stop()


def test_the_demo_box_figures_follow_from_its_requests(
    daemon: Daemon, capsys, monkeypatch, tmp_path: Path
):
    usages = []
    for prompt in ("The capital of France is", "def fibonacci(n):", "Water boils at"):
        response = httpx.post(
            f"{daemon.url}/v1/completions",
            json={"model": MODEL, "prompt": prompt, "max_tokens": 3},
            headers={"Authorization": f"Bearer {daemon.infer_token}"},
            timeout=120,
        )
        assert response.status_code == 200 and response.headers["X-Appliance-Route"] == "local"
        usages.append(response.json()["usage"])
    daemon.app.state.governor.ledger.flush()
    with sqlite3.connect(f"file:{daemon.home.state_db}?mode=ro", uri=True) as conn:
        [(day, running, rows)] = conn.execute(
            f"SELECT MIN(substr(at, 1, 10)), SUM(local_cost_usd), COUNT(*) FROM {TABLE}"
        ).fetchall()
    assert rows == 3
    monkeypatch.setenv("APPLIANCE_HOME", str(daemon.home.root))
    c = _report(capsys, "--as-of", day, "--min-days", "1")["capex"]
    prompt = sum(u["prompt_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    tokens = prompt + completion
    assert (c["in_service"], c["days_in_service"], c["local_tokens"]) == (day, 1, tokens)
    hardware = 1000 / 365.25  # one day of a one-year amortisation
    assert c["cost_to_date_usd"]["running"] == pytest.approx(running, abs=1e-6) and running > 0
    assert c["cost_to_date_usd"]["total"] == pytest.approx(hardware + running, abs=1e-6)
    assert c["local_cost_per_mtok_usd"] == pytest.approx((hardware + running) / tokens * 1e6)
    [cloud] = c["upstreams"]
    avoided = (prompt * PRICE_IN + completion * PRICE_OUT) / 1e6
    assert cloud["api_cost_avoided_usd"] == pytest.approx(avoided, abs=1e-6)
    assert c["api_cost_avoided_usd"] == pytest.approx(avoided, abs=1e-6)
    # the day's saving (API cost avoided - power) pays the 1000 USD after ceil(1000 / it) days
    per_day = avoided - running
    assert per_day > 0
    days = math.ceil(1000 / per_day)
    assert cloud["break_even"] == (date.fromisoformat(day) + timedelta(days - 1)).isoformat()
    assert cloud["break_even_reached"] is (days == 1)
    assert cloud["break_even_note"] == ("after the amortisation period" if days > 365.25 else None)
    assert cloud["beats_at_tokens_per_day"] == pytest.approx(
        hardware / (per_day / tokens), rel=1e-3
    )
    assert _report(capsys, "--as-of", day)["capex"]["extrapolation"] == (
        "too little history to extrapolate: 1 day(s) in service, 7 needed (--min-days)"
    )
    out = tmp_path / "daily.csv"
    assert main(["report", "tco", "--as-of", day, "--csv", str(out)]) == 0
    [row] = list(csv.DictReader(out.open(newline="")))
    assert (row["day"], int(row["local_tokens"]), int(row["local_requests"])) == (day, tokens, 3)


def test_a_break_even_beyond_a_century_is_none():
    ledger = [Day(START, local_requests=1, prompt_tokens=10, completion_tokens=0)]
    tco = TcoSettings(hardware_price_usd=1_000_000.0)
    c = breakeven.build(ledger, tco, [breakeven.Price("cloud", 1.0, 1.0)], START, min_days=1)
    [cloud] = c["upstreams"]
    assert cloud["break_even"] is None and cloud["break_even_reached"] is None
    assert cloud["break_even_note"].startswith("not within 100 years at the observed volume")
