"""Reversible pseudonymization: PII out, typed placeholders in, and back again.

`pseudonymize` replaces every finding with a placeholder such as ``<EMAIL_1>``; the
`Redaction` it returns keeps the mapping placeholder -> original value, which never leaves
the box. `rehydrate` puts the originals back into an upstream's answer.

Rules, and why:

- **Same value, same placeholder** across all the texts of one request, so that the upstream
  model can still tell "the same address" from "another address". Values are compared
  exactly, not normalised (``4111 1111 1111 1111`` and ``4111111111111111`` get two
  placeholders): the mapping must give back each text character for character.
- **Numbering per type, in order of first appearance** (``<EMAIL_1>``, ``<EMAIL_2>``,
  ``<PHONE_1>``), so placeholders carry no information beyond type and order.
- **No collision with the text itself.** A user may literally write ``<EMAIL_1>`` (or
  ``EMAIL_1``, or ``<email_1>``, which `rehydrate` also accepts). Numbering for a type starts
  above the highest number already written in any text of the request in any of those
  forms, so a placeholder we create never equals one the user wrote, and `rehydrate` leaves
  the user's own untouched (it is not in the mapping).
- **Lenient on the way back**: upstream models sometimes lower-case a placeholder, drop its
  angle brackets or put spaces inside them; all of ``<EMAIL_1>``, ``< EMAIL_1 >``,
  ``<email_1>`` and a bare ``EMAIL_1`` (as a whole word) are restored. Unknown placeholders
  are left as they are. Replacement is one pass, so an original value that itself looks
  like a placeholder is never expanded again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from appliance.pii.findings import Finding

_TYPE_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True, slots=True)
class Redaction:
    """The redacted texts and the placeholder -> original value mapping (keep it local)."""

    texts: list[str]
    mapping: dict[str, str] = field(default_factory=dict)

    @property
    def types(self) -> list[str]:
        """The PII types that were replaced, in order of first appearance."""
        return list(dict.fromkeys(_placeholder_type(p) for p in self.mapping))


def placeholder(kind: str, number: int) -> str:
    return f"<{kind}_{number}>"


def _placeholder_type(token: str) -> str:
    return token[1 : token.rindex("_")]


@lru_cache(maxsize=256)
def _placeholder_pattern(kinds: tuple[str, ...]) -> re.Pattern[str]:
    """Placeholders of `kinds` in every form `rehydrate` accepts; groups: type, number."""
    names = "|".join(re.escape(k) for k in sorted(kinds, key=len, reverse=True))
    return re.compile(
        rf"<[ \t]*(?P<t1>{names})_(?P<n1>[0-9]+)[ \t]*>"
        rf"|(?<![A-Za-z0-9_])(?P<t2>{names})_(?P<n2>[0-9]+)(?![A-Za-z0-9_])",
        re.IGNORECASE | re.ASCII,  # ASCII: no long s or Kelvin sign
    )


def _numbers_in_use(texts: Iterable[str], kinds: tuple[str, ...]) -> dict[str, int]:
    """For each type, the highest N of a ``TYPE_N`` the texts already contain (any form)."""
    highest = dict.fromkeys(kinds, 0)
    if not kinds:
        return highest
    pattern = _placeholder_pattern(kinds)
    stems = tuple(f"{kind.lower()}_" for kind in kinds)
    for text in texts:
        folded = text.lower()
        if not any(stem in folded for stem in stems):
            continue  # the cheap test: no "type_" anywhere, in any case
        for match in pattern.finditer(text):
            kind = (match.group("t1") or match.group("t2")).upper()
            number = int(match.group("n1") or match.group("n2"))
            highest[kind] = max(highest[kind], number)
    return highest


def _disjoint(findings: Sequence[Finding]) -> list[Finding]:
    """`findings` by start, without any that overlaps an earlier one."""
    kept: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if finding.end <= finding.start:
            continue
        if kept and finding.start < kept[-1].end:
            continue
        kept.append(finding)
    return kept


def pseudonymize(texts: Sequence[str], findings: Sequence[Sequence[Finding]]) -> Redaction:
    """Replace each finding in `texts` (``findings[i]`` belongs to ``texts[i]``) with a placeholder.

    Findings should not overlap (an `Analyzer`'s do not); if some do, the earlier-starting
    one is replaced and the other ignored.
    """
    if len(texts) != len(findings):
        raise ValueError(f"{len(texts)} texts but {len(findings)} lists of findings")
    kinds = tuple(dict.fromkeys(f.type for group in findings for f in group))
    for kind in kinds:
        if not _TYPE_NAME.fullmatch(kind):
            raise ValueError(f"PII type {kind!r} cannot name a placeholder")
    next_number = {kind: n + 1 for kind, n in _numbers_in_use(texts, kinds).items()}
    assigned: dict[tuple[str, str], str] = {}  # (type, value) -> placeholder
    mapping: dict[str, str] = {}
    redacted: list[str] = []
    for text, group in zip(texts, findings, strict=True):
        pieces: list[str] = []
        position = 0
        for finding in _disjoint(group):
            value = text[finding.start : finding.end]
            key = (finding.type, value)
            token = assigned.get(key)
            if token is None:
                token = placeholder(finding.type, next_number[finding.type])
                next_number[finding.type] += 1
                assigned[key] = token
                mapping[token] = value
            pieces += (text[position : finding.start], token)
            position = finding.end
        pieces.append(text[position:])
        redacted.append("".join(pieces))
    return Redaction(redacted, mapping)


def rehydrate(text: str, mapping: Mapping[str, str]) -> str:
    """`text` with every known placeholder (in any accepted form) replaced by its original."""
    if not mapping:
        return text
    kinds = tuple(sorted({_placeholder_type(token) for token in mapping}))
    pattern = _placeholder_pattern(kinds)

    def original(match: re.Match[str]) -> str:
        kind = (match.group("t1") or match.group("t2")).upper()
        number = match.group("n1") or match.group("n2")
        return mapping.get(placeholder(kind, int(number)), match.group())

    return pattern.sub(original, text)
