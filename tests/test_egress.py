"""What leaves the box: the real daemon, the shipped default policy, a fake upstream that
records every byte it is sent, on both upstream kinds, streaming and not.

Each case asks for the upstream (``escalate: prefer``) with a personal value spelled the
way people type it, in a message or in a stop string. Then, from the fake upstream's log,
no form of the value arrived: the recorded bodies are normalised (NFKC, format characters
removed, every separator dropped) and searched for the value normalised the same way. A
case either stays on the box (nothing sent for it at all) or leaves redacted (something
sent, with a placeholder where the value was): each case says which, so the test cannot
pass by sending nothing when something should have gone.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.governance.audit import read_audit
from appliance.governance.escalation import FORWARDED_FIELDS
from appliance.settings import ServerSettings, Settings, SyncSettings, UpstreamSettings
from tests.daemon import MODEL, Daemon, gemma_source, start_daemon
from tests.fake_upstream import FakeUpstream

_SEPARATORS = re.compile(r"[\s\-_.·/]+")


def compact(text: str) -> str:
    """`text` as a detector of leaks sees it: NFKC, no format characters, no separators,
    lower case: a card in fullwidth digits with dashes compacts like the plain one)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return _SEPARATORS.sub("", text).lower()


@dataclass(frozen=True)
class Case:
    name: str
    messages: list[dict[str, Any]]
    value: str  # what must not arrive, in any spelling
    leaves: bool  # True: sent with a placeholder; False: nothing is sent at all
    stop: list[str] | None = None


# the card in fullwidth digits (U+FF10..U+FF19), made here: the linter flags look-alikes
FULLWIDTH_CARD = "4111 1111 1111 1111".translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


CASES = [
    # stop strings are classified like message text (item 1)
    Case("card-in-stop", [user("Say hello.")], "4111111111111111", False,
         stop=["4111 1111 1111 1111"]),
    Case("ssn-in-stop", [user("Say hello.")], "536228726", False, stop=["SSN 536-22-8726"]),
    Case("key-in-stop", [user("Say hello.")], "sk-proj-9fQ2xLmN7vR4tY8wZ1aB3cD5eF6gH0jK", False,
         stop=["sk-proj-9fQ2xLmN7vR4tY8wZ1aB3cD5eF6gH0jK"]),
    Case("email-in-stop", [user("Say hello.")], "ana.ruiz@example.com", True,
         stop=["ana.ruiz@example.com"]),
    # everyday spellings (item 2)
    Case("fullwidth-card", [user(f"My card is {FULLWIDTH_CARD}, charge it.")],
         "4111111111111111", False),
    Case("nbsp-card", [user("Card 4111\u00a01111\u00a01111\u00a01111 please.")],
         "4111111111111111", False),
    Case("thin-space-card", [user("Card 4111\u20091111\u202f1111\u20091111 please.")],
         "4111111111111111", False),
    Case("double-space-card", [user("Pay with 4111  1111  1111  1111 today.")],
         "4111111111111111", False),
    Case("dotted-card", [user("Pay with 4111..1111..1111..1111 today.")],
         "4111111111111111", False),
    Case("underscored-card", [user("Pay with 4111_1111_1111_1111 today.")],
         "4111111111111111", False),
    Case("zero-width-card", [user("Pay with 4111\u200b1111\u200b1111\u200b1111 today.")],
         "4111111111111111", False),
    Case("zero-width-keyword", [user("My pass\u200bword is Tr0ub4dor&3x, keep it.")],
         "Tr0ub4dor&3x", False),
    Case("nb-hyphen-ssn", [user("SSN 536\u201122\u20118726 on file.")], "536228726", False),
    Case("nb-hyphen-phone", [user("Call me at +1 415\u2011555\u20112671 tonight.")],
         "4155552671", True),
    Case("lower-case-iban", [user("Wire it to de89 3704 0044 0532 0130 00 now.")],
         "de89370400440532013000", False),
    Case("hyphen-iban", [user("Wire it to DE89-3704-0044-0532-0130-00 now.")],
         "de89370400440532013000", False),
    Case("idn-email", [user("Write to jürgen.müller@beispiel.de about the pump.")],
         "jürgen.müller@beispiel.de", True),
    Case("fullwidth-at-email", [user("Write to ana.ruiz\uff20example.com about the pump.")],
         "ana.ruiz@example.com", True),
    # context across messages (item 3)
    Case("card-split-over-messages",
         [user("My card: 4111 1111"), {"role": "assistant", "content": "Go on."},
          user("1111 1111")], "4111111111111111", False),
    # a card word makes any Luhn-valid number a card (item 4)
    Case("card-unknown-prefix", [user("My card number is 1900 1234 5678 9014.")],
         "1900123456789014", False),
]


