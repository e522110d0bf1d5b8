"""`appliance audit`: real requests through the real daemon, then the cells they make.

The daemon runs the Gemma demo model with a real outbox and a stand-in upstream (the fake
API). The policy's threshold is 1.0, so every local answer falls short and goes up where its
class may leave. Five cells, each sent a known number of requests:

- public / simple: the upstream answers exactly what the box answered (it reads the local
  answer the outbox kept): agreement 1.0, so the escalations buy nothing -> keep local;
- public / complex ("step by step"): the upstream says something else -> escalate, and skip
  the local attempt for hard prompts;
- personal / simple (an e-mail address, redacted): the upstream disagrees, and its pairs
  are trainable -> distill (at --distill-pairs 4; public / complex has 3);
- secret / simple (keyword, never leaves): the local confidence is below the threshold, so
  the box refuses them (when_blocked = "refuse"), and no upstream is inside the perimeter
  -> escalate inside the perimeter (add one);
- secret / complex: one request -> too few to judge.

Every count, token figure, cost and agreement is checked against what was sent, the
ledger's rows and the outbox's answers. Cells are judged from 3 requests here
(--min-requests 3), to keep the test short.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.cli import main
from appliance.governance.agreement import exact_match, token_f1
from appliance.home import Home
from appliance.settings import Settings, SyncSettings, TcoSettings, UpstreamSettings
from appliance.tokens import TokenStore
from appliance.workload.cells import Cell
from appliance.workload.rules import (
    DISTILL,
    ESCALATE,
    ESCALATE_INTERNAL,
    GATHER,
    KEEP_LOCAL,
    Context,
    Rules,
    recommend,
)
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream
from tests.helpers import wait_until

POLICY = """
schema = 1
name = "workload"
default_class = "public"
[classes.secret]
keywords = ["classified"]
egress = "never"
[classes.personal]
pii = ["EMAIL"]
egress = "redacted"
[classes.public]
egress = "allowed"
[cascade]
confidence_threshold = 1.0
when_blocked = "refuse"
[precheck]
task_markers = ["step by step"]
on_hard = "cascade"
"""
PRICE_IN, PRICE_OUT = 2.0, 10.0  # USD per million tokens at the upstream
UPSTREAM_REPLY = "The upstream's own answer is forty-two."
# requests per cell: (sensitivity, complexity) -> (device, prompt for the i-th request)
CELLS: dict[tuple[str, str], tuple[str, Callable[[int], str], int]] = {
    ("public", "simple"): ("edge-device", lambda i: f"Item {i}: the capital of France is", 3),
    ("public", "complex"): (
        "edge-device",
        lambda i: f"Item {i}, step by step: two plus two is",
        3,
    ),
    ("personal", "simple"): (
        "edge-device",
        lambda i: f"Write to worker{i}@example.org that the crane",
        4,
    ),
    ("secret", "simple"): ("lab-device", lambda i: f"Classified memo {i}: the code word is", 3),
    ("secret", "complex"): ("lab-device", lambda i: f"Classified, step by step {i}: first", 1),
}


def _last_user(body: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def _agreeing_reply(state_db: Path) -> Callable[[dict[str, Any]], str]:
    """An upstream that agrees with the box on "capital of France" prompts: it answers what
    the outbox kept as the local answer (written before the escalation is sent)."""

    def reply(body: dict[str, Any]) -> str:
        prompt = _last_user(body)
        if "capital of France" not in prompt:
            return UPSTREAM_REPLY
        conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=5.0)
        try:
            [(answer,)] = conn.execute(
                "SELECT local_answer FROM outbox WHERE json_extract(messages, '$[0].content') = ?",
                (prompt,),
            ).fetchall()
        finally:
            conn.close()
        return str(answer)

    return reply


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key="sk-workload") as server:
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("workload")
    key, policy = root / "upstream.key", root / "policy.toml"
    key.write_text("sk-workload\n")
    policy.write_text(POLICY)
    settings = Settings(
        upstreams=[
            UpstreamSettings(
                name="cloud",
                kind="openai",
                base_url=fake.url,
                model="big-model",
                api_key_file=str(key),
                price_input_per_mtok=PRICE_IN,
                price_output_per_mtok=PRICE_OUT,
            )
        ],
        sync=SyncSettings(probe_interval_s=0.2, interval_s=0.2),
        tco=TcoSettings(power_watts=100, electricity_usd_per_kwh=0.2, gpu_power=False),
        policy_file=str(policy),
    )
    d = start_daemon(root / "home", gemma_source(root), settings)
    # the CLI reads the box's config.toml, as an operator's run would
    (d.home.root / "config.toml").write_text(
        f'policy_file = "{policy}"\n[[upstreams]]\nname = "cloud"\nkind = "openai"\n'
        f'base_url = "{fake.url}"\nmodel = "big-model"\napi_key_file = "{key}"\n'
        f"price_input_per_mtok = {PRICE_IN}\nprice_output_per_mtok = {PRICE_OUT}\n"
    )
    fake.reply = _agreeing_reply(d.home.state_db)
    yield d
    d.server.stop()


def _count(home: Home, sql: str) -> int:
    with sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True) as conn:
        return int(conn.execute(sql).fetchone()[0])


@pytest.fixture(scope="module")
def sent(daemon: Daemon) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Drive every cell's requests through the daemon; per cell, each request's id and
    route as the device saw them."""
    wait_until(lambda: daemon.app.state.forwarding.monitor.is_up("cloud"))
    tokens = {"edge-device": daemon.infer_token}
    tokens["lab-device"] = TokenStore(daemon.home).create("lab-device", "infer")
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (sensitivity, complexity), (device, prompt, n) in CELLS.items():
        for i in range(n):
            request_id = f"wl-{sensitivity}-{complexity}-{i}"
            response = httpx.post(
                f"{daemon.url}/v1/completions",
                json={"model": MODEL, "prompt": prompt(i), "max_tokens": 3},
                headers={"Authorization": f"Bearer {tokens[device]}", "X-Request-Id": request_id},
                timeout=120,
            )
            refused = sensitivity == "secret"  # low confidence, and it may not leave
            assert (response.status_code == 200) != refused, response.text
            out.setdefault((sensitivity, complexity), []).append(
                {
                    "id": request_id,
                    "route": "refused" if refused else response.headers["X-Appliance-Route"],
                }
            )
    total = sum(n for _, _, n in CELLS.values())
    escalated = sum(n for (s, _), (_, _, n) in CELLS.items() if s != "secret")
    # audit and ledger rows are committed off the request path
    wait_until(lambda: _count(daemon.home, "SELECT COUNT(*) FROM audit") == total)
    wait_until(
        lambda: (
            _count(daemon.home, "SELECT COUNT(*) FROM tco_ledger WHERE kind = 'request'") == total
        )
    )
    wait_until(
        lambda: (
            _count(daemon.home, "SELECT COUNT(*) FROM tco_ledger WHERE kind = 'upstream'")
            == escalated
        )
    )
    return out


