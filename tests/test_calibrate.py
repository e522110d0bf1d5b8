"""appliance calibrate: pairs, weights, Wilson intervals, the recommendation, the draft, and the
whole loop through a real daemon (Gemma) with a stand-in upstream that knows the answers."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from appliance.bundles import trust
from appliance.bundles.installer import BundleManager
from appliance.bundles.pack import pack, sign
from appliance.calibrate import draft
from appliance.calibrate.errors import CalibrationError
from appliance.calibrate.estimate import calibrate, effective_n, wilson
from appliance.calibrate.pairs import (
    EmbeddingSimilarity,
    ExactMatch,
    Pair,
    collect,
    embedding_backend,
)
from appliance.calibrate.sampling import AuditSampler
from appliance.cli import main
from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.home import Home
from appliance.outbox import Outbox
from appliance.policy.load import parse_policy
from appliance.policy.schema import CascadeSettings
from appliance.policy_source import DEFAULT_THRESHOLD, peek
from appliance.settings import OutboxSettings, Settings, SyncSettings, UpstreamSettings
from appliance.status import document, render
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon
from tests.fake_upstream import FakeUpstream
from tests.helpers import make_key, wait_until
from tests.onnx_models import write_embedding_source

POLICY = """
schema = 1
name = "calibrate-test"
default_class = "public"

[classes.public]
egress = "allowed"