@pytest.fixture(scope="module", params=["openai", "anthropic"])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daemon, FakeUpstream]]:
    kind = request.param
    with FakeUpstream(api_key="sk-egress") as fake:
        root = tmp_path_factory.mktemp(f"egress-{kind}")
        key = root / "upstream.key"
        key.write_text("sk-egress\n")
        settings = Settings(
            server=ServerSettings(max_prompt_tokens=512),
            upstreams=[
                UpstreamSettings(
                    name="cloud",
                    kind=kind,
                    base_url=fake.url,
                    model="big-model",
                    api_key_file=str(key),
                )
            ],
            sync=SyncSettings(
                probe_interval_s=0.2, interval_s=0.2, backoff_base_s=0.1, backoff_max_s=0.5
            ),
        )  # no policy_file: the shipped default policy
        daemon = start_daemon(root / "home", gemma_source(root), settings)
        try:
            monitor = daemon.app.state.forwarding.monitor
            _wait_until(lambda: monitor.is_up("cloud"))
            yield daemon, fake
        finally:
            daemon.server.stop()


def _wait_until(condition: Any, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _sent(fake: FakeUpstream, since: int) -> list[Any]:
    """The bodies of the inference requests (not probes) the fake got after `since`."""
    return [r.body for r in fake.requests[since:] if r.method == "POST"]


def _ask(daemon: Daemon, body: dict[str, Any], stream: bool) -> httpx.Response:
    payload = {"model": MODEL, "max_tokens": 4, "appliance": {"escalate": "prefer"}, **body}
    if stream:
        payload["stream"] = True
    return httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=120,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_no_personal_value_reaches_the_upstream_in_any_spelling(setup, stream: bool):
    daemon, fake = setup
    leaks, wrong_route = [], []
    for case in CASES:
        before = len(fake.requests)
        body: dict[str, Any] = {"messages": case.messages}
        if case.stop is not None:
            body["stop"] = case.stop
        response = _ask(daemon, body, stream)
        assert response.status_code == 200, (case.name, response.text)
        sent = _sent(fake, before)
        arrived = compact(json.dumps(sent, ensure_ascii=False))
        if compact(case.value) in arrived:
            leaks.append(case.name)
        route = response.headers["X-Appliance-Route"]
        if case.leaves and (route != "escalated" or not sent or "<" not in arrived):
            wrong_route.append((case.name, route, "expected a redacted escalation"))
        if not case.leaves and (sent or route != "local"):
            wrong_route.append((case.name, route, "expected to stay on the box"))
    assert leaks == []
    assert wrong_route == []


def test_a_redacted_stop_string_leaves_as_its_placeholder(setup):
    daemon, fake = setup
    before = len(fake.requests)
    response = _ask(
        daemon,
        {"messages": [user("Write to ana.ruiz@example.com.")], "stop": ["ana.ruiz@example.com"]},
        stream=False,
    )
    assert response.headers["X-Appliance-Route"] == "escalated"
    [body] = _sent(fake, before)
    stops = body.get("stop") or body.get("stop_sequences")
    assert stops == ["<EMAIL_1>"]  # the same value, the same placeholder as in the message
    assert "<EMAIL_1>" in json.dumps(body["messages"])


def test_only_the_forwarded_fields_leave(setup):
    """Fields a device may send but that are not forwarded stay on the box, canaries and all."""
    daemon, fake = setup
    canary = "CANARY-7f3e"
    before = len(fake.requests)
    response = _ask(
        daemon,
        {
            "messages": [
                {"role": "user", "content": "Say hello.", "name": f"{canary}-name"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "And goodbye."},
                        {"type": "image_url", "image_url": {"url": f"https://x/{canary}.png"}},
                    ],
                },
            ],
            "user": f"{canary}-user",
            "metadata": {"ticket": f"{canary}-meta"},
            "seed": 7,
            "logit_bias": {"50256": -100},
            "tools": [{"type": "function", "function": {"name": f"{canary}_tool"}}],
            "response_format": {"type": "json_object"},
            "stop": ["END"],
        },
        stream=False,
    )
    assert response.status_code == 200 and response.headers["X-Appliance-Route"] == "escalated"
    [sent] = fake.requests[before:]
    assert canary not in json.dumps(sent.body) and canary not in json.dumps(sent.headers)
    fields = {"model", "messages", "max_tokens", "temperature", "top_p", "stop",
              "stop_sequences", "system"}
    assert set(sent.body) <= fields, set(sent.body) - fields
    for message in sent.body["messages"]:
        assert set(message) == {"role", "content"}
    assert {f.split(".")[0] for f in FORWARDED_FIELDS} <= {"messages", "stop", "max_tokens",
                                                            "temperature", "top_p"}


