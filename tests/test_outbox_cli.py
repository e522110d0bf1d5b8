"""`appliance outbox list|show|retry|purge`: what an operator sees, and never a PII value."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from appliance.cli import main
from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.home import Home
from appliance.outbox import Outbox
from appliance.settings import OutboxSettings

PII = "jordan.blake@example.net"


def esc(priority: int = 0) -> Escalation:
    return Escalation(
        id=str(uuid.uuid4()),
        created_at="2030-01-02T03:04:05Z",
        upstream="openai-main",
        endpoint="chat",
        messages=({"role": "user", "content": "Write to <EMAIL_1> today."},),
        mapping={"<EMAIL_1>": PII, "<PERSON_1>": "Jordan Blake"},
        priority=priority,
    )


@pytest.fixture
def filled(home: Home) -> Iterator[tuple[Outbox, list[Escalation]]]:
    items = [esc(), esc(2), esc()]
    outbox = Outbox(home, OutboxSettings())
    outbox.enqueue_many(items)
    outbox.complete(
        items[0].id, "s", UpstreamAnswer("Sent to <EMAIL_1>.", "openai-main", "gpt-4o"), 0.003
    )
    outbox.fail(items[1].id, "s", "HTTP 400: refused")
    yield outbox, items
    outbox.close()


def test_list(filled, capsys: pytest.CaptureFixture[str]):
    _, items = filled
    assert main(["outbox", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {i["id"] for i in listed} == {i.id for i in items}
    assert {i["state"] for i in listed} == {"done", "failed", "queued"}
    assert main(["outbox", "list", "--state", "failed", "--json"]) == 0
    [failed] = json.loads(capsys.readouterr().out)
    assert (failed["id"], failed["last_error"]) == (items[1].id, "HTTP 400: refused")
    assert main(["outbox", "list", "--limit", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main(["outbox", "list"]) == 0
    table = capsys.readouterr().out
    assert items[1].id in table and "HTTP 400: refused" in table and "next attempt" in table
    assert PII not in table


def test_show_lists_placeholder_names_only(filled, capsys: pytest.CaptureFixture[str]):
    _, items = filled
    assert main(["outbox", "show", items[0].id, "--json"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["placeholders"] == ["<EMAIL_1>", "<PERSON_1>"]
    assert shown["result"]["text"] == "Sent to <EMAIL_1>." and shown["state"] == "done"
    assert PII not in out and "Jordan Blake" not in out
    assert main(["outbox", "show", items[0].id]) == 0
    out = capsys.readouterr().out
    assert "<EMAIL_1>, <PERSON_1>" in out and "Sent to <EMAIL_1>." in out
    assert PII not in out and "Jordan Blake" not in out


def test_retry_and_purge(filled, capsys: pytest.CaptureFixture[str]):
    outbox, items = filled
    assert main(["outbox", "retry", items[1].id]) == 0
    assert "queued" in capsys.readouterr().out
    assert outbox.get(items[1].id).state == "queued"  # type: ignore[union-attr]
    outbox.fail(items[1].id, "s", "HTTP 400 again")
    assert main(["outbox", "retry", items[1].id, "--json"]) == 0
    retried = json.loads(capsys.readouterr().out)
    assert (retried["id"], retried["state"]) == (items[1].id, "queued")
    assert main(["outbox", "purge", "--state", "done", "--json", "--yes"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "purged": 1,
        "states": ["done"],
        "kept_golden": 0,  # openai-main is no configured (trainable) upstream
    }
    assert main(["outbox", "purge", "--yes"]) == 0
    assert "purged 0 item(s)" in capsys.readouterr().out
    assert outbox.counts()["queued"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["outbox", "show", "0b7c7f0e-0000-4000-8000-000000000000"], "no outbox item"),
        (["outbox", "retry", "0b7c7f0e-0000-4000-8000-000000000000"], "no outbox item"),
        (["outbox", "retry", "QUEUED"], "only failed or expired"),
    ],
)
def test_refusals_are_one_line(filled, capsys: pytest.CaptureFixture[str], argv, message):
    _, items = filled
    argv = [items[2].id if a == "QUEUED" else a for a in argv]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_bad_state_is_usage_error(home: Home, capsys: pytest.CaptureFixture[str]):
    assert main(["outbox", "list", "--state", "lost"]) == 2
    assert main(["outbox", "purge", "--state", "queued"]) == 2
