"""UpstreamClient against the fake upstream: request shapes, answers, and every fault.

The point of the fault tests is the ``retryable`` bit: the outbox keeps an item after a
retryable failure and parks it after a permanent one, so a wrong bit either loses queued
work or hammers an upstream with a request it will never accept.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ConfigError
from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.settings import UpstreamSettings
from appliance.upstream import UpstreamClient, UpstreamError
from appliance.upstream.client import anthropic_messages
from appliance.upstream.errors import parse_retry_after
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, FakeUpstream

KEY = "sk-test-SECRET-4f9a1c0e77"
KINDS = ["openai", "anthropic"]


def make_settings(
    url: str, kind: str, tmp_path: Path, key: str | None = KEY, **extra: Any
) -> UpstreamSettings:
    key_file = ""
    if key is not None:
        path = tmp_path / f"{kind}.key"
        path.write_text(f"  {key}\n")
        key_file = str(path)
    return UpstreamSettings(
        name=f"{kind}-main",
        kind=kind,
        base_url=url,
        model="big-model",
        api_key_file=key_file,
        **extra,
    )


def make_item(**extra: Any) -> Escalation:
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "created_at": "2025-01-01T00:00:00Z",
        "upstream": "x",
        "endpoint": "chat",
        "messages": ({"role": "user", "content": "write to <EMAIL_1> about <PERSON_1>"},),
        "mapping": {"<EMAIL_1>": "ann@example.com", "<PERSON_1>": "Ann"},
    }
    fields.update(extra)
    return Escalation(**fields)


async def _complete(settings: UpstreamSettings, item: Escalation, timeout_s: float) -> Any:
    async with UpstreamClient(settings, timeout_s=timeout_s, probe_timeout_s=timeout_s) as c:
        return await c.complete(item)


async def _probe(settings: UpstreamSettings, timeout_s: float) -> None:
    async with UpstreamClient(settings, timeout_s=timeout_s, probe_timeout_s=timeout_s) as c:
        await c.probe()


def complete(settings: UpstreamSettings, item: Escalation, timeout_s: float = 3.0) -> Any:
    return asyncio.run(_complete(settings, item, timeout_s))


def probe(settings: UpstreamSettings, timeout_s: float = 3.0) -> None:
    asyncio.run(_probe(settings, timeout_s))


def failure(action: Any, *args: Any, **kwargs: Any) -> UpstreamError:
    """The UpstreamError that ``action`` raises; checks it never shows the key."""
    with pytest.raises(UpstreamError) as info:
        action(*args, **kwargs)
    error = info.value
    assert KEY not in str(error) and KEY not in repr(error)
    assert "\n" not in str(error)
    return error


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key=KEY) as server:
        yield server


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


# -- request shapes and answers -------------------------------------------------------


def test_openai_request_shape(fake: FakeUpstream, tmp_path: Path) -> None:
    item = make_item(
        messages=(
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi <EMAIL_1>"},
        ),
        max_tokens=42,
        temperature=0.5,
        top_p=0.9,
    )
    answer = complete(make_settings(fake.url, "openai", tmp_path), item)
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["idempotency-key"] == item.id
    assert "x-api-key" not in request.headers
    assert request.body == {
        "model": "big-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi <EMAIL_1>"},
        ],
        "max_tokens": 42,
        "temperature": 0.5,
        "top_p": 0.9,
    }  # no "stop": omitted when empty
    assert answer == UpstreamAnswer(
        text="upstream: hi <EMAIL_1>",
        upstream="openai-main",
        model="big-model",
        prompt_tokens=PROMPT_TOKENS,
        completion_tokens=COMPLETION_TOKENS,
        finish_reason="stop",
    )


def test_openai_sends_stop(fake: FakeUpstream, tmp_path: Path) -> None:
    complete(make_settings(fake.url, "openai", tmp_path), make_item(stop=("END", "\n\n")))
    assert fake.requests[0].body["stop"] == ["END", "\n\n"]


def test_anthropic_request_shape(fake: FakeUpstream, tmp_path: Path) -> None:
    item = make_item(
        messages=(
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "user", "content": "second <EMAIL_1>"},
            {"role": "assistant", "content": "ok"},
            {"role": "system", "content": "and polite"},
            {"role": "user", "content": "third"},
        ),
        max_tokens=64,
        temperature=0.2,
        stop=("END",),
    )
    answer = complete(make_settings(fake.url, "anthropic", tmp_path), item)
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["idempotency-key"] == item.id
    assert "authorization" not in request.headers
    assert request.body == {
        "model": "big-model",
        "max_tokens": 64,
        "system": "be brief\n\nand polite",
        "messages": [
            {"role": "user", "content": "first\n\nsecond <EMAIL_1>"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "third"},
        ],
        "temperature": 0.2,
        "stop_sequences": ["END"],
    }
    assert answer.text == "upstream: third"
    assert (answer.prompt_tokens, answer.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert (answer.upstream, answer.model, answer.finish_reason) == (
        "anthropic-main",
        "big-model",
        "stop",
    )


def test_anthropic_top_p_only_when_not_neutral(fake: FakeUpstream, tmp_path: Path) -> None:
    complete(make_settings(fake.url, "anthropic", tmp_path), make_item(top_p=0.8))
    assert fake.requests[0].body["top_p"] == 0.8


def test_anthropic_messages_roles() -> None:
    system, messages = anthropic_messages(
        [
            {"role": "developer", "content": "rules"},
            {"role": "tool", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    )
    assert system == "rules"
    assert messages == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c\n\nd"},
    ]


def test_response_model_is_reported(tmp_path: Path, kind: str) -> None:
    with FakeUpstream(model="served-2025") as server:
        answer = complete(make_settings(server.url, kind, tmp_path, key=None), make_item())
        assert answer.model == "served-2025"
        headers = server.requests[0].headers
        assert "authorization" not in headers and "x-api-key" not in headers


def test_custom_reply_and_placeholders(fake: FakeUpstream, tmp_path: Path, kind: str) -> None:
    fake.reply = lambda body: "Dear <PERSON_1>, done."
    answer = complete(make_settings(fake.url, kind, tmp_path), make_item())
    assert answer.text == "Dear <PERSON_1>, done."


def test_empty_answer_is_permanent(fake: FakeUpstream, tmp_path: Path, kind: str) -> None:
    fake.reply = lambda body: ""
    error = failure(complete, make_settings(fake.url, kind, tmp_path), make_item())
    assert not error.retryable and "no text" in str(error)


def test_base_url_trailing_slash(fake: FakeUpstream, tmp_path: Path) -> None:
    complete(make_settings(fake.url + "/", "openai", tmp_path), make_item())
    assert fake.requests[0].path == "/v1/chat/completions"


# -- idempotency -----------------------------------------------------------------------


def test_retry_after_lost_answer_is_not_accepted_twice(
    fake: FakeUpstream, tmp_path: Path, kind: str
) -> None:
    settings = make_settings(fake.url, kind, tmp_path)
    item = make_item()
    fake.lose_answer()
    assert failure(complete, settings, item).retryable
    answer = complete(settings, item)
    again = complete(settings, item)
    assert answer == again
    assert len(fake.requests) == 3
    assert fake.accepted_keys == {item.id: 1}


# -- the API key -----------------------------------------------------------------------


def test_key_never_in_repr_or_messages(tmp_path: Path, kind: str) -> None:
    # The fake echoes a wrong key in its 401 body, as real APIs do.
    with FakeUpstream(api_key="sk-the-right-one") as server:
        settings = make_settings(server.url, kind, tmp_path)
        client = UpstreamClient(settings, timeout_s=1, probe_timeout_s=1)
        assert KEY not in repr(client) and KEY not in str(client)
        asyncio.run(client.aclose())
        error = failure(complete, settings, make_item())
        assert not error.retryable and error.status == 401
        assert "API key" in str(error)
        error = failure(probe, settings)
        assert not error.retryable and "check the API key" in str(error)


def test_missing_key_file(tmp_path: Path) -> None:
    settings = UpstreamSettings(
        name="u", kind="openai", base_url="http://127.0.0.1:9/v1", model="m",
        api_key_file=str(tmp_path / "absent.key"),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"absent\.key"):
        UpstreamClient(settings, timeout_s=1, probe_timeout_s=1)


@pytest.mark.parametrize("content", [b"", b"  \n", b"two words\n", b"\xff\xfe"])
def test_bad_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    settings = UpstreamSettings(
        name="u", kind="openai", base_url="http://127.0.0.1:9/v1", model="m",
        api_key_file=str(path),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"bad\.key") as info:
        UpstreamClient(settings, timeout_s=1, probe_timeout_s=1)
    assert "two words" not in str(info.value)


# -- HTTP statuses ---------------------------------------------------------------------

RETRYABLE = [408, 409, 425, 429, 500, 502, 503, 504]
PERMANENT = [400, 401, 403, 404, 413, 422]


@pytest.mark.parametrize("status", RETRYABLE + PERMANENT)
def test_status_classification(fake: FakeUpstream, tmp_path: Path, status: int) -> None:
    for kind in KINDS:
        fake.fail(status)
        error = failure(complete, make_settings(fake.url, kind, tmp_path), make_item())
        assert error.status == status
        assert error.retryable == (status in RETRYABLE), (kind, status)
        assert str(status) in str(error)


def test_429_retry_after_seconds(fake: FakeUpstream, tmp_path: Path, kind: str) -> None:
    fake.fail(429, retry_after=7)
    error = failure(complete, make_settings(fake.url, kind, tmp_path), make_item())
    assert error.retryable and error.retry_after_s == 7.0


def test_503_retry_after_http_date(fake: FakeUpstream, tmp_path: Path) -> None:
    fake.fail(503, retry_after=email.utils.formatdate(time.time() + 120, usegmt=True))
    error = failure(complete, make_settings(fake.url, "openai", tmp_path), make_item())
    assert error.retryable and error.retry_after_s is not None
    assert 100 < error.retry_after_s <= 121


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412000.0) == 480.0


# -- transport faults ------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["drop", "truncate", "malformed", "lose_answer"])
def test_transport_faults_are_retryable(
    fake: FakeUpstream, tmp_path: Path, kind: str, fault: str
) -> None:
    settings = make_settings(fake.url, kind, tmp_path)
    getattr(fake, fault)()
    error = failure(complete, settings, make_item())
    assert error.retryable and error.status is None
    # The fault is used up: the next request goes through on a fresh connection.
    assert complete(settings, make_item()).text.startswith("upstream: ")


@pytest.mark.parametrize("fault", ["timeout", "slow_body"])
def test_slow_upstream_hits_the_deadline(
    fake: FakeUpstream, tmp_path: Path, kind: str, fault: str
) -> None:
    settings = make_settings(fake.url, kind, tmp_path)
    getattr(fake, fault)(3.0)
    started = time.monotonic()
    error = failure(complete, settings, make_item(), timeout_s=0.3)
    elapsed = time.monotonic() - started
    assert error.retryable and "0.3 s" in str(error)
    assert 0.25 < elapsed < 1.5


def test_slow_body_within_the_deadline_is_fine(fake: FakeUpstream, tmp_path: Path) -> None:
    fake.slow_body(0.1)
    answer = complete(make_settings(fake.url, "openai", tmp_path), make_item(), timeout_s=2)
    assert answer.text == "upstream: write to <EMAIL_1> about <PERSON_1>"


def test_connection_refused_is_retryable(tmp_path: Path, kind: str) -> None:
    with FakeUpstream() as server:
        url = server.url
    error = failure(complete, make_settings(url, kind, tmp_path), make_item())
    assert error.retryable


def test_down_and_up(fake: FakeUpstream, tmp_path: Path, kind: str) -> None:
    settings = make_settings(fake.url, kind, tmp_path)
    fake.down()
    assert failure(probe, settings).retryable
    assert failure(complete, settings, make_item()).retryable
    fake.up()
    probe(settings)
    complete(settings, make_item())


# -- probes ----------------------------------------------------------------------------


def test_probe_shape(fake: FakeUpstream, tmp_path: Path, kind: str) -> None:
    probe(make_settings(fake.url, kind, tmp_path))
    [request] = fake.requests
    assert (request.method, request.path) == ("GET", "/v1/models")
    if kind == "openai":
        assert request.headers["authorization"] == f"Bearer {KEY}"
    else:
        assert request.headers["x-api-key"] == KEY
        assert request.headers["anthropic-version"] == "2023-06-01"


def test_faults_skip_probes_unless_asked(fake: FakeUpstream, tmp_path: Path) -> None:
    settings = make_settings(fake.url, "openai", tmp_path)
    fake.fail(500)
    probe(settings)  # the queued fault is for a request, not for a probe
    assert failure(complete, settings, make_item()).status == 500
    fake.fail(503, probes=True)
    error = failure(probe, settings)
    assert error.retryable and error.status == 503
    fake.timeout(2.0, probes=True)
    started = time.monotonic()
    assert failure(probe, settings, timeout_s=0.3).retryable
    assert time.monotonic() - started < 1.5
