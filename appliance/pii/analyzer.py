"""Runs a set of recognizers over a text and resolves their overlapping findings.

Recognizers read a normalised view of the text (`appliance.pii.normalize`: fullwidth
digits, Unicode spaces and dashes, invisible characters), made once here so that each of
them, and the NER model, benefits; their findings are mapped back to spans of the original
text, covering every original character of the value, so that a redaction replaces exactly
what was typed.

Recognizers are independent and may disagree about a span: the digits of an IBAN can also
pass as a card number, a phone number inside a longer address. Overlaps are resolved
greedily: the finding with the higher score wins, then the longer one, then the earlier
one; a finding that overlaps one already kept is dropped. Checksum-validated types score
highest, so they beat shape-only and context-only readings of the same characters.

`analyze_all` reads the messages of one request: each alone, and all of them joined
(`appliance.pii.conversation`), so that a value split across messages, or a context word in
one message for a number in the next, is found too.

`types` restricts the analysis to some PII types: recognizers without any of them are not
run at all (that is what makes it cheap), so overlaps are only resolved among the requested
types. A recognizer that raises, or a text that cannot be normalised, makes `analyze` raise:
a policy must not treat "the detector failed" as "no PII".
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Collection, Iterable, Iterator, Sequence
from functools import cache

from appliance.pii.address import StreetAddressRecognizer
from appliance.pii.contact import EmailRecognizer, PhoneRecognizer
from appliance.pii.conversation import JoinedView
from appliance.pii.credentials import SecretRecognizer
from appliance.pii.financial import CreditCardRecognizer, IbanRecognizer
from appliance.pii.findings import Finding, Recognizer
from appliance.pii.identity import (
    DateOfBirthRecognizer,
    DocumentNumberRecognizer,
    UsSsnRecognizer,
)
from appliance.pii.network import IpAddressRecognizer, MacAddressRecognizer
from appliance.pii.normalize import TextView, normalize


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
        view = normalize(text)
        return resolve_overlaps(_original(view, self._find(view.text, types, min_score)))

    def analyze_all(
        self, texts: Sequence[str], types: Collection[str] | None = None, min_score: float = 0.0
    ) -> list[list[Finding]]:
        """The PII in each of `texts`, the messages of one request: each text alone, and
        what the texts joined find in it (a value split across messages, a context word in
        the message before).

        A value may also be split across two turns of one speaker with the other's reply in
        between ("My card: 4111 1111" / "Go on." / "1111 1111"): the recognizers whose
        values run on across a message break (``joins_messages = True``: the card numbers)
        also read every other message joined (the even ones, the odd ones), and what they
        find there across a break counts too.
        """
        views = [normalize(text) for text in texts]
        found = [list(_original(v, self._find(v.text, types, min_score))) for v in views]
        if len(views) > 1:
            self._add_joined(views, range(len(views)), types, min_score, found)
        if len(views) > 2:
            joining = [r for r in self.recognizers if getattr(r, "joins_messages", False)]
            for first in (0, 1):
                turns = range(first, len(views), 2)
                if len(turns) > 1:
                    self._add_joined(views, turns, types, min_score, found, joining)
        return [resolve_overlaps(group) for group in found]

    def _add_joined(
        self,
        views: Sequence[TextView],
        indexes: range,
        types: Collection[str] | None,
        min_score: float,
        found: list[list[Finding]],
        recognizers: Sequence[Recognizer] | None = None,
    ) -> None:
        """Adds to `found` what the views at `indexes`, joined, find in each of them (with
        `recognizers`: only what runs on across a break)."""
        joined = JoinedView.of([views[i] for i in indexes])
        for finding in self._find(joined.text, types, min_score, recognizers):
            pieces = list(joined.pieces(finding))
            if recognizers is None or len(pieces) > 1:
                for index, piece in pieces:
                    found[indexes[index]].append(piece)

    def _find(
        self,
        text: str,
        types: Collection[str] | None,
        min_score: float,
        recognizers: Sequence[Recognizer] | None = None,
    ) -> Iterator[Finding]:
        """The findings of `recognizers` (default: all) in `text`, overlaps and all."""
        wanted = None if types is None else frozenset(types)
        for recognizer in self.recognizers if recognizers is None else recognizers:
            if wanted is not None and wanted.isdisjoint(recognizer.types):
                continue
            for finding in recognizer.find(text):
                if finding.score < min_score or finding.end <= finding.start:
                    continue
                if wanted is None or finding.type in wanted:
                    yield finding


def _original(view: TextView, findings: Iterable[Finding]) -> Iterator[Finding]:
    """`findings` in `view` as spans of its original text."""
    if view.same_offsets:
        yield from findings
        return
    for finding in findings:
        start, end = view.span(finding.start, finding.end)
        yield dataclasses.replace(finding, start=start, end=end)


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
