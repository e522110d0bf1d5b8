"""Routing in the daemon, end to end: the real Gemma model, a recording stand-in upstream.

The stand-in is the ``Escalator`` interface the store-and-forward side implements: it
records what the router hands it (the egress text, the placeholder map), answers with a
scripted text when its uplink is "up", and keeps queued items in a list.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from appliance.api.app import create_app
from appliance.bundles.pack import pack, sign
from appliance.errors import PolicyError
from appliance.governance.audit import read_audit
from appliance.governance.escalation import Escalation, UplinkError, UpstreamAnswer
from appliance.home import Home
from appliance.settings import Settings, UpstreamSettings
from tests import pii_ner_model as ner_model
from tests.daemon import MODEL, Daemon, GemmaSource, gemma_source, start_daemon
from tests.helpers import write_source
from tests.onnx_models import write_classifier_source

EMAIL = "dana.whitfield@example.org"
EMAIL_PROMPT = f"Write a short reply to {EMAIL} saying the parcel ships Monday."
PLAIN_PROMPT = "The capital of France is"

POLICY = """
schema = 1
name = "{name}"
default_class = "public"

[classes.secret]
pii = ["SECRET"]
keywords = ["top secret"]
egress = "never"

[classes.personal]
pii = ["EMAIL", "PHONE", "PERSON", "ORGANIZATION"]
egress = "redacted"

[classes.public]
egress = "allowed"

[cascade]
confidence_threshold = {threshold}
escalation = "sync-if-online"
when_blocked = "{blocked}"
"""


class RecordingEscalator:
    def __init__(self) -> None:
        self.up = False
        self.fail = False
        self.reply = "Sure: I will write to <EMAIL_1> today."
        self.asked: list[Escalation] = []
        self.queued: list[Escalation] = []

    def uplink_up(self, upstream: str) -> bool:
        return self.up

    async def answer_now(self, item: Escalation, timeout_s: float) -> UpstreamAnswer:
        self.asked.append(item)
        if self.fail:
            raise UplinkError("503 from the stand-in")
        return UpstreamAnswer(self.reply, item.upstream, "stand-in", 11, 7)

    async def enqueue(self, item: Escalation) -> None:
        self.queued.append(item)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> GemmaSource:
    return gemma_source(tmp_path_factory.mktemp("routing-src"))


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("routing-policy") / "policy.toml"
    path.write_text(POLICY.format(name="strict", threshold=1.0, blocked="local"))
    return path


@pytest.fixture(scope="module")
def escalator() -> RecordingEscalator:
    return RecordingEscalator()


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory,
    source: GemmaSource,
    policy_file: Path,
    escalator: RecordingEscalator,
) -> Iterator[Daemon]:
    upstream = UpstreamSettings(
        name="cloud", kind="openai", base_url="http://127.0.0.1:9/v1", model="big-model"
    )
    settings = Settings(upstreams=[upstream], policy_file=str(policy_file))
    d = start_daemon(tmp_path_factory.mktemp("routing") / "home", source, settings, escalator)
    yield d
    d.server.stop()


@pytest.fixture
def use_policy(daemon: Daemon, policy_file: Path, escalator: RecordingEscalator):
    """Switch the daemon's policy for one test (threshold 1.0: no local answer is enough)."""

    def switch(threshold: float = 1.0, blocked: str = "local", name: str = "strict") -> None:
        policy_file.write_text(POLICY.format(name=name, threshold=threshold, blocked=blocked))
        daemon.app.state.governor.active.refresh()

    escalator.reset()
    yield switch
    switch()


def _post(daemon: Daemon, path: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {daemon.infer_token}"},
        timeout=120,
    )


def _chat(daemon: Daemon, text: str, **extra) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    return _post(daemon, "/v1/chat/completions", {**body, **extra})


def _audit(daemon: Daemon) -> dict:
    daemon.app.state.governor.audit.flush()
    return read_audit(daemon.home, limit=1)[0]


def test_confident_answer_stays_local(daemon: Daemon, use_policy, escalator):
    use_policy(threshold=0.0)
    response = _chat(daemon, EMAIL_PROMPT)
    assert response.status_code == 200
    assert response.headers["X-Appliance-Route"] == "local"
    body = response.json()
    assert body["appliance"]["route"] == "local"
    assert body["appliance"]["sensitivity"] == "personal"
    assert 0 < body["appliance"]["confidence"] <= 1  # 4 significant digits: never shown as 0
    assert escalator.asked == [] and escalator.queued == []
    row = _audit(daemon)
    assert row["route"] == "local" and row["finding_types"] == {"EMAIL": 1}