@pytest.fixture
def box(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Home:
    """The daemon's home, as APPLIANCE_HOME for the CLI."""
    monkeypatch.setenv("APPLIANCE_HOME", str(daemon.home.root))
    return daemon.home


def _audit(capsys: pytest.CaptureFixture[str], home: Home, *args: str) -> dict[str, Any]:
    code = main(["audit", "--json", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return dict(json.loads(captured.out))


def _by_cell(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["sensitivity"], c["complexity"]): c for c in document["cells"]}


def _ledger(home: Home, ids: list[str]) -> tuple[int, float, float]:
    """The local tokens, box cost and API value the ledger recorded for these requests."""
    marks = ",".join("?" * len(ids))
    with sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True) as conn:
        tokens, local, api = conn.execute(
            "SELECT SUM(prompt_tokens + completion_tokens), SUM(local_cost_usd), "
            f"SUM(api_cost_usd) FROM tco_ledger WHERE kind = 'request' AND request_id IN ({marks})",
            ids,
        ).fetchone()
    return int(tokens), float(local), float(api)


def _pairs(home: Home, ids: list[str]) -> list[tuple[str, str]]:
    """(local answer, upstream answer) of these requests' escalations, from the outbox."""
    marks = ",".join("?" * len(ids))
    with sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT o.local_answer, r.text FROM audit a JOIN outbox o ON o.id = a.escalation_id "
            f"JOIN outbox_results r ON r.id = o.id WHERE a.request_id IN ({marks})",
            ids,
        ).fetchall()


