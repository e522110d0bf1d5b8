"""A request's sensitivity class and hardness, before any model runs.

The texts of the request (each chat message, or the completion prompt) go through the PII
analyzer, each alone and all joined (a value may be split across messages); the policy
turns the findings, and its keywords found in the texts' normalised view (so that
``pass\u200bword`` is "password"), into the classes the request falls in, most restrictive
first, and their egress. The pre-check (length, task markers, and an optional classifier
the caller runs) says whether the prompt looks too hard for the small local model.

Fails closed: when the analysis raises (a recognizer's bug, a text the normaliser cannot
read), nothing is known about the request's PII, so it is put in the policy's most
restrictive class with egress ``never`` and the reason "PII analysis failed": it is answered
on the box and never leaves it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.pii.analyzer import Analyzer
from appliance.pii.findings import Finding
from appliance.pii.normalize import normalize
from appliance.policy.schema import Egress, Policy

log = logging.getLogger("appliance.policy")


@dataclass(frozen=True)
class Classification:
    classes: tuple[str, ...]  # most restrictive first; (default_class,) when nothing matched
    egress: Egress  # the most restrictive egress of `classes`
    findings: tuple[tuple[Finding, ...], ...]  # per text, spans relative to that text
    keywords: dict[str, list[str]]  # class -> the keywords of it found
    hard: str | None  # why the pre-check calls the prompt hard; None when it does not
    failure: str | None = None  # why the PII analysis failed (then egress is "never")

    @property
    def sensitivity(self) -> str:
        return self.classes[0]

    def finding_types(self) -> dict[str, int]:
        """How many findings of each type (what the audit keeps: never the values)."""
        return dict(Counter(f.type for text in self.findings for f in text))

    def reasons(self) -> list[str]:
        """Why the request is in its class, in words an operator reads in the audit."""
        reasons = []
        if self.failure:
            reasons.append(f"PII analysis failed ({self.failure}): kept on the box")
        types = self.finding_types()
        if types:
            found = ", ".join(f"{t} x{n}" if n > 1 else t for t, n in sorted(types.items()))
            reasons.append(f"PII found: {found}")
        for name, words in self.keywords.items():
            if name in self.classes:
                reasons.append(f"class {name}: keyword {', '.join(repr(w) for w in words)}")
        reasons.append(f"sensitivity {self.sensitivity}: egress {self.egress}")
        if self.hard:
            reasons.append(f"pre-check: hard ({self.hard})")
        return reasons


def classify(
    policy: Policy,
    analyzer: Analyzer,
    texts: Sequence[str],
    classifier_says_hard: str | None = None,
) -> Classification:
    """Classify a request made of `texts` under `policy`.

    `classifier_says_hard` is the optional pre-check classifier's verdict, run by the caller
    (it needs a model thread): a reason string when it judged the prompt hard.
    """
    joined = "\n".join(texts)
    hard = policy.precheck.hard_reason(joined) or classifier_says_hard
    try:
        findings = tuple(tuple(found) for found in analyzer.analyze_all(texts))
        readable = normalize(joined).text
    except Exception as e:  # fail closed: an unread request may hold anything
        # The type only: an exception's message may quote the text it choked on.
        log.error("PII analysis failed (%s): the request is kept on the box", type(e).__name__)
        return unanalyzed(policy, len(texts), type(e).__name__, hard)
    flat = [f for per_text in findings for f in per_text]
    keywords = policy.keyword_hits(readable)
    # classes_for scans for keywords again only when there is one to find
    classes = policy.classes_for(flat, readable if keywords else "")
    return Classification(
        classes=classes,
        egress=policy.egress_for(classes),
        findings=findings,
        keywords=keywords,
        hard=hard,
    )


def unanalyzed(policy: Policy, texts: int, failure: str, hard: str | None) -> Classification:
    """The classification of a request whose PII analysis failed: the most restrictive
    class, and egress ``never`` whatever that class allows."""
    strictest = max(
        policy.classes, key=lambda name: policy.egress_rank(policy.classes[name].egress)
    )
    return Classification(
        classes=(strictest,),
        egress="never",
        findings=((),) * texts,
        keywords={},
        hard=hard,
        failure=failure,
    )