def test_low_confidence_with_uplink_up_is_escalated_redacted_and_rehydrated(
    daemon: Daemon, use_policy, escalator
):
    escalator.up = True
    response = _chat(daemon, EMAIL_PROMPT)
    assert response.status_code == 200
    assert response.headers["X-Appliance-Route"] == "escalated"
    escalation_id = response.headers["X-Appliance-Escalation-Id"]
    body = response.json()
    # the device gets the upstream's answer with its own e-mail address put back
    assert body["choices"][0]["message"]["content"] == f"Sure: I will write to {EMAIL} today."
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert body["appliance"]["escalation_id"] == escalation_id
    assert body["appliance"]["upstream"] == "cloud"
    # the upstream saw placeholders only
    (item,) = escalator.asked
    assert item.id == escalation_id
    sent = json.dumps([dict(m) for m in item.messages])
    assert EMAIL not in sent and "<EMAIL_1>" in sent
    assert item.mapping == {"<EMAIL_1>": EMAIL}
    assert item.local_answer  # kept for the golden set
    row = _audit(daemon)
    assert row["route"] == "escalated" and row["escalation_id"] == escalation_id
    assert row["upstream"] == "cloud"


def test_low_confidence_with_uplink_down_is_queued_and_answered_locally(
    daemon: Daemon, use_policy, escalator
):
    response = _chat(daemon, EMAIL_PROMPT)
    assert response.status_code == 200
    assert response.headers["X-Appliance-Route"] == "queued"
    body = response.json()
    (item,) = escalator.queued
    assert (
        response.headers["X-Appliance-Escalation-Id"]
        == item.id
        == body["appliance"]["escalation_id"]
    )
    assert body["choices"][0]["message"]["content"] == item.local_answer
    assert escalator.asked == []


def test_a_failing_upstream_falls_back_to_the_queue(daemon: Daemon, use_policy, escalator):
    escalator.up, escalator.fail = True, True
    response = _chat(daemon, EMAIL_PROMPT)
    assert response.headers["X-Appliance-Route"] == "queued"
    assert len(escalator.asked) == 1 and len(escalator.queued) == 1
    assert any("upstream failed" in r for r in _audit(daemon)["reasons"])


def test_a_never_class_does_not_leave_and_may_be_refused(daemon: Daemon, use_policy, escalator):
    escalator.up = True
    response = _chat(daemon, "This is top secret: summarise the plan.")
    assert response.headers["X-Appliance-Route"] == "local"
    assert escalator.asked == [] and escalator.queued == []
    use_policy(blocked="refuse")
    refused = _chat(daemon, "This is top secret: summarise the plan.")
    assert refused.status_code == 403
    assert refused.headers["X-Appliance-Route"] == "refused"
    document = refused.json()
    assert document["error"]["code"] == "policy_refused"
    assert document["appliance"]["route"] == "refused"
    assert _audit(daemon)["route"] == "refused"


def test_device_options_prefer_and_never(daemon: Daemon, use_policy, escalator):
    use_policy(threshold=0.0)  # the cascade alone would keep everything local
    escalator.up = True
    preferred = _chat(daemon, EMAIL_PROMPT, appliance={"escalate": "prefer"})
    assert preferred.headers["X-Appliance-Route"] == "escalated"
    assert preferred.json()["appliance"]["confidence"] is None  # no local answer was made
    use_policy(threshold=1.0)
    kept = _chat(daemon, EMAIL_PROMPT, appliance={"escalate": "never"})
    assert kept.headers["X-Appliance-Route"] == "local"
    assert len(escalator.asked) == 1 and escalator.queued == []
    bad = _chat(daemon, EMAIL_PROMPT, appliance={"escalate": "always"})
    assert bad.status_code == 400


def test_completion_endpoint_is_routed_too(daemon: Daemon, use_policy, escalator):
    escalator.up = True
    escalator.reply = "Mail <EMAIL_1> now."
    response = _post(
        daemon, "/v1/completions", {"model": MODEL, "prompt": EMAIL_PROMPT, "max_tokens": 6}
    )
    assert response.headers["X-Appliance-Route"] == "escalated"
    assert response.json()["choices"][0]["text"] == f"Mail {EMAIL} now."
    (item,) = escalator.asked
    assert item.endpoint == "completion"
    assert item.messages[0]["role"] == "user" and EMAIL not in item.messages[0]["content"]


def test_a_low_confidence_stream_is_sent_and_then_queued(daemon: Daemon, use_policy, escalator):
    escalator.up = True
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.infer_token)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": EMAIL_PROMPT}], max_tokens=8, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text  # the local answer was streamed
    last = chunks[-1].model_extra["appliance"]
    assert last["route"] == "queued"
    (item,) = escalator.queued
    assert last["escalation_id"] == item.id and item.local_answer == text
    assert escalator.asked == []  # a streamed answer is never replaced


def test_a_stream_that_may_be_refused_waits_for_the_verdict(daemon: Daemon, use_policy, escalator):
    use_policy(blocked="refuse")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "top secret: list the codes"}],
        "max_tokens": 6,
        "stream": True,
    }
    response = _post(daemon, "/v1/chat/completions", body)
    assert response.status_code == 403
    assert response.headers["X-Appliance-Route"] == "refused"