def test_each_cell_counts_what_was_sent_and_recommends_from_it(
    box: Home, sent: dict[tuple[str, str], list[dict[str, Any]]], capsys
):
    home = box
    document = _audit(capsys, home, "--min-requests", "3", "--distill-pairs", "4", "--by", "device")
    assert document["requests"] == sum(len(r) for r in sent.values())
    assert document["policy"] == {
        "name": "workload",
        "confidence_threshold": 1.0,
        "on_hard": "cascade",
    }
    cells = _by_cell(document)
    assert set(cells) == set(CELLS)
    upstream_cost = (PROMPT_TOKENS * PRICE_IN + COMPLETION_TOKENS * PRICE_OUT) / 1e6
    for key, requests in sent.items():
        cell, ids = cells[key], [r["id"] for r in requests]
        n, leaves = len(requests), key[0] != "secret"
        assert cell["device"] == CELLS[key][0]
        assert cell["egress"] == {"public": "allowed", "personal": "redacted"}.get(key[0], "never")
        assert [r["route"] for r in requests] == ["escalated" if leaves else "refused"] * n
        assert cell["requests"] == n
        assert cell["routes"] == {
            "local": 0,
            "escalated": n if leaves else 0,
            "queued": 0,
            "refused": 0 if leaves else n,
        }
        assert cell["escalation_rate"] == (1.0 if leaves else None)  # refused: not decided
        tokens, local_cost, api_value = _ledger(home, ids)
        assert cell["tokens"]["local"] == tokens > 0
        assert cell["tokens"]["upstream"] == (
            n * (PROMPT_TOKENS + COMPLETION_TOKENS) if leaves else 0
        )
        assert cell["cost_usd"]["upstream"] == pytest.approx(n * upstream_cost if leaves else 0)
        assert cell["cost_usd"]["local"] == pytest.approx(local_cost, abs=1e-6)
        assert local_cost > 0  # 100 W at 0.20 USD/kWh for the model's time
        assert cell["cost_usd"]["total"] == pytest.approx(
            cell["cost_usd"]["local"] + cell["cost_usd"]["upstream"], abs=2e-6
        )
        assert cell["cost_usd"]["api_value_of_local"] == pytest.approx(api_value, abs=1e-6)
        conf = cell["confidence"]
        assert conf["answers"] == n and conf["below_threshold"] == 1.0  # threshold 1.0
        assert conf["p10"] <= conf["median"] <= conf["p90"] < 1.0
        pairs = _pairs(home, ids)
        assert cell["agreement"]["golden_pairs"] == len(pairs) == (n if leaves else 0)
        assert cell["agreement"]["trainable_pairs"] == len(pairs)
        if pairs:
            f1 = sum(token_f1(a, b) for a, b in pairs) / len(pairs)
            exact = sum(exact_match(a, b) for a, b in pairs) / len(pairs)
            assert cell["agreement"]["token_f1"] == pytest.approx(f1, abs=1e-4)
            assert cell["agreement"]["exact_match"] == pytest.approx(exact, abs=1e-4)
    agree = cells["public", "simple"]["agreement"]
    assert agree["token_f1"] == 1.0 and agree["exact_match"] == 1.0  # it said what the box said
    for key in (("public", "complex"), ("personal", "simple")):
        assert cells[key]["agreement"]["token_f1"] < 0.8

    advice = {key: c["recommendation"] for key, c in cells.items()}
    assert advice["public", "simple"]["action"] == KEEP_LOCAL
    assert '[classes.public]\negress = "never"' in advice["public", "simple"]["change"]
    # ... which would keep the complex public prompts local too: the advice says so
    assert (
        "other cells advise otherwise (complex / edge-device: escalate)"
        in advice["public", "simple"]["why"]
    )
    assert advice["public", "complex"]["action"] == ESCALATE
    assert '[precheck]\non_hard = "skip-local"' in advice["public", "complex"]["change"]
    assert advice["personal", "simple"]["action"] == DISTILL
    assert "appliance distill export" in advice["personal", "simple"]["change"]
    assert advice["secret", "simple"]["action"] == ESCALATE_INTERNAL
    change = advice["secret", "simple"]["change"]
    assert '[classes.secret]\negress = "internal"' in change and 'perimeter = "internal"' in change
    assert (
        advice["secret", "complex"]["action"] == GATHER
        and advice["secret", "complex"]["change"] is None
    )

    # at the default 50 pairs for a fine-tuning set, the personal cell only escalates
    default = _by_cell(_audit(capsys, home, "--min-requests", "3"))
    assert default["personal", "simple"]["recommendation"]["action"] == ESCALATE
    assert default["personal", "simple"]["recommendation"]["change"] is None
    assert "device" not in default["personal", "simple"]


def test_the_csv_and_the_terminal_table_say_the_same(
    box: Home, sent: dict[tuple[str, str], list[dict[str, Any]]], capsys, tmp_path: Path
):
    out = tmp_path / "cells.csv"
    document = _audit(capsys, box, "--csv", str(out), "--by", "route")
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(document["cells"]) == len(CELLS)  # one route per cell here
    for row, cell in zip(rows, document["cells"], strict=True):
        assert (row["sensitivity"], row["complexity"], row["split"]) == (
            cell["sensitivity"],
            cell["complexity"],
            cell["route"],
        )
        assert int(row["requests"]) == cell["requests"]
        assert int(row["local_tokens"]) == cell["tokens"]["local"]
        assert float(row["cost_usd"]) == pytest.approx(cell["cost_usd"]["total"])
        assert row["action"] == cell["recommendation"]["action"]
        assert row["change"] == (cell["recommendation"]["change"] or "")
    assert main(["audit", "--min-requests", "3"]) == 0
    screen = capsys.readouterr().out
    assert "workloads under policy workload" in screen
    for sensitivity, complexity in CELLS:
        assert f"{sensitivity} / {complexity}" in screen
    assert 'egress = "never"' in screen


