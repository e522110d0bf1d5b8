"""`outbox show/retry` with an id prefix, and `outbox purge` that asks and keeps golden answers.

Issue 19: purge deleted every done item at once, the golden answers distillation needs
among them; show needed the whole id.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator

import pytest

from appliance.cli import main
from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.home import Home
from appliance.outbox import Outbox
from appliance.settings import OutboxSettings

CONFIG = """
[[upstreams]]
name = "cloud"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "big"

[[upstreams]]
name = "no-training"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "big"
trainable = false
"""


def esc(item_id: str, upstream: str = "cloud") -> Escalation:
    return Escalation(
        id=item_id,
        created_at="2030-01-02T03:04:05Z",
        upstream=upstream,
        endpoint="chat",
        messages=({"role": "user", "content": "Which valve?"},),
        mapping={},
    )


@pytest.fixture
def box(home: Home) -> Iterator[Outbox]:
    """Two golden answers (trainable upstream), one from a non-trainable one, one failed,
    one still queued; ids chosen so that two share a prefix."""
    home.config_file.write_text(CONFIG)
    outbox = Outbox(home, OutboxSettings())
    outbox.enqueue_many(
        [
            esc("abcd1111-0000-4000-8000-000000000001"),
            esc("abcd2222-0000-4000-8000-000000000002"),
            esc("beef0000-0000-4000-8000-000000000003", "no-training"),
            esc("cafe0000-0000-4000-8000-000000000004"),
            esc("d00d0000-0000-4000-8000-000000000005"),
        ]
    )
    for item_id, upstream in (
        ("abcd1111-0000-4000-8000-000000000001", "cloud"),
        ("abcd2222-0000-4000-8000-000000000002", "cloud"),
        ("beef0000-0000-4000-8000-000000000003", "no-training"),
    ):
        outbox.complete(item_id, "s", UpstreamAnswer("Valve 3.", upstream, "big"), 0.001)
    outbox.fail("cafe0000-0000-4000-8000-000000000004", "s", "HTTP 400: refused")
    yield outbox
    outbox.close()


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_show_and_retry_take_a_unique_prefix(box: Outbox, capsys):
    assert main(["outbox", "show", "beef", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "beef0000-0000-4000-8000-000000000003"
    assert main(["outbox", "retry", "cafe00", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "queued"
    assert box.get("cafe0000-0000-4000-8000-000000000004").state == "queued"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("prefix", "phrase"),
    [
        (
            "abcd",
            "id prefix abcd is ambiguous: abcd1111-0000-4000-8000-000000000001, "
            "abcd2222-0000-4000-8000-000000000002; give more",
        ),
        ("f00d", "no outbox item has an id starting with f00d"),
        ("ab", "give at least 4 characters"),
    ],
)
def test_an_ambiguous_or_unknown_prefix_is_refused(box: Outbox, capsys, prefix, phrase):
    assert main(["outbox", "show", prefix]) == 1
    assert phrase in _error_line(capsys)
    assert main(["outbox", "retry", prefix]) == 1
    assert phrase in _error_line(capsys)


def test_purge_without_a_terminal_refuses_without_yes(box: Outbox, capsys):
    before = box.counts()
    assert main(["outbox", "purge"]) == 2  # stdin is no TTY under pytest
    line = _error_line(capsys)
    assert "no terminal to ask on; add --yes" in line
    assert "delete 2 outbox item(s)" in line and "keeping 2 with golden answers" in line
    assert box.counts() == before  # nothing deleted


def test_purge_keeps_golden_answers_unless_told(box: Outbox, capsys):
    assert main(["outbox", "purge", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "purged 2 item(s)" in out and "kept 2 done item(s) with golden answers" in out
    left = {i.id: i.state for i in box.list()}
    # the golden answers and the queued item stay; the non-trainable answer and the failure go
    assert left == {
        "abcd1111-0000-4000-8000-000000000001": "done",
        "abcd2222-0000-4000-8000-000000000002": "done",
        "d00d0000-0000-4000-8000-000000000005": "queued",
    }
    golden = [item.id for item, _ in box.golden()]
    assert golden == [
        "abcd1111-0000-4000-8000-000000000001",
        "abcd2222-0000-4000-8000-000000000002",
    ]
    assert main(["outbox", "purge", "--yes", "--include-golden", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "purged": 2,
        "states": ["done", "expired", "failed"],
        "kept_golden": 0,
    }
    # a queued item is never purged
    assert {i.id for i in box.list()} == {"d00d0000-0000-4000-8000-000000000005"}


def _purge_on_a_terminal(home: Home, answer: bytes) -> tuple[int, str]:
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "outbox", "purge", "--state", "failed"],
        env={**os.environ, "APPLIANCE_HOME": str(home.root)},
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    os.write(master, answer)
    out, err = process.communicate(timeout=60)
    os.close(master)
    return process.returncode, (out + err).decode()


def test_purge_on_a_terminal_asks_first(box: Outbox, home: Home):
    code, text = _purge_on_a_terminal(home, b"n\n")
    assert code == 1 and "delete 1 outbox item(s) (failed)" in text and "nothing purged" in text
    assert box.get("cafe0000-0000-4000-8000-000000000004") is not None
    code, text = _purge_on_a_terminal(home, b"y\n")
    assert code == 0 and "purged 1 item(s) (failed)" in text
    assert box.get("cafe0000-0000-4000-8000-000000000004") is None
