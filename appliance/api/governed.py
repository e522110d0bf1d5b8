"""One inference request under the policy: classify, answer, judge, escalate, audit.

The routes in ``openai_routes`` turn HTTP into an ``Inbound`` and format what comes back;
this module owns the order of events in between:

1. classify the request's texts (PII, keywords, pre-check) and plan where it may go;
2. when the plan skips the local answer (``prefer``, or a hard prompt under ``skip-local``)
   and the uplink is up, ask the upstream now;
3. otherwise answer locally, with per-token log-probabilities when the cascade needs them;
4. judge the answer's confidence: it stands, or the request is escalated now (the device
   gets the upstream's answer, re-hydrated), queued (the device gets the local answer and
   an escalation id), or refused;
5. write the audit row: the decision and its reasons, the types of what was found.

A stream cannot take back what it sent: its local tokens flow as they come, and a low
confidence can only queue the request (the last chunk's ``appliance`` object says so; the
``X-Appliance-Route`` header, sent first, said ``local``). Only when a low-confidence answer
would be refused (``when_blocked = "refuse"`` for a request that may not leave) is the stream
held back until the answer is judged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance import logs
from appliance.api import inference
from appliance.api.errors import APIError
from appliance.governance import router
from appliance.governance.active import ActivePolicy
from appliance.governance.audit import AuditLog, AuditRecord
from appliance.governance.classify import Classification, classify
from appliance.governance.confidence import confidence
from appliance.governance.entities import AnalyzerSlot
from appliance.governance.escalation import (
    Escalation,
    EscalationUnavailable,
    Escalator,
    UplinkError,
    UpstreamAnswer,
)
from appliance.pii.redact import rehydrate
from appliance.runtime.backend import GenerationRequest, GenerationResult, TokenEvent
from appliance.runtime.manager import ModelManager, ModelWorker
from appliance.settings import Settings
from appliance.state import utc_now
from appliance.tco.ledger import Ledger

log = logging.getLogger("appliance.router")

INLINE_CLASSIFY_CHARS = 16_384  # longer requests are classified off the event loop


@dataclass
class Inbound:
    """An inference request as the router sees it."""

    endpoint: Literal["chat", "completion"]
    model: str
    texts: list[str]  # each message's content, or the one prompt
    roles: list[str]  # each message's role ("user" for a completion prompt)
    source: inference.PromptSource
    generation: GenerationRequest
    escalate: router.EscalateOption = "auto"
    device: str | None = None
    # the id the logs carry for this request (X-Request-Id), so audit rows and logs match
    request_id: str = field(default_factory=lambda: logs.request_id() or uuid.uuid4().hex)

    @property
    def governed_texts(self) -> list[str]:
        """Every text of the request that may leave the box: the messages, then the stop
        strings (see ``escalation.FORWARDED_FIELDS``). All of them are classified and, for a
        redacted class, redacted alike: a card number in a stop string is still a card.
        """
        return [*self.texts, *self.generation.stop]


@dataclass
class Decided:
    """How the request was answered: what the route formats for the device."""

    route: router.Route
    reasons: list[str]
    classification: Classification
    confidence: float | None = None
    escalation_id: str | None = None
    upstream: str | None = None
    upstream_answer: UpstreamAnswer | None = None  # set when the upstream answered
    text: str = ""  # the upstream's answer, re-hydrated (route "escalated")
    # why an escalation the policy wanted did not happen (the outbox is full): the device
    # reads it in the body's `appliance.note`
    note: str | None = None

    def envelope(self, worker: ModelWorker, policy_label: str) -> dict[str, Any]:
        """The ``appliance`` object of the response body."""
        document: dict[str, Any] = {
            "route": self.route,
            "model_version": worker.spec.version,
            "bundle_digest": worker.spec.digest,
            "sensitivity": self.classification.sensitivity,
            "confidence": None if self.confidence is None else round(self.confidence, 4),
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
        headers = {"X-Appliance-Route": self.route}
        if self.escalation_id is not None:
            headers["X-Appliance-Escalation-Id"] = self.escalation_id
        return headers


@dataclass
class UpstreamFirst:
    """What asking the upstream before the local model gave (``try_upstream_first``)."""

    decided: Decided | None = None  # the upstream answered: this is the response
    # kept in the outbox without an answer yet (the uplink failed or was slow): if the
    # request is escalated after the local answer, it is this item, never a second one
    kept: Escalation | None = None
    reasons: list[str] = field(default_factory=list)  # what happened, for the audit


def refusal(decided: Decided, envelope: dict[str, Any]) -> APIError:
    """A refused request: 403, with the route header and the decision in the body."""
    return APIError(
        403,
        "the policy refuses this request: " + "; ".join(decided.reasons[-2:]),
        type="policy_error",
        code="policy_refused",
        headers=decided.headers(),
        appliance=envelope,
    )


class Governor:
    """The daemon's router: one per app."""

    def __init__(
        self,
        policy: ActivePolicy,
        analyzers: AnalyzerSlot,
        escalator: Escalator,
        audit: AuditLog,
        settings: Settings,
        models: ModelManager,
        ledger: Ledger | None = None,
    ) -> None:
        self.ledger = ledger
        self.active = policy
        self.analyzers = analyzers
        self.escalator = escalator
        self.audit = audit
        self.settings = settings
        self.models = models

    # -- planning ------------------------------------------------------------------------

    async def plan(self, inbound: Inbound) -> router.Plan:
        policy = self.active.policy
        hard_by_classifier = await self._classifier_verdict(inbound)

        slot = self.analyzers
        analyzer = slot.analyzer

        def work() -> router.Plan:
            texts = inbound.governed_texts
            classification = classify(policy, analyzer, texts, hard_by_classifier)
            return router.plan(
                policy, classification, texts, self.settings.upstreams, inbound.escalate
            )

        size = sum(len(t) for t in inbound.governed_texts)
        if not slot.has_ner and size <= INLINE_CLASSIFY_CHARS:
            return work()  # rules only, ~1 ms: cheaper than a hop to a thread
        return await asyncio.to_thread(work)  # a model, or a long text: off the event loop

    async def _classifier_verdict(self, inbound: Inbound) -> str | None:
        """The optional pre-check classifier's reason to call the prompt hard, if it does."""
        precheck = self.active.policy.precheck
        if not precheck.classifier:
            return None
        try:
            worker = self.models.loaded_worker(precheck.classifier) or await asyncio.to_thread(
                self.models.worker, precheck.classifier
            )
            text = inbound.texts[-1] if inbound.texts else ""
            labels = await inference.classify(worker, [text], self.settings.server)
        except Exception as e:  # the pre-check is an optimisation: never fail a request on it
            log.warning("pre-check classifier %s unavailable: %s", precheck.classifier, e)
            return None
        score = labels[0].get(precheck.classifier_label, 0.0)
        if score >= precheck.classifier_threshold:
            return f"classifier {precheck.classifier}: {precheck.classifier_label} {score:.2f}"
        return None

    # -- escalation ----------------------------------------------------------------------

    def _escalation(
        self, inbound: Inbound, plan: router.Plan, local: str | None, conf: float | None
    ) -> Escalation:
        assert plan.upstream is not None and plan.egress is not None
        # plan.egress.texts are inbound.governed_texts as they may leave: messages, then stops
        count = len(inbound.texts)
        egress_messages, egress_stops = plan.egress.texts[:count], plan.egress.texts[count:]
        messages = tuple(
            {"role": role, "content": text}
            for role, text in zip(inbound.roles, egress_messages, strict=True)
        )
        request = inbound.generation
        return Escalation(
            id=str(uuid.uuid4()),
            created_at=utc_now(),
            upstream=plan.upstream.name,
            endpoint=inbound.endpoint,
            messages=messages,
            mapping=dict(plan.egress.mapping),
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(egress_stops),
            model=inbound.model,
            device=inbound.device,
            sensitivity=plan.classification.sensitivity,
            reasons=plan.reasons,
            local_answer=local,
            confidence=conf,
        )

    async def _escalate(
        self, decided: Decided, item: Escalation, sync: bool, mapping: dict[str, str]
    ) -> None:
        """Answer now (sync) or queue; updates `decided` with what happened."""
        decided.upstream = item.upstream
        if sync:
            try:
                answer = await self.escalator.answer_now(
                    item, self.settings.server.request_timeout_s
                )
            except EscalationUnavailable as e:
                self._unavailable(decided, e)
                return
            except UplinkError as e:
                decided.reasons.append(f"upstream failed ({e}): queued instead")
            else:
                decided.route = "escalated"
                decided.escalation_id = item.id
                decided.upstream_answer = answer
                decided.text = rehydrate(answer.text, mapping)
                return
        try:
            await self.escalator.enqueue(item)  # the same id again (a slow send) changes nothing
        except EscalationUnavailable as e:
            self._unavailable(decided, e)
            return
        decided.route = "queued"
        decided.escalation_id = item.id

    @staticmethod
    def _unavailable(decided: Decided, error: EscalationUnavailable) -> None:
        """Nothing can keep the escalation (a full outbox): the local answer stands."""
        decided.route = "local"
        decided.upstream = None
        decided.note = f"escalation unavailable: {error}"
        decided.reasons.append(f"{error}: the local answer stands")

    async def try_upstream_first(self, inbound: Inbound, plan: router.Plan) -> UpstreamFirst:
        """For a plan that skips the local answer: the upstream's answer, if it gives one."""
        policy = self.active.policy
        verdict = None
        if plan.upstream is not None:
            verdict = router.before_local(
                policy, plan, self.escalator.uplink_up(plan.upstream.name)
            )
        if verdict is None:
            return UpstreamFirst()
        decided = Decided("local", [*plan.reasons, *verdict.reasons], plan.classification)
        item = self._escalation(inbound, plan, None, None)
        assert plan.egress is not None
        try:
            answer = await self.escalator.answer_now(item, self.settings.server.request_timeout_s)
        except EscalationUnavailable as e:
            return UpstreamFirst(reasons=[f"{e}: answered locally"])
        except UplinkError as e:
            return UpstreamFirst(kept=item, reasons=[f"upstream failed ({e}): answered locally"])
        decided.route, decided.escalation_id, decided.upstream = "escalated", item.id, item.upstream
        decided.upstream_answer = answer
        decided.text = rehydrate(answer.text, dict(plan.egress.mapping))
        self.record(inbound, decided)
        return UpstreamFirst(decided=decided)

    async def judge(
        self,
        inbound: Inbound,
        plan: router.Plan,
        events: Sequence[TokenEvent],
        result: GenerationResult,
        streamed: bool,
        first: UpstreamFirst | None = None,
    ) -> Decided:
        """After the local answer: does it stand? Escalates or queues as the verdict says.

        `first`: what asking the upstream first gave, when the plan did; an item it kept is
        the escalation (it is already in the outbox, and maybe in flight).
        """
        first = first or UpstreamFirst()
        ran_until = time.perf_counter()  # the local run's end, before any upstream wait
        policy = self.active.policy
        cascade = policy.cascade
        conf = confidence(
            (e.logprob for e in events if e.token_id >= 0),
            cascade.confidence_measure,
            cascade.tail_percentile,
        )
        uplink = plan.upstream is not None and self.escalator.uplink_up(plan.upstream.name)
        verdict = router.after_local(policy, plan, conf, streamed, uplink)
        decided = Decided(
            verdict.route,
            [*plan.reasons, *first.reasons, *verdict.reasons],
            plan.classification,
            conf,
        )
        if verdict.escalate and first.kept is not None:
            await self.escalator.note_local(first.kept, result.text, conf)
            decided.route, decided.upstream = "queued", first.kept.upstream
            decided.escalation_id = first.kept.id
        elif verdict.escalate:
            assert plan.egress is not None
            item = self._escalation(inbound, plan, result.text, conf)
            await self._escalate(decided, item, verdict.sync, dict(plan.egress.mapping))
        reference = plan.upstream.name if plan.upstream is not None else None
        self.record(inbound, decided, result, ran_until, reference)
        return decided

    def record(
        self,
        inbound: Inbound,
        decided: Decided,
        local: GenerationResult | None = None,
        ran_until: float | None = None,
        reference: str | None = None,
    ) -> None:
        """Audit the decision; count it in the TCO ledger with the local model's run.

        `reference` is the upstream the plan named, whose price the local tokens are worth.
        """
        self.audit.record(
            AuditRecord(
                request_id=inbound.request_id,
                model=inbound.model,
                endpoint=inbound.endpoint,
                policy=self.active.current.label,
                sensitivity=decided.classification.sensitivity,
                route=decided.route,
                reasons=tuple(decided.reasons),
                confidence=decided.confidence,
                finding_types=decided.classification.finding_types(),
                escalation_id=decided.escalation_id,
                upstream=decided.upstream,
                device=inbound.device,
            )
        )
        if self.ledger is not None:
            self.ledger.request(
                self.active.policy,
                request_id=inbound.request_id,
                model=inbound.model,
                route=decided.route,
                device=inbound.device,
                upstream=decided.upstream or reference,
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


async def collect(
    events: AsyncIterator[TokenEvent | GenerationResult],
) -> tuple[list[TokenEvent], GenerationResult]:
    """All token events of a generation, and its result."""
    content: list[TokenEvent] = []
    async for item in events:
        if isinstance(item, GenerationResult):
            return content, item
        content.append(item)
    raise RuntimeError("generation ended without a result")
