"""The pipeline owns a query's order of events: classify, plan, (upstream first), local
answer, confidence, escalate or queue, re-hydrate, record. Each step is observed as it
happens; the daemon tests (test_routing_daemon, test_forward_daemon, test_egress) check
what each step decides.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from appliance.governance import pipeline as pipeline_module
from appliance.governance import router as router_module
from appliance.governance.active import ActivePolicy
from appliance.governance.audit import AuditLog
from appliance.governance.entities import AnalyzerSlot
from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.governance.pipeline import Outcome, Pipeline, Query
from appliance.home import Home
from appliance.runtime.backend import GenerationRequest, GenerationResult, TokenEvent
from appliance.settings import Settings, UpstreamSettings

POLICY = """
schema = 1
name = "order"
default_class = "public"
[classes.personal]
pii = ["EMAIL"]
egress = "redacted"
[classes.public]
egress = "allowed"
[cascade]
confidence_threshold = 0.9
"""


class Steps(list[str]):
    def wrap(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str, step: str) -> None:
        original = getattr(owner, name)

        def recorded(*args, **kwargs):
            self.append(step)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)


class Upstream:
    """An escalator that answers at once with the last message, and notes each call."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    def uplink_up(self, upstream: str) -> bool:
        return True

    async def answer_now(self, item: Escalation, timeout_s: float) -> UpstreamAnswer:
        self.steps.append("escalate")
        return UpstreamAnswer(f"upstream: {item.messages[-1]['content']}", item.upstream, "m")

    async def enqueue(self, item: Escalation) -> None:
        self.steps.append("queue")

    async def note_local(self, item: Escalation, local: str, conf: float | None) -> None:
        self.steps.append("note")


class Local:
    """A local model that answers 'maybe' with low confidence."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    async def check_prompt(self) -> None:
        self.steps.append("limits")

    async def generate(
        self, request: GenerationRequest, stream: bool
    ) -> AsyncGenerator[TokenEvent | GenerationResult, None]:
        self.steps.append("local answer")
        yield TokenEvent(1, "maybe", math.log(0.2))
        yield GenerationResult("maybe", "stop", 5, 1, 0.01)


@pytest.fixture
def setup(home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    settings = Settings(
        upstreams=[
            UpstreamSettings(name="cloud", kind="openai", base_url="http://127.0.0.1:9", model="m")
        ],
        policy_file=str(policy_file),
    )
    steps = Steps()
    audit = AuditLog(home)
    pipe = Pipeline(
        ActivePolicy(home, settings), AnalyzerSlot(home), Upstream(steps), audit, settings
    )
    steps.wrap(monkeypatch, pipeline_module, "classify", "classify")
    steps.wrap(monkeypatch, router_module, "plan", "plan")
    steps.wrap(monkeypatch, pipeline_module, "answer_confidence", "confidence")
    steps.wrap(monkeypatch, pipeline_module, "rehydrate", "re-hydrate")
    steps.wrap(monkeypatch, audit, "record", "record")
    yield pipe, steps
    audit.close()


def _query(escalate: str = "auto", stream: bool = False) -> Query:
    return Query(
        endpoint="chat",
        model="m",
        roles=("user",),
        texts=("Write to ana@example.com that the pump is fixed.",),
        escalate=escalate,  # type: ignore[arg-type]
        stream=stream,
    )


def _run(pipe: Pipeline, query: Query, steps: Steps) -> list[TokenEvent | Outcome]:
    async def collect() -> list[TokenEvent | Outcome]:
        return [item async for item in pipe.run(query, Local(steps))]

    return asyncio.run(collect())


def test_a_low_confidence_answer_goes_through_every_step_in_order(setup):
    pipe, steps = setup
    [outcome] = _run(pipe, _query(), steps)
    assert steps == [
        "classify",
        "plan",
        "local answer",
        "confidence",
        "escalate",
        "re-hydrate",
        "record",
    ]
    assert isinstance(outcome, Outcome) and outcome.route == "escalated"
    assert outcome.text == "upstream: Write to ana@example.com that the pump is fixed."


def test_a_streamed_answer_is_sent_as_it_comes_and_can_only_be_queued(setup):
    pipe, steps = setup
    [token, outcome] = _run(pipe, _query(stream=True), steps)
    assert steps == ["classify", "plan", "local answer", "confidence", "queue", "record"]
    assert isinstance(token, TokenEvent) and token.text == "maybe"
    assert isinstance(outcome, Outcome) and outcome.route == "queued" and outcome.streamed


def test_prefer_checks_the_limits_and_asks_the_upstream_before_any_local_answer(setup):
    pipe, steps = setup
    [outcome] = _run(pipe, _query(escalate="prefer"), steps)
    assert steps == ["classify", "plan", "limits", "escalate", "re-hydrate", "record"]
    assert isinstance(outcome, Outcome) and outcome.route == "escalated"
