"""How close a local answer is to the golden one: normalised exact match and token F1.

The two measures of extractive question answering (SQuAD's): answers are lower-cased,
punctuation and the articles a/an/the removed and white space collapsed before they are
compared, so "The part code is ZX-4471." and "the part code is zx-4471" agree. Token F1
gives partial credit (the harmonic mean of precision and recall over the words); exact
match gives none. Both are cheap, need no model, and mean the same thing on every run.
"""

from __future__ import annotations

import re
import string
from collections import Counter

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
