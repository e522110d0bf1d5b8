"""Small helpers the recognizers share: context windows, digit counts, entropy.

A shape alone is weak evidence for many PII types (nine digits, a date, an alphanumeric
token); the words right before it ("SSN", "born", "passport no.") are what make it PII.
These helpers look at a bounded window of text around a candidate, so their cost does not
grow with the prompt.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator

CONTEXT_WINDOW = 40  # characters before a candidate searched for context words


def before(text: str, start: int, window: int = CONTEXT_WINDOW) -> str:
    """The `window` characters that end at `start`."""
    return text[max(0, start - window) : start]


def after(text: str, end: int, window: int = CONTEXT_WINDOW) -> str:
    """The `window` characters that start at `end`."""
    return text[end : end + window]


def has_context(
    text: str, start: int, pattern: re.Pattern[str], window: int = CONTEXT_WINDOW
) -> bool:
    """Whether `pattern` (written in lower case) occurs in the `window` characters before
    `start`, compared in lower case."""
    return pattern.search(fold(before(text, start, window))) is not None


_NON_DIGITS = re.compile(r"[^0-9]+")


def digits(value: str) -> str:
    """The ASCII digits of `value`, in order."""
    return _NON_DIGITS.sub("", value)


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`'s own character distribution (0 for an empty string)."""
    if not value:
        return 0.0
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in Counter(value).values())


def character_classes(value: str) -> int:
    """How many of lower case, upper case, digits and other characters `value` mixes."""
    return (
        any(c.islower() for c in value)
        + any(c.isupper() for c in value)
        + any(c.isdigit() for c in value)
        + any(not c.isalnum() for c in value)
    )


def glued_before(text: str, start: int, extra: str = "") -> bool:
    """Whether the character before `start` is a letter, digit, '_' or one of `extra`.

    The recognizers check this in Python instead of with a leading look-behind: a regex that
    starts with a look-behind cannot use the engine's fast scan for its first character.
    """
    if start == 0:
        return False
    char = text[start - 1]
    return char.isalnum() or char == "_" or char in extra


def fold(text: str) -> str:
    """`text` in lower case with the same length, so offsets in it are offsets in `text`.

    Keyword patterns run case-sensitively over this (an IGNORECASE scan is several times
    slower); the rare characters whose lower case is longer ("İ") are left as they are.
    """
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def contains_any(text: str, needles: tuple[str, ...]) -> bool:
    """Whether any of `needles` occurs in `text` (a cheap test before a regex scan)."""
    return any(needle in text for needle in needles)


def matches_near(
    pattern: re.Pattern[str], folded: str, stems: tuple[str, ...], reach: int = 40
) -> Iterator[re.Match[str]]:
    """Matches of `pattern` in `folded` around the places where one of `stems` occurs.

    Keyword patterns with many alternatives are slow to scan a whole prompt with (every
    letter may start one); finding their stems with ``str.find`` and scanning only `reach`
    characters around each is several times faster. Every alternative of `pattern` must
    contain one of the stems, and be at most `reach` characters long.
    """
    windows: list[tuple[int, int]] = []
    for stem in stems:
        index = folded.find(stem)
        while index >= 0:
            windows.append((max(0, index - reach), min(len(folded), index + len(stem) + reach)))
            index = folded.find(stem, index + 1)
    windows.sort()
    start, end = -1, -1
    for low, high in [*windows, (len(folded) + 1, len(folded) + 1)]:
        if low <= end:
            end = max(end, high)
            continue
        if end > start:
            yield from pattern.finditer(folded, start, end)
        start, end = low, high
