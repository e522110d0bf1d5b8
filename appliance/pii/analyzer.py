"""Runs a set of recognizers over a text and resolves their overlapping findings.

Recognizers are independent and may disagree about a span: the digits of an IBAN can also
pass as a card number, a phone number inside a longer address. Overlaps are resolved
greedily: the finding with the higher score wins, then the longer one, then the earlier
one; a finding that overlaps one already kept is dropped. Checksum-validated types score
highest, so they beat shape-only and context-only readings of the same characters.

`types` restricts the analysis to some PII types: recognizers without any of them are not
run at all (that is what makes it cheap), so overlaps are only resolved among the requested
types. A recognizer that raises makes `analyze` raise: a policy must not treat "the detector
failed" as "no PII".
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Sequence
from functools import cache

from appliance.pii.address import StreetAddressRecognizer
from appliance.pii.contact import EmailRecognizer, PhoneRecognizer
from appliance.pii.credentials import SecretRecognizer
from appliance.pii.financial import CreditCardRecognizer, IbanRecognizer
from appliance.pii.findings import Finding, Recognizer
from appliance.pii.identity import (
    DateOfBirthRecognizer,
    DocumentNumberRecognizer,
    UsSsnRecognizer,
)
from appliance.pii.network import IpAddressRecognizer, MacAddressRecognizer


def resolve_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    """Non-overlapping findings sorted by start: higher score, then longer span, wins."""
    ranked = sorted(set(findings), key=lambda f: (-f.score, f.start - f.end, f.start, f.type))
    starts: list[int] = []
    kept: list[Finding] = []  # sorted by start, pairwise disjoint
    for finding in ranked:
        index = bisect.bisect_left(starts, finding.start)
        if index < len(kept) and kept[index].start < finding.end:
            continue  # overlaps the next kept finding
        if index > 0 and kept[index - 1].end > finding.start:
            continue  # overlaps the previous kept finding
        starts.insert(index, finding.start)
        kept.insert(index, finding)
    return kept


class Analyzer:
    """Finds PII in texts with the given recognizers."""

    def __init__(self, recognizers: Iterable[Recognizer]) -> None:
        self.recognizers: tuple[Recognizer, ...] = tuple(recognizers)

    @property
    def types(self) -> tuple[str, ...]:
        """Every PII type some recognizer reports, in recognizer order."""
        return tuple(dict.fromkeys(t for r in self.recognizers for t in r.types))

    def analyze(
        self, text: str, types: Collection[str] | None = None, min_score: float = 0.0
    ) -> list[Finding]:
        """The PII in `text` (only of `types`, when given) scoring at least `min_score`."""
        wanted = None if types is None else frozenset(types)
        found: list[Finding] = []
        for recognizer in self.recognizers:
            if wanted is not None and wanted.isdisjoint(recognizer.types):
                continue
            for finding in recognizer.find(text):
                if finding.score < min_score or finding.end <= finding.start:
                    continue
                if wanted is None or finding.type in wanted:
                    found.append(finding)
        return resolve_overlaps(found)

    def analyze_all(
        self, texts: Sequence[str], types: Collection[str] | None = None, min_score: float = 0.0
    ) -> list[list[Finding]]:
        """`analyze` for each text (e.g. the messages of one request)."""
        return [self.analyze(text, types, min_score) for text in texts]


def default_recognizers() -> list[Recognizer]:
    """A fresh instance of every built-in recognizer (no NER: that needs a model bundle)."""
    return [
        EmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        IpAddressRecognizer(),
        MacAddressRecognizer(),
        DateOfBirthRecognizer(),
        DocumentNumberRecognizer(),
        SecretRecognizer(),
        StreetAddressRecognizer(),
    ]


@cache
def default_analyzer() -> Analyzer:
    """The process-wide analyzer with the built-in recognizers (built once)."""
    return Analyzer(default_recognizers())
