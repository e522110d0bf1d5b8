"""`appliance policy check`: the operator's view of a routing decision, before any model runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.home import Home

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Ask ops@example.com to call +44 20 7946 0958 about the late pallet."


def check(home: Home, prompt: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "policy", "check", *args],
        input=prompt,
        capture_output=True,
        text=True,
        env={**os.environ, "APPLIANCE_HOME": str(home.root)},
        timeout=60,
    )


def test_json_decision_with_findings_and_the_exact_egress_text(home: Home):
    result = check(home, PROMPT, "--json")
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["policy"].startswith("default@")
    assert decision["sensitivity"] == "personal" and decision["egress"] == "redacted"
    found = {(f["type"], f["value"]) for f in decision["findings"]}
    assert found == {("EMAIL", "ops@example.com"), ("PHONE", "+44 20 7946 0958")}
    for f in decision["findings"]:
        assert PROMPT[f["start"] : f["end"]] == f["value"]
    # shown although no upstream is configured: what would leave if one were
    assert decision["egress_text"] == ("Ask <EMAIL_1> to call <PHONE_1> about the late pallet.")
    assert decision["placeholders"] == {
        "<EMAIL_1>": "ops@example.com",
        "<PHONE_1>": "+44 20 7946 0958",
    }
    assert decision["route"]["if_not_confident"] == "local"  # nothing configured to leave to
    assert any("no upstream" in r for r in decision["reasons"])


def test_an_upstream_in_config_changes_the_route(home: Home):
    (home.root / "config.toml").write_text(
        '[[upstreams]]\nname = "cloud"\nkind = "openai"\n'
        'base_url = "https://api.example.com/v1"\nmodel = "gpt-4o"\n'
    )
    decision = json.loads(check(home, PROMPT, "--json").stdout)
    assert decision["route"] == {
        "first": "local",
        "if_confident": "local",
        "if_not_confident": "escalated",
        "if_not_confident_uplink_down": "queued",
        "upstream": "cloud",
        "threshold": 0.25,
        "measure": "clause",
    }


def test_a_secret_never_leaves_and_says_so(home: Home):
    result = check(home, "the admin password: hunter2!! for the kiosk")
    assert result.returncode == 0, result.stderr
    assert "sensitivity  secret" in result.stdout
    assert "never leaves the box" in result.stdout


def test_example_policies_and_a_broken_one(home: Home, tmp_path: Path):
    strict = REPO / "policies" / "examples" / "regulated-finance.toml"
    decision = json.loads(check(home, PROMPT, "--policy", str(strict), "--json").stdout)
    assert decision["egress_text"] is None  # nothing ever leaves a regulated-finance site
    broken = tmp_path / "broken.toml"
    broken.write_text(
        'schema = 1\nname = "b"\ndefault_class = "public"\n\n[classes.public]\negress = "out"\n'
    )
    result = check(home, PROMPT, "--policy", str(broken))
    assert result.returncode == 1
    assert f"{broken}:6: classes.public.egress" in result.stderr
    assert "Traceback" not in result.stderr
