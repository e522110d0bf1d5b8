"""Audit sampling: a small random share of confident local answers also goes upstream.

Golden answers exist only for the queries that were escalated, i.e. the unconfident ones, so
the box never sees how often a *confident* local answer agrees with the upstream. With
``cascade.audit_rate = r`` each confident local answer to a query that could have been
escalated is, with probability r, also kept in the outbox as an *audit* item: the drain
sends it in the background, paid and ledgered like any escalation, within the daily budget.
The device's answer is unchanged (the local one, route ``local``); the item names no
device and keeps no placeholder map, so it is never re-hydrated for anyone; it has a lower
priority than every escalation (sent after them, dropped first from a full outbox).

Eligible are exactly the queries the cascade judged and kept local for their confidence
while they could have left: the class's egress, the configured upstreams and the device's
``escalate`` option allow it (``plan.upstream``), the upstream was not asked first. Never a
query the policy keeps on the box. The draws come from one seeded generator, one draw per
eligible query, so a test (or a replay) with the same seed samples the same queries.
"""

from __future__ import annotations

import random
import threading
from dataclasses import replace

from appliance.governance.escalation import Escalation
from appliance.governance.router import Plan, Verdict
from appliance.outbox.rows import in_egress_terms
from appliance.policy.schema import Policy

AUDIT_PRIORITY = -1  # below every escalation (priority 0): sent last, dropped first


def eligible(policy: Policy, plan: Plan, verdict: Verdict, confidence: float | None) -> bool:
    """Whether a judged query may be audit-sampled (before the draw)."""
    cascade = policy.cascade
    return (
        cascade.enabled
        and cascade.audit_rate > 0
        and plan.upstream is not None
        and not plan.skip_local
        and not verdict.escalate
        and verdict.route == "local"
        and confidence is not None
        and confidence >= cascade.confidence_threshold
    )


class AuditSampler:
    """The draws: one per eligible query, from a generator seeded once (None: from the OS)."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def draw(self, rate: float) -> bool:
        """True with probability `rate`."""
        with self._lock:
            return self._rng.random() < rate


def audit_item(item: Escalation, rate: float) -> Escalation:
    """`item` (an escalation of the confident query) as an audit sample drawn at `rate`.

    Its local answer is put in egress terms here, and then the placeholder map is dropped:
    an audit answer is compared with the local one, never turned back into anyone's values.
    """
    return replace(
        item,
        local_answer=in_egress_terms(item.local_answer, item.mapping),
        mapping={},
        device=None,
        priority=AUDIT_PRIORITY,
        origin="audit",
        audit_rate=rate,
    )