def test_limits_are_checked_before_any_route(setup):
    """A prompt over max_prompt_tokens is a 400 on `prefer` too, and nothing is paid for."""
    daemon, fake = setup
    before = len(fake.requests)
    long_prompt = "The pump in bay seven needs a new seal. " * 200  # ~1,800 tokens > 512
    response = _ask(daemon, {"messages": [user(long_prompt)]}, stream=False)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "limit_exceeded"
    assert _sent(fake, before) == []


@pytest.mark.parametrize(
    "body, where",
    [
        ({"messages": [user("hi")], "stop": ["x" * 257]}, "stop"),
        ({"messages": [user("hi")], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [user("hi")] * 1025}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 42}]}]},
         "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}]},
         "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages"),
        ({"messages": [user("lone \ud800 surrogate")]}, "messages"),
        ({"messages": [user("hi")], "stop": ["\udfff"]}, "stop"),
    ],
    ids=["long-stop", "five-stops", "too-many-messages", "int-text-part", "dict-text-part",
         "text-part-without-text", "lone-surrogate", "surrogate-stop"],
)
def test_malformed_requests_are_refused_at_the_door_and_audited(setup, body, where):
    daemon, fake = setup
    before = len(fake.requests)
    raw = json.dumps({"model": MODEL, "appliance": {"escalate": "prefer"}, **body})
    response = httpx.post(
        f"{daemon.url}/v1/chat/completions",
        content=raw.encode(),
        headers={
            "Authorization": f"Bearer {daemon.infer_token}",
            "Content-Type": "application/json",
        },
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) >= {"type", "message", "code"} and error["code"] == "invalid_request"
    assert error["param"].startswith(where)
    assert _sent(fake, before) == []
    daemon.app.state.governor.audit.flush()
    [row] = read_audit(daemon.home, limit=1)
    assert row["route"] == "refused" and row["reasons"][0].startswith("invalid request: ")
    assert row["device"] == "edge-device"


def test_the_state_database_holds_no_value_of_any_case(setup):
    """Runs after the egress cases (file order): the outbox keeps egress text only."""
    daemon, _ = setup
    daemon.app.state.governor.audit.flush()
    data = b"".join(p.read_bytes() for p in Path(daemon.home.root).glob("state.db*"))
    for case in CASES:
        texts = [*(str(m["content"]) for m in case.messages), *(case.stop or [])]
        for text in [case.value, *(t for t in texts if compact(case.value) in compact(t))]:
            assert text.encode() not in data, case.name
