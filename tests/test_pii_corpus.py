"""Precision and recall of the default analyzer on the labelled corpus (tests/data).

Conversations (records with ``messages``) are analysed as the daemon analyses a request's
messages (`Analyzer.analyze_all`); see `appliance.pii.evaluate`.

Matching rule (see `appliance.pii.evaluate`): same type and an overlap of at least 80% of
the longer span. Targets: recall >= 0.99 and precision >= 0.95 for every structured type
(checksums and formats decide); recall >= 0.95 and precision >= 0.90 for the contextual
types (they depend on the words around them, and the corpus has the phrasings we know of,
not every one a user may type). Run with ``-s`` to see the table.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from appliance.pii import CONTEXTUAL_TYPES, STRUCTURED_TYPES, default_analyzer
from appliance.pii.evaluate import (
    DEFAULT_CORPUS,
    TypeScore,
    evaluate,
    format_report,
    load_corpus,
)
from appliance.pii.evaluate import corpus_report as _corpus_report

STRUCTURED_RECALL, STRUCTURED_PRECISION = 0.99, 0.95
CONTEXTUAL_RECALL, CONTEXTUAL_PRECISION = 0.95, 0.90
MIN_PROMPTS = 300
MIN_LABELS_PER_TYPE = 20


def corpus_report() -> list[tuple[str, int, int, int, float, float]]:
    """(type, tp, fp, fn, precision, recall) per type, for benchmark scripts."""
    return _corpus_report()


@pytest.fixture(scope="module")
def scores() -> dict[str, TypeScore]:
    results, mismatches = evaluate(default_analyzer(), load_corpus())
    print()
    print(format_report([(s.type, s.tp, s.fp, s.fn, s.precision, s.recall) for s in results]))
    for mismatch in mismatches:  # the corpus is synthetic: values may be shown
        print(f"  {mismatch.kind} {mismatch.example} {mismatch.type} {mismatch.value!r}")
    return {s.type: s for s in results}


def test_corpus_is_well_formed() -> None:
    lines = DEFAULT_CORPUS.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= MIN_PROMPTS
    records = [json.loads(line) for line in lines]
    assert len({r["id"] for r in records}) == len(records)
    labels: Counter[str] = Counter()
    for record in records:
        assert set(record) - {"messages"} == {"id", "text", "entities", "note"}
        if "messages" in record:  # a conversation: its messages joined by newlines
            assert len(record["messages"]) >= 2
            assert "\n".join(record["messages"]) == record["text"], record["id"]
        previous_end = 0
        for entity in sorted(record["entities"], key=lambda e: e["start"]):
            assert 0 <= entity["start"] < entity["end"] <= len(record["text"])
            assert entity["start"] >= previous_end, record["id"]  # labels do not overlap
            previous_end = entity["end"]
            labels[entity["type"]] += 1
    for kind in STRUCTURED_TYPES + CONTEXTUAL_TYPES:
        assert labels[kind] >= MIN_LABELS_PER_TYPE, kind
    assert sum(1 for r in records if not r["entities"]) >= 100  # near misses and plain text
    # issue 14: spellings, conversations, context, and their near misses
    for part, least in (("spelling", 60), ("conversation", 6), ("context", 20)):
        assert sum(1 for r in records if r["id"].startswith(f"bypass-{part}-")) >= least, part
    assert sum(1 for r in records if r["id"].startswith("bypass-near-miss-")) >= 15
    assert sum(1 for r in records if "messages" in r and not r["entities"]) >= 2


@pytest.mark.parametrize("kind", STRUCTURED_TYPES)
def test_structured_types(scores: dict[str, TypeScore], kind: str) -> None:
    assert scores[kind].recall >= STRUCTURED_RECALL
    assert scores[kind].precision >= STRUCTURED_PRECISION


@pytest.mark.parametrize("kind", CONTEXTUAL_TYPES)
def test_contextual_types(scores: dict[str, TypeScore], kind: str) -> None:
    assert scores[kind].recall >= CONTEXTUAL_RECALL
    assert scores[kind].precision >= CONTEXTUAL_PRECISION


def test_corpus_report_rows() -> None:
    rows = corpus_report()
    assert [row[0] for row in rows] == list(default_analyzer().types)
    for _, tp, fp, fn, precision, recall in rows:
        assert tp + fn > 0
        assert 0.0 <= precision <= 1.0 and 0.0 <= recall <= 1.0
        assert precision == (tp / (tp + fp) if tp + fp else 1.0)
