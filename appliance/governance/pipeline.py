"""One request's order of events, in one place: classify, plan, ask, answer, judge, record.

``Pipeline.run`` is the whole story of a query, read top to bottom:

1. **classify** its texts (PII, keywords, pre-check) and **plan** where it may go, with the
   exact text that would leave (``router.plan``);
2. **limits** hold whichever way it goes: a query over the prompt limit is refused before
   any upstream is paid;
3. **upstream first** when the plan skips the local answer (``prefer``, or a hard prompt
   under ``skip-local``) and the uplink is up;
4. **local answer**, streamed to the device as it comes unless a refusal may follow;
5. **confidence** of that answer under the policy's measure;
6. **escalate or queue** as the verdict says (``router.after_local``), at most one
   escalation per query: an item kept by step 3 is the escalation, never a second; or, for a
   confident answer that could have left, an **audit sample** at the policy's
   ``audit_rate`` (``calibrate.sampling``: queued in the background, the answer unchanged);
7. **re-hydrate** an upstream answer (placeholders back to the device's values);
8. **record** the decision: the audit row and the TCO ledger.

It takes one immutable ``Query``, built once from the HTTP body, and yields the local
answer's token events (when they are streamed live) and then one ``Outcome``. The routes
only translate HTTP into a ``Query`` and the ``Outcome`` back into OpenAI's shapes, JSON or
SSE; streaming and non-streaming share this path.

A stream cannot take back what it sent: its local tokens flow as they come, and a low
confidence can only queue the query (the final ``Outcome`` says so; the route header, sent
first, said ``local``). Only when a low-confidence answer would be refused
(``when_blocked = "refuse"`` for a query that may not leave) is the stream held back until
the answer is judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from appliance import logs
from appliance.calibrate import sampling
from appliance.governance import router
from appliance.governance.active import ActivePolicy
from appliance.governance.audit import AuditLog, AuditRecord
from appliance.governance.classify import Classification, classify
from appliance.governance.confidence import answer_confidence
from appliance.governance.entities import AnalyzerSlot
from appliance.governance.escalation import (
    Escalation,
    EscalationUnavailable,
    Escalator,
    UplinkError,
    UpstreamAnswer,
)
from appliance.pii.redact import rehydrate
from appliance.policy.schema import Policy
from appliance.runtime.backend import GenerationRequest, GenerationResult, TokenEvent
from appliance.settings import Settings
from appliance.state import utc_now
from appliance.tco.ledger import Ledger

log = logging.getLogger("appliance.router")

INLINE_CLASSIFY_CHARS = 16_384  # longer queries are classified off the event loop

Endpoint = Literal["chat", "completion"]


@dataclass(frozen=True)
class Query:
    """An inference request as the pipeline sees it: built once, never changed."""

    endpoint: Endpoint
    model: str
    roles: tuple[str, ...]  # each message's role ("user" for a completion prompt)
    texts: tuple[str, ...]  # each message's content, or the one prompt
    stops: tuple[str, ...] = ()
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    stream: bool = False
    escalate: router.EscalateOption = "auto"
    device: str | None = None
    # the id the logs carry for this request (X-Request-Id), so audit rows and logs match
    request_id: str = field(default_factory=lambda: logs.request_id() or uuid.uuid4().hex)

    @property
    def governed_texts(self) -> list[str]:
        """Every text of the query that may leave the box: the messages, then the stop
        strings (see ``escalation.FORWARDED_FIELDS``). All of them are classified and, for a
        redacted class, redacted alike: a card number in a stop string is still a card.
        """
        return [*self.texts, *self.stops]

    def generation(self, wants_confidence: bool) -> GenerationRequest:
        """A fresh request for the local model (it carries this run's cancel event)."""
        return GenerationRequest(
            prompt="",
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=list(self.stops),
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            confidence=wants_confidence,
        )


@dataclass
class Outcome:
    """How the query was answered: what the route formats for the device."""

    route: router.Route
    reasons: list[str]
    classification: Classification
    confidence: float | None = None
    escalation_id: str | None = None
    upstream: str | None = None
    upstream_answer: UpstreamAnswer | None = None  # set when the upstream answered
    text: str = ""  # the answer the device gets (local, or the upstream's re-hydrated)
    events: list[TokenEvent] | None = None  # the local answer's tokens (None: upstream's)
    streamed: bool = False  # the events already went to the device, live
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # why an escalation the policy wanted did not happen (the outbox is full): the device
    # reads it in the body's `appliance.note`
    note: str | None = None

    def envelope(self, version: str, digest: str, policy_label: str) -> dict[str, Any]:
        """The ``appliance`` object of the response body."""
        document: dict[str, Any] = {
            "route": self.route,
            "model_version": version,
            "bundle_digest": digest,
            "sensitivity": self.classification.sensitivity,
            # 4 significant digits: a first clause's least likely token can be 0.00003
            "confidence": None if self.confidence is None else float(f"{self.confidence:.4g}"),
            "policy": policy_label,
        }
        if self.escalation_id is not None:
            document["escalation_id"] = self.escalation_id
        if self.upstream is not None:
            document["upstream"] = self.upstream
        if self.note is not None:
            document["note"] = self.note
        return document

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {"X-Appliance-Route": self.route}
        if self.escalation_id is not None:
            headers["X-Appliance-Escalation-Id"] = self.escalation_id
        return headers


@dataclass
class UpstreamFirst:
    """What asking the upstream before the local model gave (step 3)."""

    outcome: Outcome | None = None  # the upstream answered: this is the response
    # kept in the outbox without an answer yet (the uplink failed or was slow): if the
    # query is escalated after the local answer, it is this item, never a second one
    kept: Escalation | None = None
    reasons: list[str] = field(default_factory=list)  # what happened, for the audit


class LocalModel(Protocol):
    """The local model, as the pipeline uses it (the routes bind it to a model worker)."""

    async def check_prompt(self) -> None:
        """Refuse a prompt over the limits (raises), before any route is taken."""

    def generate(
        self, request: GenerationRequest, stream: bool
    ) -> AsyncGenerator[TokenEvent | GenerationResult, None]:
        """The answer's token events, then its result."""


# The optional pre-check classifier: a reason to call the last text hard, or None.
HardnessCheck = Callable[[Policy, str], Awaitable[str | None]]


async def _never_hard(policy: Policy, text: str) -> str | None:
    return None


class Pipeline:
    """The daemon's governance of inference requests: one per app."""

    def __init__(
        self,
        policy: ActivePolicy,
        analyzers: AnalyzerSlot,
        escalator: Escalator,
        audit: AuditLog,
        settings: Settings,
        ledger: Ledger | None = None,
        hardness: HardnessCheck = _never_hard,
        audit_sampler: sampling.AuditSampler | None = None,
    ) -> None:
        self.active = policy
        self.analyzers = analyzers
        self.escalator = escalator
        self.audit = audit
        self.settings = settings
        self.ledger = ledger
        self.hardness = hardness
        # the audit-sampling draws (step 6); seeded by a test to sample known queries
        self.audit_sampler = audit_sampler or sampling.AuditSampler()

    # -- the order of events ---------------------------------------------------------------

    async def run(
        self, query: Query, local: LocalModel
    ) -> AsyncGenerator[TokenEvent | Outcome, None]:
        """Govern `query`: its token events (only when streamed live), then its Outcome."""
        plan = await self.plan(query)  # 1. classify and plan
        asked = UpstreamFirst()
        if plan.skip_local:
            await local.check_prompt()  # 2. limits, before anything is paid for
            asked = await self.upstream_first(query, plan)  # 3. upstream first
            if asked.outcome is not None:
                yield asked.outcome
                return
        live = query.stream and not self.must_hold_stream(plan)
        request = query.generation(self.wants_confidence(plan))
        events: list[TokenEvent] = []
        result: GenerationResult | None = None
        judged = False
        try:
            async with contextlib.aclosing(local.generate(request, stream=live)) as answer:
                async for item in answer:  # 4. local answer (closing it cancels the model)
                    if isinstance(item, GenerationResult):
                        result = item
                        break
                    events.append(item)
                    if live:
                        yield item
            if result is None:
                raise RuntimeError("generation ended without a result")
            outcome = await self.judge(query, plan, events, result, live, asked)  # 5-8.
            judged = True
        finally:
            if live and events and not judged:  # the device went away mid-stream
                reasons = [*plan.reasons, *asked.reasons, "stream ended early"]
                self.record(query, Outcome("local", reasons, plan.classification))
        yield outcome

    # -- 1. classify and plan --------------------------------------------------------------

    async def plan(self, query: Query) -> router.Plan:
        policy = self.active.policy
        hard_by_classifier = await self._hardness(policy, query)
        slot = self.analyzers
        analyzer = slot.analyzer
        texts = query.governed_texts

        def work() -> router.Plan:
            classification = classify(policy, analyzer, texts, hard_by_classifier)
            return router.plan(
                policy, classification, texts, self.settings.upstreams, query.escalate
            )

        if not slot.has_ner and sum(len(t) for t in texts) <= INLINE_CLASSIFY_CHARS:
            return work()  # rules only, ~1 ms: cheaper than a hop to a thread
        return await asyncio.to_thread(work)  # a model, or a long text: off the event loop

    async def _hardness(self, policy: Policy, query: Query) -> str | None:
        if not policy.precheck.classifier:
            return None
        try:
            return await self.hardness(policy, query.texts[-1] if query.texts else "")
        except Exception as e:  # the pre-check is an optimisation: never fail a request on it
            log.warning("pre-check classifier %s unavailable: %s", policy.precheck.classifier, e)
            return None

    def wants_confidence(self, plan: router.Plan) -> bool:
        return router.wants_confidence(self.active.policy, plan)

    def must_hold_stream(self, plan: router.Plan) -> bool:
        """A stream whose low-confidence answer would be refused waits for the verdict."""
        cascade = self.active.policy.cascade
        return (
            cascade.enabled
            and not plan.may_leave
            and cascade.when_blocked == "refuse"
            and not plan.skip_local
        )

    # -- 3. upstream first -----------------------------------------------------------------

    async def upstream_first(self, query: Query, plan: router.Plan) -> UpstreamFirst:
        """For a plan that skips the local answer: the upstream's answer, if it gives one."""
        policy = self.active.policy
        verdict = None
        if plan.upstream is not None:
            verdict = router.before_local(
                policy, plan, self.escalator.uplink_up(plan.upstream.name)
            )
        if verdict is None:
            return UpstreamFirst()
        outcome = Outcome("local", [*plan.reasons, *verdict.reasons], plan.classification)
        item = self._escalation(query, plan, None, None)
        assert plan.egress is not None
        try:
            answer = await self.escalator.answer_now(item, self.settings.server.request_timeout_s)
        except EscalationUnavailable as e:
            return UpstreamFirst(reasons=[f"{e}: answered locally"])
        except UplinkError as e:
            return UpstreamFirst(kept=item, reasons=[f"upstream failed ({e}): answered locally"])
        self._answered(outcome, item, answer, dict(plan.egress.mapping))
        self.record(query, outcome)
        return UpstreamFirst(outcome=outcome)

    # -- 5-8. judge the local answer, escalate or queue, re-hydrate, record -----------------

    async def judge(
        self,
        query: Query,
        plan: router.Plan,
        events: Sequence[TokenEvent],
        result: GenerationResult,
        streamed: bool,
        asked: UpstreamFirst | None = None,
    ) -> Outcome:
        """After the local answer: does it stand? Escalates or queues as the verdict says.

        `asked`: what asking the upstream first gave, when the plan did; an item it kept is
        the escalation (it is already in the outbox, and maybe in flight).
        """
        asked = asked or UpstreamFirst()
        ran_until = time.perf_counter()  # the local run's end, before any upstream wait
        policy = self.active.policy
        cascade = policy.cascade
        conf = answer_confidence(events, cascade)  # 5. confidence
        uplink = plan.upstream is not None and self.escalator.uplink_up(plan.upstream.name)
        verdict = router.after_local(policy, plan, conf, streamed, uplink)
        outcome = Outcome(
            verdict.route,
            [*plan.reasons, *asked.reasons, *verdict.reasons],
            plan.classification,
            conf,
            text=result.text,
            events=list(events),
            streamed=streamed,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
        if verdict.escalate and asked.kept is not None:  # 6. escalate or queue
            await self.escalator.note_local(asked.kept, result.text, conf)
            outcome.route, outcome.upstream = "queued", asked.kept.upstream
            outcome.escalation_id = asked.kept.id
        elif verdict.escalate:
            assert plan.egress is not None
            origin: Literal["cascade"] | None = None if plan.skip_local else "cascade"
            item = self._escalation(query, plan, result.text, conf, origin)
            await self._escalate(outcome, item, verdict.sync, dict(plan.egress.mapping))
        elif sampling.eligible(policy, plan, verdict, conf) and self.audit_sampler.draw(
            cascade.audit_rate
        ):
            await self._audit_sample(outcome, query, plan, result.text, conf, cascade.audit_rate)
        reference = plan.upstream.name if plan.upstream is not None else None
        self.record(query, outcome, result, ran_until, reference)  # 8. record
        return outcome

    def _escalation(
        self,
        query: Query,
        plan: router.Plan,
        local: str | None,
        conf: float | None,
        origin: Literal["cascade"] | None = None,
    ) -> Escalation:
        assert plan.upstream is not None and plan.egress is not None
        # plan.egress.texts are query.governed_texts as they may leave: messages, then stops
        count = len(query.texts)
        egress_messages, egress_stops = plan.egress.texts[:count], plan.egress.texts[count:]
        messages = tuple(
            {"role": role, "content": text}
            for role, text in zip(query.roles, egress_messages, strict=True)
        )
        return Escalation(
            id=str(uuid.uuid4()),
            created_at=utc_now(),
            upstream=plan.upstream.name,
            endpoint=query.endpoint,
            messages=messages,
            mapping=dict(plan.egress.mapping),
            max_tokens=query.max_tokens,
            temperature=query.temperature,
            top_p=query.top_p,
            stop=tuple(egress_stops),
            model=query.model,
            device=query.device,
            sensitivity=plan.classification.sensitivity,
            reasons=plan.reasons,
            local_answer=local,
            confidence=conf,
            origin=origin,
        )

    async def _audit_sample(
        self,
        outcome: Outcome,
        query: Query,
        plan: router.Plan,
        local: str,
        conf: float | None,
        rate: float,
    ) -> None:
        """Also send this confident answer's query upstream, in the background, to measure the
        answer (step 6), drawn at `rate`; the device's answer and route stay as they are."""
        item = sampling.audit_item(self._escalation(query, plan, local, conf), rate)
        try:
            await self.escalator.enqueue(item)
        except EscalationUnavailable as e:  # a full outbox, the budget spent: no sample
            outcome.reasons.append(f"audit sample skipped: {e}")
            return
        outcome.reasons.append(f"audit sample {item.id} queued (rate {rate:g})")

    async def _escalate(
        self, outcome: Outcome, item: Escalation, sync: bool, mapping: dict[str, str]
    ) -> None:
        """Answer now (sync) or queue; updates `outcome` with what happened."""
        outcome.upstream = item.upstream
        if sync:
            try:
                answer = await self.escalator.answer_now(
                    item, self.settings.server.request_timeout_s
                )
            except EscalationUnavailable as e:
                self._unavailable(outcome, e)
                return
            except UplinkError as e:
                outcome.reasons.append(f"upstream failed ({e}): queued instead")
            else:
                self._answered(outcome, item, answer, mapping)
                return
        try:
            await self.escalator.enqueue(item)  # the same id again (a slow send) changes nothing
        except EscalationUnavailable as e:
            self._unavailable(outcome, e)
            return
        outcome.route = "queued"
        outcome.escalation_id = item.id

    @staticmethod
    def _answered(
        outcome: Outcome, item: Escalation, answer: UpstreamAnswer, mapping: dict[str, str]
    ) -> None:
        """The upstream answered: the device gets it, re-hydrated (step 7)."""
        outcome.route, outcome.escalation_id, outcome.upstream = "escalated", item.id, item.upstream
        outcome.upstream_answer = answer
        outcome.text = rehydrate(answer.text, mapping)
        outcome.events = None
        outcome.finish_reason = answer.finish_reason
        outcome.prompt_tokens = answer.prompt_tokens
        outcome.completion_tokens = answer.completion_tokens

    @staticmethod
    def _unavailable(outcome: Outcome, error: EscalationUnavailable) -> None:
        """Nothing can keep the escalation (a full outbox): the local answer stands."""
        outcome.route = "local"
        outcome.upstream = None
        outcome.note = f"escalation unavailable: {error}"
        outcome.reasons.append(f"{error}: the local answer stands")

    def record(
        self,
        query: Query,
        outcome: Outcome,
        local: GenerationResult | None = None,
        ran_until: float | None = None,
        reference: str | None = None,
    ) -> None:
        """Audit the decision; count it in the TCO ledger with the local model's run.

        `reference` is the upstream the plan named, whose price the local tokens are worth.
        """
        self.audit.record(
            AuditRecord(
                request_id=query.request_id,
                model=query.model,
                endpoint=query.endpoint,
                policy=self.active.current.label,
                sensitivity=outcome.classification.sensitivity,
                route=outcome.route,
                reasons=tuple(outcome.reasons),
                confidence=outcome.confidence,
                finding_types=outcome.classification.finding_types(),
                escalation_id=outcome.escalation_id,
                upstream=outcome.upstream,
                device=query.device,
            )
        )
        if self.ledger is not None:
            self.ledger.request(
                self.active.policy,
                request_id=query.request_id,
                model=query.model,
                route=outcome.route,
                device=query.device,
                upstream=outcome.upstream or reference,
                prompt_tokens=local.prompt_tokens if local else 0,
                completion_tokens=local.completion_tokens if local else 0,
                seconds=local.seconds if local else 0.0,
                ended=ran_until,
            )

    def record_invalid(self, endpoint: str, device: str | None, why: str) -> None:
        """Audit a request refused at the door as malformed (what was wrong, not its text)."""
        self.audit.record(
            AuditRecord(
                request_id=logs.request_id() or uuid.uuid4().hex,
                model="",
                endpoint=endpoint,
                policy=self.active.current.label,
                sensitivity="unknown",
                route="refused",
                reasons=(f"invalid request: {why}",),
                device=device,
            )
        )
