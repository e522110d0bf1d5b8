"""A policy whose upstream names config.toml does not configure: said, not silent.

The field-logistics example lists ``openai-main`` and ``anthropic-backup``; a box whose
config.toml names its upstream ``gpt`` escalates nothing under it. ``appliance policy check``
and ``appliance status`` must say so (issue 19).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import _entry, policy_upstreams
from appliance.home import Home

REPO = Path(__file__).resolve().parent.parent
FIELD_LOGISTICS = REPO / "policies" / "examples" / "field-logistics.toml"
HARD_PROMPT = "What is the best route from the depot to site 4?"


def _config(home: Home, *names: str, policy: Path | None = FIELD_LOGISTICS) -> None:
    lines = [f'policy_file = "{policy}"'] if policy else []
    for name in names:
        lines += [
            "[[upstreams]]",
            f'name = "{name}"',
            'kind = "openai"',
            'base_url = "https://api.example.com/v1"',
            'model = "gpt-4o"',
        ]
    home.config_file.write_text("\n".join(lines) + "\n")


def _policy_check(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "policy", "check", *args],
        input=HARD_PROMPT,
        capture_output=True,
        text=True,
        env={**os.environ, "APPLIANCE_HOME": str(home.root)},
        timeout=60,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(home: Home, capsys: pytest.CaptureFixture[str]) -> dict:
    url = f"http://127.0.0.1:{_closed_port()}"
    _entry.main(["status", "--json", "--url", url])
    document: dict = json.loads(capsys.readouterr().out)
    return document


def test_the_names_are_compared_as_the_router_compares_them():
    off = policy_upstreams.check(["openai-main", "anthropic-backup"], [], ["gpt"])
    assert off.escalation_off and off.missing == ("openai-main", "anthropic-backup")
    partial = policy_upstreams.check(["openai-main", "anthropic-backup"], [], ["openai-main"])
    assert not partial.escalation_off and partial.missing == ("anthropic-backup",)
    assert "skipped" in partial.warnings()[0]
    every = policy_upstreams.check([], ["openai-main"], ["gpt"])  # [] = every configured one
    assert not every.escalation_off and every.unused_prices == ("openai-main",)
    assert "never used" in every.warnings()[0]
    # No upstream at all: nothing leaves by design, not a mismatch to fix in the policy.
    none = policy_upstreams.check(["openai-main"], ["openai-main"], [])
    assert not none.escalation_off and none.unused_prices == ()
    assert "configures no [[upstreams]]" in none.warnings()[0]


def test_policy_check_says_escalation_is_off(home: Home):
    _config(home, "gpt")
    result = _policy_check(home, "--json")
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["route"]["if_not_confident"] == "local"  # what the router really does
    off, *prices = decision["warnings"]
    assert "openai-main, anthropic-backup" in off and "(its [[upstreams]]: gpt)" in off
    assert "nothing escalates" in off
    assert [p.split("]")[0] for p in prices] == ["[prices.openai-main", "[prices.anthropic-backup"]
    screen = _policy_check(home).stdout  # the same on a terminal
    assert "warning      the policy sends escalations only to openai-main" in screen


def test_policy_check_is_quiet_when_the_names_meet(home: Home):
    _config(home, "openai-main", "anthropic-backup")
    decision = json.loads(_policy_check(home, "--json").stdout)
    assert decision["warnings"] == []
    assert decision["route"]["upstream"] == "openai-main"


def test_status_reports_the_mismatch_as_a_problem(home: Home, capsys: pytest.CaptureFixture[str]):
    _config(home, "gpt")
    document = _status(home, capsys)
    assert document["policy_upstreams"] == {
        "listed": ["openai-main", "anthropic-backup"],
        "configured": ["gpt"],
        "missing": ["openai-main", "anthropic-backup"],
        "escalation_off": True,
    }
    found = [p for p in document["problems"] if "nothing escalates" in p["what"]]
    assert len(found) == 1 and "config.toml" in found[0]["do"]


def test_status_has_no_such_problem_when_the_names_meet(
    home: Home, capsys: pytest.CaptureFixture[str]
):
    _config(home, "openai-main")  # one of the two: the other is skipped, by design
    document = _status(home, capsys)
    assert document["policy_upstreams"]["missing"] == ["anthropic-backup"]
    assert not any("nothing escalates" in p["what"] for p in document["problems"])
    _config(home, "gpt", policy=None)  # the default policy: upstreams = [] (every one)
    document = _status(home, capsys)
    assert document["policy_upstreams"]["escalation_off"] is False
