"""Whole-word, case-insensitive phrase matching: the keywords of a class, the task markers.

A policy decision has a p99 budget of 2 ms for a 2 KB prompt, all of it, so each list of
phrases is compiled once, when the policy is loaded, into one regular expression: one pass over
the prompt per list instead of one per phrase. Python's regex engine still steps through the
prompt one position at a time (about 0.1 ms for 2 KB), so a prefilter runs first: in ASCII text,
a phrase can only match where each of its words occurs as a plain substring of the lower-cased
text, and ``str.__contains__`` checks that in C in microseconds. Most prompts hold none of the
phrases and never reach the regex.

"Whole word" means the phrase is neither preceded nor followed by a word character, so
``confidential`` matches "Confidential:" and "(confidential)" but not "confidentiality".
Lookarounds are used instead of ``\\b`` because ``\\b`` misbehaves next to a phrase that
starts or ends with punctuation ("c++", "r&d"). Any run of white space inside a phrase matches
any run of white space in the prompt ("internal only" matches "internal\\n  only").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


def phrase_key(phrase: str) -> str:
    """The form in which two phrases compare equal: case-folded, inner white space collapsed."""
    return " ".join(phrase.casefold().split())


def compile_phrases(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive whole-word pattern for all `phrases`; None when there are none.

    Longer phrases come first in the alternation so that, where two start at the same place,
    the longer one is reported ("private key" rather than "private").
    """
    by_key: dict[str, str] = {}
    for phrase in phrases:
        if phrase.strip():
            by_key.setdefault(phrase_key(phrase), phrase)
    if not by_key:
        return None
    ordered = sorted(by_key.values(), key=lambda p: (-len(phrase_key(p)), phrase_key(p)))
    alternatives = "|".join(r"\s+".join(re.escape(word) for word in p.split()) for p in ordered)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class PhraseMatcher:
    """A list of phrases, compiled once; `search` is the per-request call."""

    pattern: re.Pattern[str]
    phrases: tuple[str, ...]
    # Per phrase, its lower-cased words: all must occur in the text for the phrase to match.
    # None when a phrase is not ASCII: case-insensitive regex matching of non-ASCII letters
    # (U+017F, the long s, matches "s") is not what str.lower() does: the prefilter could miss.
    required_words: tuple[tuple[str, ...], ...] | None

    @classmethod
    def build(cls, phrases: Iterable[str]) -> PhraseMatcher | None:
        """The matcher for `phrases`; None when there are none."""
        phrases = tuple(phrases)
        pattern = compile_phrases(phrases)
        if pattern is None:
            return None
        ascii_only = all(p.isascii() for p in phrases)
        required = tuple(tuple(p.lower().split()) for p in phrases) if ascii_only else None
        return cls(pattern, phrases, required)

    def search(self, text: str) -> re.Match[str] | None:
        """The first phrase in `text`, or None."""
        if self.required_words is not None and text.isascii():
            lowered = text.lower()
            if not any(all(w in lowered for w in words) for words in self.required_words):
                return None
        return self.pattern.search(text)

    def find_all(self, text: str) -> list[str]:
        """The phrases found in `text`, spelled as in the policy, each once, in order."""
        if self.search(text) is None:
            return []
        spelled = {phrase_key(p): p for p in self.phrases}
        found: dict[str, str] = {}
        for match in self.pattern.finditer(text):
            key = phrase_key(match.group())
            found.setdefault(key, spelled.get(key, match.group()))
        return list(found.values())
