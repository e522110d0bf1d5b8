"""The routing decision for one request: local, escalated, queued or refused, and why.

Two pure steps, so that every branch is testable without a model or a network:

``plan``         before any model runs: where an escalation could go (if anywhere), the
                 exact text that would leave (placeholders for a redacted class), and
                 whether to skip the local answer (the device asked ``prefer``, or the
                 pre-check calls the prompt hard and the policy says ``skip-local``).
``after_local``  once the local answer and its confidence are known: does it stand?

The order of authority: the policy's class egress first (``never`` keeps the request on
the box whatever the device asks), then the device's ``escalate`` option (``never`` keeps
it local, ``prefer`` asks for the upstream), then the cascade. Nothing leaves unless an
upstream is configured that the class may use (``internal``: only ``perimeter = "internal"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from appliance.governance.classify import Classification
from appliance.pii.redact import Redaction, pseudonymize
from appliance.policy.schema import Policy
from appliance.settings import UpstreamSettings

Route = Literal["local", "escalated", "queued", "refused"]
EscalateOption = Literal["auto", "prefer", "never"]


@dataclass(frozen=True)
class Plan:
    """What may happen to a request, decided before any model runs."""

    classification: Classification
    upstream: UpstreamSettings | None  # where an escalation would go; None: it may not leave
    egress: Redaction | None  # exactly what would leave, with the placeholder map
    skip_local: bool  # go to the upstream first, without a local answer
    reasons: tuple[str, ...]

    @property
    def may_leave(self) -> bool:
        return self.upstream is not None


@dataclass(frozen=True)
class Verdict:
    """What to do once the local answer is known."""

    route: Route  # "escalated" here means: try the upstream now, else queue
    reasons: tuple[str, ...]
    escalate: bool  # hand the request to the escalator
    sync: bool  # the device waits for the upstream's answer (else it gets the local one)


def _eligible(
    policy: Policy, classification: Classification, upstreams: Sequence[UpstreamSettings]
) -> tuple[UpstreamSettings | None, str]:
    egress = classification.egress
    if egress == "never":
        return None, f"class {classification.sensitivity} never leaves the box"
    by_name = {u.name: u for u in upstreams}
    ordered = [by_name[n] for n in policy.upstream_order([u.name for u in upstreams])]
    if egress == "internal":
        ordered = [u for u in ordered if u.perimeter == "internal"]
        if not ordered:
            return None, (
                f"class {classification.sensitivity} may only go to an internal upstream; "
                "none is configured"
            )
    if not ordered:
        return None, "no upstream configured for this policy"
    return ordered[0], f"may leave to {ordered[0].name} ({egress})"


def plan(
    policy: Policy,
    classification: Classification,
    texts: Sequence[str],
    upstreams: Sequence[UpstreamSettings],
    escalate: EscalateOption = "auto",
) -> Plan:
    """Decide, before any model runs, where the request could go and with what text."""
    reasons = classification.reasons()
    upstream, why = _eligible(policy, classification, upstreams)
    if upstream is not None and escalate == "never":
        upstream, why = None, "the device asked escalate=never"
    reasons.append(why)
    egress = egress_text(classification, texts) if upstream is not None else None
    skip_local = False
    if upstream is not None:
        if escalate == "prefer":
            skip_local = True
            reasons.append("the device asked escalate=prefer")
        elif classification.hard and policy.precheck.on_hard == "skip-local":
            skip_local = True
            reasons.append("hard prompt: the policy skips the local answer")
    return Plan(classification, upstream, egress, skip_local, tuple(reasons))


def egress_text(classification: Classification, texts: Sequence[str]) -> Redaction | None:
    """What would leave the box if this request were escalated; None when it never may."""
    if classification.egress == "never":
        return None
    if classification.egress == "redacted":
        return pseudonymize(texts, classification.findings)
    return Redaction(texts=list(texts), mapping={})  # allowed, or internal: as it is


def wants_confidence(policy: Policy, plan: Plan) -> bool:
    """Whether the decision after the local answer depends on its confidence."""
    cascade = policy.cascade
    if not cascade.enabled or plan.skip_local:
        return False
    return plan.may_leave or cascade.when_blocked == "refuse"


def before_local(policy: Policy, plan: Plan, uplink_up: bool) -> Verdict | None:
    """For a plan that skips the local answer: escalate now, or None to answer locally first.

    With the uplink down (or the policy queueing everything) the device gets the local
    answer now and the request is queued after it (see ``after_local``).
    """
    if not plan.skip_local or plan.upstream is None:
        return None
    if uplink_up and policy.cascade.escalation == "sync-if-online":
        return Verdict("escalated", ("uplink up: answered by the upstream now",), True, True)
    return None


def after_local(
    policy: Policy, plan: Plan, confidence: float | None, streamed: bool, uplink_up: bool
) -> Verdict:
    """Whether the local answer stands, given its confidence.

    `streamed`: the device already has the local answer (a stream), so an escalation can
    only be queued for later, never answered now in its place.
    """
    cascade = policy.cascade
    shown = "unknown" if confidence is None else f"{confidence:.3f}"
    if plan.skip_local and plan.upstream is not None:
        # asked for the upstream, which cannot answer now: local answer now, queued after
        return Verdict(
            "queued", ("uplink down or queue mode: answered locally, queued",), True, False
        )
    if not cascade.enabled:
        return Verdict("local", ("cascade disabled",), False, False)
    threshold = cascade.confidence_threshold
    confident = confidence is not None and confidence >= threshold
    measured = f"confidence {shown} ({cascade.confidence_measure})"
    if confident:
        return Verdict("local", (f"{measured} >= threshold {threshold}",), False, False)
    below = f"{measured} below threshold {threshold}"
    if plan.upstream is None:
        if cascade.when_blocked == "refuse":
            return Verdict("refused", (below, "may not leave and the policy refuses"), False, False)
        return Verdict("local", (below, "may not leave: the local answer stands"), False, False)
    sync = cascade.escalation == "sync-if-online" and uplink_up and not streamed
    if sync:
        return Verdict("escalated", (below, "uplink up: answered by the upstream now"), True, True)
    why = (
        "the answer was streamed"
        if streamed
        else ("the policy queues escalations" if cascade.escalation == "queue" else "uplink down")
    )
    return Verdict("queued", (below, f"{why}: local answer now, escalation queued"), True, False)