[cascade]
confidence_threshold = 0.5   # the answer stands at or above this
escalation = "queue"
audit_rate = 0.5
"""


def _pair(i: int, confidence: float, agrees: bool, origin: str = "cascade", rate: float = 1.0):
    return Pair(
        id=f"p{i}",
        created_at="2026-12-01T00:00:00.000000Z",
        model="m",
        origin=origin,
        weight=1.0 / rate,
        confidence=confidence,
        local="Paris",
        golden="Paris" if agrees else "Lyon",
        cost_usd=0.001,
    )


# -- the statistics ---------------------------------------------------------------------------


def test_wilson_matches_the_textbook_interval():
    low, high = wilson(0.8, 10)  # 8 of 10, 95 %: Wilson's score interval
    assert math.isclose(low, 0.4902, abs_tol=1e-3) and math.isclose(high, 0.9433, abs_tol=1e-3)
    assert wilson(1.0, 50)[1] == 1.0 and wilson(1.0, 50)[0] < 1.0
    assert wilson(0.5, 0) == (0.0, 1.0)  # nothing observed: anything is possible
    assert effective_n([1.0] * 10) == 10 and effective_n([1.0] * 10 + [100.0]) < 2


def test_audit_pairs_are_weighted_by_their_sampling_rate():
    # 40 escalations below 0.5 (all disagree), 10 audit samples above at rate 0.1 (all agree):
    # the 10 stand for 100 confident queries, so 40 of 140 queries escalate, not 40 of 50
    pairs = [_pair(i, 0.1 + i / 100, False) for i in range(40)]
    pairs += [_pair(100 + i, 0.6 + i / 100, True, "audit", 0.1) for i in range(10)]
    result = calibrate(
        pairs, ExactMatch().score(pairs), measure="exact", target=0.7, min_pairs=5, min_audit=5
    )
    current = calibrate(
        pairs,
        ExactMatch().score(pairs),
        measure="exact",
        target=0.7,
        current_threshold=0.5,
        min_pairs=5,
        min_audit=5,
    ).current
    assert current is not None
    assert math.isclose(current.escalation_rate, 40 / 140)
    assert current.agreement == 1.0 and current.kept_pairs == 10 and current.kept_audit_pairs == 10
    assert math.isclose(current.cost_per_1000_usd, 1000 * 40 * 0.001 / 140)
    assert math.isclose(current.kept_effective, 10)  # equal weights among the kept

    # the recommendation is the lowest threshold whose 95 % lower bound reaches the target,
    # computed here the slow way, pair by pair: the two disagreeing escalations just below
    # 0.5 weigh 1 each against the audit samples' 100, so they may stay on the box
    def lower_bound(t: float) -> float:
        kept = [p for p in pairs if p.confidence >= t]
        weights = [p.weight for p in kept]
        agreeing = sum(p.weight for p in kept if p.golden == p.local) / sum(weights)
        return wilson(agreeing, effective_n(weights))[0]

    expected = min(p.confidence for p in pairs if lower_bound(p.confidence) >= 0.7)
    assert 0.4 < expected < 0.5
    assert result.recommended is not None
    assert math.isclose(result.recommended.threshold, expected)
    assert result.recommended.agreement_low is not None
    assert math.isclose(result.recommended.agreement_low, lower_bound(expected))
    assert result.refusal is None and result.audit_pairs == 10 and result.pairs == 50
    assert sum(b.pairs for b in result.buckets) == 50
    assert math.isclose(sum(b.share for b in result.buckets), 1.0)


def test_the_lower_bound_asks_for_more_than_the_point_estimate():
    # agreement 1.0 above 0.5 over 12 pairs: the point estimate reaches 0.95 at once, the Wilson
    # lower bound of 12/12 (0.757) does not, so the stricter criterion recommends nothing
    pairs = [_pair(i, 0.1 + i / 100, False) for i in range(30)]
    pairs += [_pair(100 + i, 0.6 + i / 100, True, "audit", 1.0) for i in range(12)]
    scores = ExactMatch().score(pairs)
    point = calibrate(pairs, scores, measure="x", target=0.95, criterion="point", min_pairs=10)
    lower = calibrate(pairs, scores, measure="x", target=0.95, criterion="lower", min_pairs=10)
    assert point.recommended is not None and point.recommended.threshold == 0.6
    assert lower.recommended is None
    assert lower.refusal is not None and "lower end of its 95% interval" in lower.refusal


def test_too_few_pairs_or_no_audit_samples_are_refused():
    few = [_pair(i, i / 10, True) for i in range(5)]
    result = calibrate(few, ExactMatch().score(few), measure="x", target=0.5)
    assert result.recommended is None and "only 5 pairs" in (result.refusal or "")
    many = [_pair(i, i / 100, True) for i in range(60)]
    result = calibrate(many, ExactMatch().score(many), measure="x", target=0.5)
    assert result.recommended is None and "audit_rate" in (result.refusal or "")
    # every query escalated (threshold 1.0): the operator may waive the audit samples
    result = calibrate(many, ExactMatch().score(many), measure="x", target=0.5, min_audit=0)
    assert result.recommended is not None


def test_the_draft_changes_only_the_threshold(tmp_path: Path):
    source = tmp_path / "site.toml"
    source.write_text(POLICY)
    out = tmp_path / "draft.toml"
    draft.write_draft(source, out, 0.8123, "from calibrate")
    text = out.read_text()
    assert "confidence_threshold = 0.8123   # the answer stands at or above this" in text
    assert "# from calibrate" in text and text.count("confidence_threshold") == 1
    policy = parse_policy(text)
    assert policy.cascade.confidence_threshold == 0.8123 and policy.cascade.audit_rate == 0.5
    assert source.read_text() == POLICY  # the policy in force is untouched
    # a policy without the key, or without a [cascade] table, gets one
    bare = POLICY.replace("confidence_threshold = 0.5   # the answer stands at or above this\n", "")
    assert parse_policy(draft.with_threshold(bare, 0.7, "n")).cascade.confidence_threshold == 0.7
    no_table = bare[: bare.index("[cascade]")]
    assert (
        parse_policy(draft.with_threshold(no_table, 0.7, "n")).cascade.confidence_threshold == 0.7
    )
    with pytest.raises(CalibrationError, match="policy in force"):
        draft.write_draft(source, source, 0.9, "n")
    broken = tmp_path / "broken.toml"
    broken.write_text(POLICY.replace('egress = "allowed"', 'egress = "sometimes"'))
    with pytest.raises(CalibrationError, match="valid policy"):
        draft.write_draft(broken, tmp_path / "nothing.toml", 0.9, "n")
    assert not (tmp_path / "nothing.toml").exists()


def test_status_peeks_the_schema_default_threshold():
    assert CascadeSettings().confidence_threshold == DEFAULT_THRESHOLD


# -- pairs from an outbox, and the command -----------------------------------------------------


def _escalation(i: int, confidence: float, origin: str | None, model: str = "m") -> Escalation:
    return Escalation(
        id=f"00000000-0000-4000-8000-{i:012d}",
        created_at="",
        upstream="cloud",
        endpoint="completion",
        messages=({"role": "user", "content": f"question {i}"},),
        mapping={},
        model=model,
        local_answer="Paris",
        confidence=confidence,
        origin=origin,  # type: ignore[arg-type]
        audit_rate=0.25 if origin == "audit" else None,
    )


def _answer(outbox: Outbox, item: Escalation, text: str) -> None:
    outbox.complete(item.id, "test", UpstreamAnswer(text, "cloud", "big", 10, 5), 0.002)


@pytest.fixture
def filled(home: Home) -> Home:
    """An outbox with 40 cascade pairs (below 0.5, half agree), 20 audit pairs (above, all
    agree), and an item that is not a calibration pair."""
    outbox = Outbox(home, OutboxSettings())
    items = [_escalation(i, 0.05 + i / 100, "cascade") for i in range(40)]
    items += [_escalation(100 + i, 0.6 + i / 50, "audit") for i in range(20)]
    items += [_escalation(200, 0.9, None)]  # sent upstream first: not a sample
    outbox.enqueue_many(items)
    for item in items:
        agree = item.origin == "audit" or int(item.id[-3:]) % 2 == 0
        _answer(outbox, item, "Paris" if agree else "Lyon")
    outbox.close()
    (home.root / "policy.toml").write_text(POLICY)
    home.config_file.write_text(f'policy_file = "{home.root / "policy.toml"}"\n')
    return home


def test_pairs_are_collected_with_their_weights(filled: Home):
    outbox = Outbox(filled, OutboxSettings())
    found = collect(outbox.golden())
    assert len(found.pairs) == 60 and found.audit == 20
    assert {p.weight for p in found.pairs if p.origin == "audit"} == {4.0}
    assert sum(found.skipped.values()) == 1
    outbox.enqueue(_escalation(300, 0.3, "cascade", model="other"))
    _answer(outbox, _escalation(300, 0.3, "cascade"), "x")
    with pytest.raises(CalibrationError, match="--model"):
        collect(outbox.golden())
    assert len(collect(outbox.golden(), model="other").pairs) == 1
    outbox.close()


def test_the_command_prints_json_writes_csv_and_a_draft(
    filled: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out, csv = tmp_path / "draft.toml", tmp_path / "buckets.csv"
    code = main(
        [
            "calibrate",
            "--target",
            "0.8",
            "--min-pairs",
            "10",
            "--json",
            "--csv",
            str(csv),
            "--write-policy",
            str(out),
        ]
    )
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert document["measure"] == "normalised exact match" and document["criterion"] == "lower"
    assert document["pairs"] == 60 and document["audit_pairs"] == 20
    best = document["recommended"]
    assert best["threshold"] <= 0.6 and best["agreement_low"] >= 0.8  # audit samples weigh 4
    assert document["current"]["threshold"] == 0.5 and document["policy"]["audit_rate"] == 0.5
    assert parse_policy(out.read_text()).cascade.confidence_threshold == best["threshold"]
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("low,high,pairs,audit_pairs") and len(lines) == 11
    # the terminal table names the measure; an unreachable target exits 1, no draft written
    assert main(["calibrate", "--target", "0.8", "--min-pairs", "10"]) == 0
    assert "normalised exact match" in capsys.readouterr().out
    out.unlink()
    code = main(["calibrate", "--target", "0.999", "--write-policy", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "no threshold recommended" in captured.err and not out.exists()
    assert main(["calibrate", "--measure", "bleu"]) == 2


def test_the_embedding_measure_uses_an_installed_embedding_bundle(
    filled: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    assert main(["calibrate", "--measure", "embedding"]) == 1
    assert "needs one active ONNX embedding bundle" in capsys.readouterr().err
    key = make_key(tmp_path, "publisher")
    trust.add_key(filled, key.public)
    bundle = tmp_path / "mini-embed.bundle"
    pack(write_embedding_source(tmp_path / "embed-src"), bundle)
    sign(bundle, key.private)
    manager = BundleManager(filled)
    try:
        manager.install(bundle)
    finally:
        manager.close()
    backend, label = embedding_backend(filled, None)
    try:
        scorer = EmbeddingSimilarity(backend, label, 0.999)
        same, other = _pair(1, 0.5, True), _pair(2, 0.5, True)
        same = dataclasses.replace(same, local="the quick brown fox", golden="the quick brown fox")
        other = dataclasses.replace(other, local="the quick brown fox", golden="lazy cat sat")
        assert scorer.score([same, other]) == [1.0, 0.0]
    finally:
        backend.close()
    code = main(["calibrate", "--measure", "embedding", "--target", "0.8", "--min-pairs", "10"])
    assert code == 0
    assert "embedding cosine >= 0.9 (mini-embed" in capsys.readouterr().out


def test_status_shows_the_agreement_at_the_threshold_in_force(filled: Home):
    settings = Settings(policy_file=str(filled.root / "policy.toml"))

    def status(policy_text: str) -> tuple[dict, str]:
        (filled.root / "policy.toml").write_text(policy_text)
        doc = document.build(
            filled,
            settings,
            daemon={"up": False, "url": "x"},
            policy=lambda: peek(filled, settings.policy_file),
            gpus=[],
        )
        console = Console(width=200, record=True)
        console.print(render.render(doc))
        return doc["calibration"], console.export_text()

    seen, screen = status(POLICY)  # threshold 0.5: the 20 audit samples, all agreeing
    assert seen["audit_samples"] == 20 and seen["agreement"] == 1.0 and seen["low"] < 1.0
    assert "audit   agreement 1.000" in screen and "at threshold 0.5" in screen
    seen, screen = status(POLICY.replace("0.5   #", "0.89   #"))  # 5 samples at or above
    assert seen["audit_samples"] == 5 and seen["agreement"] is None
    assert "5 audit samples at threshold 0.89; agreement shown from 10" in screen
    seen, _ = status(POLICY.replace("[cascade]", "[cascade]\nenabled = false"))
    assert seen is None  # no cascade, no threshold to judge


# -- the whole loop through a daemon ------------------------------------------------------------

PROMPTS = [
    "The capital of France is",
    "One, two, three, four,",
    "The opposite of hot is",
    "Monday, Tuesday, Wednesday,",
    "Roses are red, violets are",
    "The chemical symbol for gold is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "A triangle has three",
    "The quick brown fox jumps over the",
    "January, February, March,",
    "import numpy as",
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key="sk-calibrate") as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("calibrate-daemon")
    key, policy = root / "upstream.key", root / "policy.toml"
    key.write_text("sk-calibrate\n")
    policy.write_text(POLICY.replace("0.5   #", "0.0   #").replace("0.5\n", "0.0\n"))
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
    d.home.config_file.write_text(f'policy_file = "{policy}"\n')  # for the CLI
    yield d
    d.server.stop()


def _complete(daemon: Daemon, prompt: str) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": 3, "temperature": 0},
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=120,
    )


def test_calibrate_recommends_the_threshold_the_daemons_pairs_imply(
    daemon: Daemon,
    fake: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    governor = daemon.app.state.governor
    policy_file = Path(daemon.app.state.settings.policy_file)
    monitor = daemon.app.state.forwarding.monitor
    # the upstream is down, so every escalation and audit sample waits in the outbox until
    # the test knows the local answers and tells the stand-in which to agree with
    fake.down()
    wait_until(lambda: not monitor.is_up("cloud"), timeout=60.0)
    local = {}

    def ask(prompts: list[str], threshold: float, route: str) -> None:
        policy_file.write_text(POLICY.replace("0.5   #", f"{threshold}   #"))
        governor.active.refresh()
        for prompt in prompts:
            response = _complete(daemon, prompt)
            local[prompt] = response.json()["choices"][0]["text"]
            assert response.headers["X-Appliance-Route"] == route

    # 1. threshold 0: every answer is confident and stays local; half of them (a seeded
    #    draw at audit_rate 0.5) also go upstream as audit samples
    governor.audit_sampler = AuditSampler(seed=11)
    ask(PROMPTS[:6], 0.0, "local")
    # 2. threshold 1: every answer is escalated (queued: the policy queues escalations)
    ask(PROMPTS[6:], 1.0, "queued")
    outbox: Outbox = daemon.app.state.outbox
    items = {i.messages[0]["content"]: i for i in outbox.list(limit=100)}
    cascade = [i for i in items.values() if i.origin == "cascade"]
    audit = [i for i in items.values() if i.origin == "audit"]
    assert cascade and audit and len(cascade) + len(audit) == len(items)
    # 3. the stand-in upstream agrees with exactly the local answers at or above a cut
    cut = sorted(i.confidence for i in items.values())[len(items) // 3]
    agreeing = {p for p, i in items.items() if i.confidence >= cut}
    fake.reply = lambda body: (
        local[body["messages"][-1]["content"]]
        if body["messages"][-1]["content"] in agreeing
        else "something else entirely"
    )
    fake.up()
    wait_until(lambda: outbox.counts()["done"] == len(items), timeout=60.0)
    # the audit samples were paid and ledgered like any escalation
    governor.ledger.flush()
    with sqlite3.connect(daemon.home.state_db) as conn:
        paid = {
            r[0] for r in conn.execute("SELECT request_id FROM tco_ledger WHERE kind = 'upstream'")
        }
    assert {i.id for i in audit} <= paid
    # 4. calibrate: with the point estimate and a target of 1.0, the lowest threshold that keeps
    #    only agreeing answers is the cut, rounded down to 4 decimals
    monkeypatch.setenv("APPLIANCE_HOME", str(daemon.home.root))
    code = main(
        [
            "calibrate",
            "--target",
            "1.0",
            "--criterion",
            "point",
            "--min-pairs",
            "2",
            "--min-audit",
            "1",
            "--json",
        ]
    )
    document = json.loads(capsys.readouterr().out)
    assert code == 0, document["refusal"]
    assert document["pairs"] == len(items) and document["audit_pairs"] == len(audit)
    assert document["recommended"]["threshold"] == math.floor(cut * 10**4) / 10**4
    assert document["recommended"]["agreement"] == 1.0
    weights = {i.id: 1 / i.audit_rate if i.origin == "audit" else 1.0 for i in items.values()}
    below = sum(weights[i.id] for i in items.values() if i.confidence < cut)
    assert math.isclose(
        document["recommended"]["escalation_rate"], below / sum(weights.values()), abs_tol=1e-6
    )