def test_state_db_never_holds_the_pii_values(daemon: Daemon, use_policy, escalator):
    escalator.up = True
    _chat(daemon, EMAIL_PROMPT)
    _audit(daemon)
    for path in daemon.home.root.glob("state.db*"):
        assert EMAIL.encode() not in path.read_bytes(), path.name


def test_a_bad_policy_file_keeps_the_old_policy(daemon: Daemon, use_policy, policy_file):
    use_policy(threshold=0.0, name="good")
    label = daemon.app.state.governor.active.current.label
    policy_file.write_text("schema = 1\nname = 'broken'\n[classes.x]\negress = 'sometimes'\n")
    assert daemon.app.state.governor.active.refresh() is False
    assert "egress" in daemon.app.state.governor.active.error
    response = _chat(daemon, PLAIN_PROMPT)
    assert response.json()["appliance"]["policy"] == label
    use_policy(threshold=0.0, name="renamed")
    assert _chat(daemon, PLAIN_PROMPT).json()["appliance"]["policy"].startswith("renamed@")


def test_the_daemon_refuses_to_start_on_an_invalid_policy(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        textwrap.dedent(
            """\
            schema = 1
            name = "bad"
            default_class = "nowhere"
            [classes.public]
            egress = "allowed"
            """
        )
    )
    home = Home(tmp_path / "home").ensure()
    with pytest.raises(PolicyError, match="default_class"):
        create_app(home, Settings(policy_file=str(bad)))


def test_an_ner_bundle_fills_the_names_slot(
    daemon: Daemon, use_policy, escalator, source: GemmaSource, tmp_path: Path
):
    folder = write_source(
        tmp_path / "ner-src",
        name="mini-ner",
        kind="model",
        files={
            "model.onnx": ner_model.model_bytes(),
            "tokenizer.json": ner_model.tokenizer_json().encode(),
        },
        model={
            "format": "onnx",
            "role": "classifier",
            "task": "token-classification",
            "labels": list(ner_model.LABELS),
            "context_length": 128,
            "file": "model.onnx",
            "tokenizer": "tokenizer.json",
        },
    )
    bundle = tmp_path / "mini-ner-1.0.0.bundle"
    pack(folder, bundle)
    sign(bundle, source.key.private)
    daemon.install(bundle)
    assert daemon.app.state.governor.analyzers.refresh() is True
    ready = httpx.get(f"{daemon.url}/readyz").json()
    assert ready["ready"] and "mini-ner" not in ready["models"]  # not served by the API

    escalator.up = True
    escalator.reply = "Tell <PERSON_1> that <ORGANIZATION_1> agreed."
    response = _chat(daemon, "Alice Smith works at Acme Corp .")
    assert response.headers["X-Appliance-Route"] == "escalated"
    (item,) = escalator.asked
    sent = item.messages[0]["content"]
    assert "Alice" not in sent and "Acme" not in sent
    assert "<PERSON_1>" in sent and "<ORGANIZATION_1>" in sent
    answer = response.json()["choices"][0]["message"]["content"]
    assert answer == "Tell Alice Smith that Acme Corp agreed."
    assert _audit(daemon)["finding_types"] == {"ORGANIZATION": 1, "PERSON": 1}


def test_the_precheck_classifier_can_send_a_prompt_straight_to_the_upstream(
    daemon: Daemon, use_policy, escalator, source: GemmaSource, tmp_path: Path, policy_file: Path
):
    folder = write_classifier_source(tmp_path / "clf-src", name="hardness")
    bundle = tmp_path / "hardness-1.0.0.bundle"
    pack(folder, bundle)
    sign(bundle, source.key.private)
    daemon.install(bundle)

    def precheck(threshold: float) -> None:
        policy_file.write_text(
            POLICY.format(name="precheck", threshold=0.0, blocked="local")
            + '\n[precheck]\nclassifier = "hardness"\nclassifier_label = "allow"\n'
            + f'classifier_threshold = {threshold}\non_hard = "skip-local"\n'
        )
        assert daemon.app.state.governor.active.refresh()

    escalator.up = True
    precheck(0.0)  # every prompt scores >= 0: hard
    hard = _chat(daemon, EMAIL_PROMPT)
    assert hard.headers["X-Appliance-Route"] == "escalated"
    assert hard.json()["appliance"]["confidence"] is None  # the local model never ran
    assert any("classifier hardness" in r for r in _audit(daemon)["reasons"])
    precheck(1.0)  # no score reaches 1 over three labels: not hard
    easy = _chat(daemon, EMAIL_PROMPT)
    assert easy.headers["X-Appliance-Route"] == "local"
    assert len(escalator.asked) == 1
