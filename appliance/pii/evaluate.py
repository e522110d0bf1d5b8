"""Precision and recall of an analyzer on a labelled corpus (JSON lines).

Each line is ``{"id": ..., "text": ..., "entities": [{"type", "start", "end"}], "note": ...}``.
A conversation (PII split across a request's messages) also has ``"messages"``: its texts,
which joined by newlines are ``text``; its spans are spans of ``text``. It is analysed as the
daemon does (`Analyzer.analyze_all`), and the parts of one finding in consecutive messages
count as one finding again.
A finding matches a labelled entity when the types are equal and their overlap covers at
least 80% of the *longer* of the two spans: stricter than "80% of the label" (a finding
that swallows the next words does not count), looser than an exact match (``St.`` with or
without its full stop). Each label matches at most one finding. Unmatched findings are
false positives of their type, unmatched labels false negatives.

The repository's corpus is ``tests/data/pii_corpus.jsonl`` (made by
``tests/data/make_pii_corpus.py``); `corpus_report` reads it from a source checkout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from appliance.pii.analyzer import Analyzer, default_analyzer
from appliance.pii.findings import Finding

MIN_OVERLAP = 0.8  # of the longer span
DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "tests" / "data" / "pii_corpus.jsonl"


@dataclass(frozen=True, slots=True)
class Entity:
    type: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    text: str
    entities: tuple[Entity, ...]
    note: str = ""
    messages: tuple[str, ...] = ()  # a conversation: text is these joined by newlines


@dataclass(frozen=True, slots=True)
class TypeScore:
    type: str
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def load_corpus(path: Path = DEFAULT_CORPUS) -> list[Example]:
    examples = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            entities = tuple(
                Entity(e["type"], int(e["start"]), int(e["end"])) for e in record["entities"]
            )
            messages = tuple(record.get("messages", ()))
            if messages and "\n".join(messages) != record["text"]:
                raise ValueError(f"{record['id']}: text is not its messages joined by newlines")
            examples.append(
                Example(record["id"], record["text"], entities, record.get("note", ""), messages)
            )
    return examples


def findings_for(
    analyzer: Analyzer, example: Example, types: Sequence[str] | None = None
) -> list[Finding]:
    """What `analyzer` finds in `example`, as spans of its text.

    For a conversation: each message's findings moved to the joined text, and the parts of
    one finding on either side of a message boundary (same type and recognizer, only blanks
    between) joined into one again.
    """
    if not example.messages:
        return analyzer.analyze(example.text, types)
    found: list[Finding] = []
    offset = 0
    for message, findings in zip(
        example.messages, analyzer.analyze_all(example.messages, types), strict=True
    ):
        for finding in findings:
            moved = replace(finding, start=finding.start + offset, end=finding.end + offset)
            previous = found[-1] if found else None
            if (
                previous is not None
                and (previous.type, previous.recognizer) == (moved.type, moved.recognizer)
                and previous.end <= offset - 1
                and not example.text[previous.end : moved.start].strip()
            ):
                found[-1] = replace(previous, end=moved.end)
            else:
                found.append(moved)
        offset += len(message) + 1
    return found


def spans_match(finding: Finding, entity: Entity) -> bool:
    if finding.type != entity.type:
        return False
    overlap = min(finding.end, entity.end) - max(finding.start, entity.start)
    longer = max(finding.end - finding.start, entity.end - entity.start)
    return overlap > 0 and overlap >= MIN_OVERLAP * longer


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A false positive (`finding` set) or false negative (`entity` set) in one example."""

    example: str
    type: str
    value: str
    kind: str  # "fp" or "fn"


def compare(
    example: Example, findings: Sequence[Finding]
) -> tuple[dict[str, list[int]], list[Mismatch]]:
    """Per type [tp, fp, fn] for one example, and what went wrong in it."""
    counts: dict[str, list[int]] = {}
    mismatches: list[Mismatch] = []
    unmatched = list(findings)
    for entity in example.entities:
        hit = next((f for f in unmatched if spans_match(f, entity)), None)
        row = counts.setdefault(entity.type, [0, 0, 0])
        if hit is None:
            row[2] += 1
            value = example.text[entity.start : entity.end]
            mismatches.append(Mismatch(example.id, entity.type, value, "fn"))
        else:
            row[0] += 1
            unmatched.remove(hit)
    for finding in unmatched:
        counts.setdefault(finding.type, [0, 0, 0])[1] += 1
        mismatches.append(Mismatch(example.id, finding.type, finding.value(example.text), "fp"))
    return counts, mismatches


def evaluate(
    analyzer: Analyzer, examples: Iterable[Example], types: Sequence[str] | None = None
) -> tuple[list[TypeScore], list[Mismatch]]:
    """Scores per type (in `types` order, default: the analyzer's) and every mismatch."""
    totals: dict[str, list[int]] = {}
    mismatches: list[Mismatch] = []
    for example in examples:
        counts, wrong = compare(example, findings_for(analyzer, example, types))
        mismatches += wrong
        for kind, (tp, fp, fn) in counts.items():
            total = totals.setdefault(kind, [0, 0, 0])
            total[0] += tp
            total[1] += fp
            total[2] += fn
    order = list(types or analyzer.types)
    order += sorted(set(totals) - set(order))
    scores = [TypeScore(kind, *totals.get(kind, [0, 0, 0])) for kind in order]
    return scores, mismatches


def corpus_report(
    path: Path = DEFAULT_CORPUS, analyzer: Analyzer | None = None
) -> list[tuple[str, int, int, int, float, float]]:
    """(type, tp, fp, fn, precision, recall) per type of the default analyzer on the corpus."""
    scores, _ = evaluate(analyzer or default_analyzer(), load_corpus(path))
    return [(s.type, s.tp, s.fp, s.fn, s.precision, s.recall) for s in scores]


def format_report(rows: Sequence[tuple[str, int, int, int, float, float]]) -> str:
    """`corpus_report`'s rows as a fixed-width table."""
    lines = [f"{'type':<16}{'tp':>6}{'fp':>6}{'fn':>6}{'precision':>11}{'recall':>9}"]
    for kind, tp, fp, fn, precision, recall in rows:
        lines.append(f"{kind:<16}{tp:>6}{fp:>6}{fn:>6}{precision:>11.3f}{recall:>9.3f}")
    return "\n".join(lines)
