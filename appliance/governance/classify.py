"""A request's sensitivity class and hardness, before any model runs.

Every text of the request (each chat message, or the completion prompt) goes through the
PII analyzer; the policy turns the findings and its keywords into the classes the request
falls in, most restrictive first, and their egress. The pre-check (length, task markers,
and an optional classifier the caller runs) says whether the prompt looks too hard for the
small local model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.pii.analyzer import Analyzer
from appliance.pii.findings import Finding
from appliance.policy.schema import Egress, Policy


@dataclass(frozen=True)
class Classification:
    classes: tuple[str, ...]  # most restrictive first; (default_class,) when nothing matched
    egress: Egress  # the most restrictive egress of `classes`
    findings: tuple[tuple[Finding, ...], ...]  # per text, spans relative to that text
    keywords: dict[str, list[str]]  # class -> the keywords of it found
    hard: str | None  # why the pre-check calls the prompt hard; None when it does not

    @property
    def sensitivity(self) -> str:
        return self.classes[0]

    def finding_types(self) -> dict[str, int]:
        """How many findings of each type (what the audit keeps: never the values)."""
        return dict(Counter(f.type for text in self.findings for f in text))

    def reasons(self) -> list[str]:
        """Why the request is in its class, in words an operator reads in the audit."""
        reasons = []
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
    findings = tuple(tuple(analyzer.analyze(text)) for text in texts)
    joined = "\n".join(texts)
    flat = [f for per_text in findings for f in per_text]
    keywords = policy.keyword_hits(joined)
    # classes_for scans for keywords again only when there is one to find
    classes = policy.classes_for(flat, joined if keywords else "")
    hard = policy.precheck.hard_reason(joined) or classifier_says_hard
    return Classification(
        classes=classes,
        egress=policy.egress_for(classes),
        findings=findings,
        keywords=keywords,
        hard=hard,
    )