def test_since_and_bad_options(box: Home, sent, capsys, tmp_path: Path):
    later = _audit(capsys, box, "--since", "2999-01-01")
    assert later["cells"] == [] and later["requests"] == 0
    for args, words in (
        (["--by", "colour"], "--by 'colour'"),
        (["--since", "yesterday"], "--since"),
        (["--agree", "1.5"], "--agree"),
        (["--csv", str(tmp_path / "no-such-folder" / "cells.csv")], "cannot write"),
    ):
        assert main(["audit", *args]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    assert not (tmp_path / "no-such-folder").exists()
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_box_that_governed_nothing(home: Home, capsys):
    assert _audit(capsys, home)["cells"] == []
    assert main(["audit"]) == 0
    assert "no governed requests" in capsys.readouterr().out
    assert not home.state_db.exists()  # the audit writes nothing


# -- the rules alone, on cells built by hand ----------------------------------------------

CONTEXT = Context(
    threshold=0.5,
    on_hard="cascade",
    egress={"public": "allowed", "secret": "never", "lab": "internal"},
    internal=(),
    external=("cloud",),
)


def _cell(
    sensitivity: str = "public",
    complexity: str = "simple",
    *,
    local: int = 0,
    escalated: int = 0,
    confidences: tuple[float, ...] = (),
    pairs: tuple[float, ...] = (),
    trainable: int = 0,
) -> Cell:
    cell = Cell(sensitivity, complexity)
    cell.routes.update({"local": local, "escalated": escalated})
    cell.confidences.extend(confidences)
    cell.pairs, cell.f1_sum, cell.trainable_pairs = len(pairs), sum(pairs), trainable
    return cell


def test_the_rules_in_their_order():
    rules = Rules()
    assert recommend(_cell(local=4), CONTEXT, rules).action == GATHER
    # agreement decides before confidence does
    kept = recommend(_cell(escalated=10, pairs=(0.9, 0.8, 1.0)), CONTEXT, rules)
    assert kept.action == KEEP_LOCAL and 'egress = "never"' in (kept.change or "")
    already = recommend(_cell(local=9, escalated=1, pairs=(1.0, 1.0, 1.0)), CONTEXT, rules)
    assert already.action == KEEP_LOCAL and already.change is None  # 10 % escalated already
    low = (0.1, 0.2, 0.3)
    distil = recommend(_cell(escalated=60, pairs=low * 20, trainable=50), CONTEXT, rules)
    assert distil.action == DISTILL
    barred = recommend(_cell(escalated=60, pairs=low * 20, trainable=49), CONTEXT, rules)
    assert barred.action == ESCALATE and barred.change is None  # simple: the cascade does it
    hard = recommend(_cell("public", "complex", escalated=5, pairs=low), CONTEXT, rules)
    assert hard.action == ESCALATE and 'on_hard = "skip-local"' in (hard.change or "")
    skipping = Context(**{**CONTEXT.__dict__, "on_hard": "skip-local"})
    assert (
        recommend(_cell("public", "complex", escalated=5, pairs=low), skipping, rules).change
        is None
    )
    # no pairs: the local confidence speaks
    unsure = (0.1, 0.2, 0.3, 0.9, 0.1)
    inside = recommend(_cell("secret", local=5, confidences=unsure), CONTEXT, rules)
    assert inside.action == ESCALATE_INTERNAL and "[[upstreams]]" in (inside.change or "")
    onprem = Context(**{**CONTEXT.__dict__, "internal": ("onprem",)})
    ready = recommend(_cell("secret", local=5, confidences=unsure), onprem, rules)
    assert ready.action == ESCALATE_INTERNAL and "[[upstreams]]" not in (ready.change or "")
    assert 'egress = "internal"' in (ready.change or "")
    # an internal class with an internal upstream may leave: the cascade escalates it
    assert (
        recommend(_cell("lab", escalated=5, confidences=unsure), onprem, rules).action == ESCALATE
    )
    sure = (0.9, 0.8, 0.7, 0.6, 0.1)
    assert (
        recommend(_cell("secret", local=5, confidences=sure), CONTEXT, rules).action == KEEP_LOCAL
    )
    waiting = recommend(_cell(local=2, escalated=3, confidences=unsure), CONTEXT, rules)
    assert waiting.action == ESCALATE and "0 golden pairs" in waiting.why
