"""Training data hygiene: what a golden answer must not teach the local model.

The export already keeps PII out (every value is a placeholder such as ``<EMAIL_1>``),
leaves out upstreams with ``trainable = false`` and drops duplicates. What it cannot see is
an upstream answer that *invented* something for a placeholder: a made-up address where
the prompt said ``<EMAIL_1>``, or a placeholder the prompt never had. Trained on, such a
pair teaches the small model to fill placeholders with values of its own, which the box
would then serve as if they were the user's. So a pair is left out when its answer holds a
placeholder, or a PII value, that none of its prompt turns holds. Placeholders themselves
are trained on as the plain text they are, so the model learns to carry them through.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.distill.golden import GoldenPair
from appliance.pii.analyzer import default_analyzer

# What pseudonymize writes (<EMAIL_1>) and what rehydrate also accepts (<email_1>).
PLACEHOLDER = re.compile(r"<([A-Za-z][A-Za-z0-9_]*_[0-9]+)>")
MIN_SCORE = 0.5  # a finding scored below this is not taken as a value


@dataclass(frozen=True)
class Screened:
    kept: list[GoldenPair]
    dropped: list[tuple[int, str]]  # (index in the input, why), never the value itself


def invented(pair: GoldenPair) -> str | None:
    """Why the answer holds what the prompt did not give it, or None when it does not."""
    prompt = "\n".join(content for _, content in pair.messages)
    given = {m.upper() for m in PLACEHOLDER.findall(prompt)}
    for name in PLACEHOLDER.findall(pair.answer):
        if name.upper() not in given:
            kind = name.rsplit("_", 1)[0].upper()
            return f"the answer names a placeholder ({kind}) that the prompt does not have"
    for finding in default_analyzer().analyze(pair.answer, min_score=MIN_SCORE):
        if finding.value(pair.answer) not in prompt:
            return f"the answer holds a value ({finding.type}) that the prompt does not have"
    return None


def screen(pairs: Sequence[GoldenPair]) -> Screened:
    """The pairs safe to train on, and the others with the reason each was left out."""
    kept, dropped = [], []
    for index, pair in enumerate(pairs):
        reason = invented(pair)
        if reason is None:
            kept.append(pair)
        else:
            dropped.append((index, reason))
    return Screened(kept, dropped)
