"""The local answer's confidence, from the log-probabilities of the tokens it chose.

Five measures, all probabilities in (0, 1] so one threshold scale serves them all. Three
read the whole answer:

``mean``    the geometric mean of the token probabilities, exp(mean log p). Length-normalised
            and the usual baseline of model cascades; one ambiguous word among many equally
            good continuations barely moves it.
``min``     the least likely token. Flags a single uncertain token (a digit of a number, a
            name) but fires on nearly every open-ended answer, where many words fit somewhere.
``tail``    the p-th percentile of the token probabilities: between the two, ignoring the
            worst few tokens of a long answer but not a run of uncertain ones.

Two read only the *answer* at the start, not what the model goes on with after it (a short
answer is followed by whatever the model guesses comes next, and the tokens of that guess
are often unlikely however right the answer was):

``first``   the least likely of the first k tokens (``first_tokens``; k = 1 is the first
            token's probability).
``clause``  the least likely token of the first clause: the tokens up to the first
            punctuation mark or line break after the answer's first letter or digit (a
            point or comma between two digits, as in 3.14 or 1,000, does not end it). It
            needs each token's text; an answer with no such mark is one clause.

``clause`` is the default: of the five it told right local answers from wrong ones best in
``scripts/bench_cascade.py`` (short factual questions; policies/README.md has the table).

Tokens whose log-probability was not computed (NaN) are left out; an answer with none (in the
span measured) has no confidence (None), and the router treats that as "not known to be good
enough".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Protocol, get_args

import numpy as np

from appliance.policy.schema import CascadeSettings, ConfidenceMeasure

Measure = ConfidenceMeasure
MEASURES: tuple[str, ...] = get_args(ConfidenceMeasure)

# what ends a clause: sentence punctuation (ASCII and the CJK full-width forms), a line break
_CLAUSE_END = re.compile(r"[.,;:!?\n\u3002\uff0c\uff1b\uff1a\uff01\uff1f]")
_CONTENT = re.compile(r"\w")


class ScoredToken(Protocol):
    """A generated token as the backends report it (``runtime.backend.TokenEvent``)."""

    @property
    def token_id(self) -> int: ...  # -1 for an event that carries no token

    @property
    def logprob(self) -> float: ...  # NaN when it was not computed

    @property
    def token(self) -> str: ...  # the token's own text


def clause_length(texts: Sequence[str]) -> int:
    """How many of the tokens `texts` (in order) hold the answer's first clause.

    The clause is the text before the first clause mark that follows the first letter or
    digit; a token holds it when it starts before that mark (" Paris," does, a lone "."
    after "Paris" does not). No mark: every token."""
    text = "".join(texts)
    content = _CONTENT.search(text)
    if content is None:
        return len(texts)
    end = None
    for mark in _CLAUSE_END.finditer(text, content.start()):
        at = mark.start()
        between_digits = (
            mark.group() in ".," and 0 < at < len(text) - 1
            and text[at - 1].isdigit() and text[at + 1].isdigit()
        )  # fmt: skip
        if not between_digits:
            end = at
            break
    if end is None:
        return len(texts)
    count, offset = 0, 0
    for piece in texts:
        if offset >= end:
            break
        count += 1
        offset += len(piece)
    return count


def first_clause(text: str) -> str:
    """The answer's first clause as text (what ``clause`` measures), without the mark."""
    return text[: clause_length(list(text))]


def confidence(
    logprobs: Iterable[float],
    measure: Measure = "mean",
    percentile: float = 10.0,
    *,
    texts: Sequence[str] | None = None,
    first_tokens: int = 1,
) -> float | None:
    """The answer's confidence under `measure`, or None when no token (of the span it reads)
    has a log-probability. `texts`: each token's text, as many as `logprobs` (``clause``
    needs them); `first_tokens`: k of ``first``."""
    values = [float(lp) for lp in logprobs]
    if measure == "first":
        if first_tokens < 1:
            raise ValueError(f"first_tokens must be at least 1 (got {first_tokens})")
        values = values[:first_tokens]
    elif measure == "clause":
        if texts is None or len(texts) != len(values):
            raise ValueError("the clause measure needs each token's text, one per log-probability")
        values = values[: clause_length(texts)]
    known = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if known.size == 0:
        return None
    if measure == "mean":
        return float(math.exp(known.mean()))
    if measure in ("min", "first", "clause"):
        return float(math.exp(known.min()))
    if measure == "tail":
        # "lower" picks an actual token's value: no interpolation between two tokens
        return float(math.exp(np.percentile(known, percentile, method="lower")))
    raise ValueError(f"unknown confidence measure {measure!r}")


def answer_confidence(tokens: Iterable[ScoredToken], cascade: CascadeSettings) -> float | None:
    """The confidence of a generated answer under the policy's cascade settings: its tokens as
    a backend reported them (events that carry no token are skipped)."""
    chosen = [t for t in tokens if t.token_id >= 0]
    return confidence(
        (t.logprob for t in chosen),
        cascade.confidence_measure,
        cascade.tail_percentile,
        texts=[t.token for t in chosen],
        first_tokens=cascade.first_tokens,
    )


__all__ = [
    "MEASURES",
    "Measure",
    "ScoredToken",
    "answer_confidence",
    "clause_length",
    "confidence",
    "first_clause",
]
