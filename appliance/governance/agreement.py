"""How close a local answer is to a golden one: normalised exact match, token F1, cosine.

The two measures of extractive question answering (SQuAD's): answers are lower-cased,
punctuation and the articles a/an/the removed and white space collapsed before they are
compared, so "The part code is ZX-4471." and "the part code is zx-4471" agree. Token F1
gives partial credit (the harmonic mean of precision and recall over the words); exact
match gives none. Both are cheap, need no model, and mean the same thing on every run.

The third, for answers that may say the same in other words: the cosine similarity of the
two answers' embeddings (an embedding model's vectors; ``appliance calibrate`` takes them
from an installed ONNX embedding bundle). Distillation's eval and the calibration of the
escalation threshold share these functions, so "agrees" means one thing on the box.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, golden: str) -> bool:
    return normalise(answer) == normalise(golden)


def token_f1(answer: str, golden: str) -> float:
    ours, theirs = normalise(answer).split(), normalise(golden).split()
    if not ours or not theirs:
        return float(ours == theirs)
    common = sum((Counter(ours) & Counter(theirs)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(ours), common / len(theirs)
    return 2 * precision * recall / (precision + recall)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """The cosine similarity of two vectors, in [-1, 1]; 0.0 when either is all zeros."""
    if len(a) != len(b):
        raise ValueError(f"vectors of {len(a)} and {len(b)} dimensions cannot be compared")
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return 0.0 if norms == 0.0 else max(-1.0, min(1.0, dot / norms))
