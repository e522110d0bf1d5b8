"""Identity numbers: US social security numbers, dates of birth, passports and national ids.

US SSN: ``AAA-GG-SSSS`` or ``AAA GG SSSS`` checked by ``python-stdnum`` (area not 000, 666
or 900-999, group not 00, serial not 0000, and the numbers that were published in
advertising). After "SSN" or "social security" any separators count (``536.90.4399``,
``536 - 90 - 4399``, ``536/90/4399``), and so do nine bare digits; without such a word only
the dashed and the spaced forms do. The score is higher when such a word is near, and lower
for the space-separated form, which is more often something else.

Date of birth: a real date in the past (see `appliance.pii.dates`) within 40 characters
after "born", "DOB", "d.o.b.", "date of birth", "birthday", "geb." or "geboren". A date
alone is never reported: most dates in prompts are not birthdays.

Passport and national id: the numbers have no common checksum, so the words decide: an
alphanumeric token of 6 to 20 characters with at least three digits (groups separated by
single spaces or hyphens allowed, as in ``QQ 12 34 56 C`` or ``1234 5678 9012``) right
after "passport no.", "ID card number", "driver's licence", "DL#", "Personalausweis", ...
These are context-only findings, so they score lower than the checksum-validated types.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from stdnum.us import ssn

from appliance.pii.context import (
    contains_any,
    digits,
    fold,
    glued_before,
    has_context,
    matches_near,
)
from appliance.pii.dates import find_past_date
from appliance.pii.findings import DATE_OF_BIRTH, NATIONAL_ID, PASSPORT, US_SSN, Finding

# ------------------------------------------------------------------------------------- SSN

_SSN_GROUPED = re.compile(
    r"[0-9](?<![A-Za-z0-9_][0-9])[0-9]{2}([- ])[0-9]{2}\1[0-9]{4}(?![A-Za-z0-9_\-]|[.,][0-9])"
)
_SSN_BARE = re.compile(r"[0-9](?<![A-Za-z0-9_][0-9])[0-9]{8}(?![A-Za-z0-9_\-]|[.,][0-9])")
# After an SSN word: 3-2-4 digits with any separators, each up to three characters long.
_SSN_ANY_SEPARATORS = re.compile(
    r"[0-9](?<![A-Za-z0-9_][0-9])[0-9]{2}[ \-./]{1,3}[0-9]{2}[ \-./]{1,3}[0-9]{4}"
    r"(?![A-Za-z0-9_\-]|[.,][0-9])"
)
_SSN_WORDS = re.compile(
    r"(?<![a-z0-9_])(?:ssn|ss\s*#|ss\s+no|social\s+security|social\s+sec|taxpayer\s+id)"
    r"(?![a-z0-9_])"
)
_SSN_STEMS = ("ssn", "ss#", "ss no", "social", "taxpayer")


class UsSsnRecognizer:
    """US social security numbers (structure checked by ``stdnum.us.ssn``)."""

    name = "us_ssn"
    types = (US_SSN,)
    score_dashed = 0.85
    score_spaced = 0.6
    score_in_context = 0.95
    score_bare = 0.9  # nine digits right after an SSN word

    def find(self, text: str) -> Iterator[Finding]:
        for match in _SSN_GROUPED.finditer(text):
            if glued_before(text, match.start(), "-."):
                continue
            if not ssn.is_valid(match.group().replace(" ", "-")):
                continue
            if has_context(text, match.start(), _SSN_WORDS):
                score = self.score_in_context
            else:
                score = self.score_dashed if match.group(1) == "-" else self.score_spaced
            yield Finding(US_SSN, match.start(), match.end(), score, self.name)
        if not contains_any(fold(text), _SSN_STEMS):
            return
        for match in _SSN_BARE.finditer(text):
            if glued_before(text, match.start(), "-."):
                continue
            if ssn.is_valid(match.group()) and has_context(text, match.start(), _SSN_WORDS):
                yield Finding(US_SSN, match.start(), match.end(), self.score_bare, self.name)
        for match in _SSN_ANY_SEPARATORS.finditer(text):
            if glued_before(text, match.start(), "-."):
                continue
            if ssn.is_valid(digits(match.group())) and has_context(text, match.start(), _SSN_WORDS):
                yield Finding(US_SSN, match.start(), match.end(), self.score_bare, self.name)


# --------------------------------------------------------------------------- date of birth

# Matched in the lower-cased text; the stems are a cheaper test that any can occur.
_BIRTH_WORDS = re.compile(
    r"(?:date\s+of\s+birth|birth\s*date|birthday|b-?day|born|d\.\s?o\.\s?b\.?"
    r"|dob|geburtsdatum|geboren|geb\.|date\s+de\s+naissance|n[ée]e?\s+le"
    r"|fecha\s+de\s+nacimiento)(?![a-z0-9_-])"
)
_BIRTH_STEMS: tuple[str, ...] = ("birth", "bday", "b-day", "born", "d.o", "d. o", "dob", "geb")
_BIRTH_STEMS += ("naissance",)
_BIRTH_STEMS += ("née", "nee", "ne le", "nacimiento")
BIRTH_WINDOW = 40  # characters after the word in which the date must begin


class DateOfBirthRecognizer:
    """Real past dates right after a birth word."""

    name = "date_of_birth"
    types = (DATE_OF_BIRTH,)
    score = 0.85

    def find(self, text: str) -> Iterator[Finding]:
        folded = fold(text)
        if not contains_any(folded, _BIRTH_STEMS):
            return
        scanned = 0  # dates starting before this were already looked for
        for word in matches_near(_BIRTH_WORDS, folded, _BIRTH_STEMS):
            if glued_before(folded, word.start(), "-"):
                continue
            end = text.find("\n", word.end(), word.end() + BIRTH_WINDOW)
            end = word.end() + BIRTH_WINDOW if end < 0 else end
            match = find_past_date(text, max(word.end(), scanned), end)
            if match is None:
                scanned = max(scanned, end)
            else:
                scanned = match.end()
                yield Finding(DATE_OF_BIRTH, match.start(), match.end(), self.score, self.name)


# --------------------------------------------------------------- passport and national id

# Matched in the lower-cased text, except the upper-case acronyms, matched as written.
_PASSPORT_WORDS = re.compile(
    r"(?:passport|reisepass|passeport|pasaporte|passaporto|paspoort)(?:nummer|-?nr\.?)?"
    r"(?![a-z0-9_-])"
)
_PASSPORT_STEMS = ("pass", "pasaporte", "paspoort")
_NATIONAL_ID_WORDS = re.compile(
    r"(?:(?:national\s+)?id(?:entity)?[\s-]*card|identity\s+(?:number|no\.?|document)"
    r"|national\s+id(?:entity|entification)?|national\s+insurance|ni\s+number"
    r"|driver'?s?\s+licen[cs]e|driving\s+licen[cs]e|dl\s*#|dl\s+(?:no|number)"
    r"|personalausweis(?:nummer)?|ausweis(?:nummer|-?nr\.?)|f(?:ü|ue)hrerschein(?:nummer)?"
    r"|steuer-?id|steuer-?identifikationsnummer|tax\s+id(?:entification)?"
    r"|aadhaar|carte\s+d'identit[ée]|codice\s+fiscale|personnummer|social\s+insurance"
    r")(?![a-z0-9_-])"
)
_NATIONAL_ID_STEMS: tuple[str, ...] = ("card", "identit", "national", "ni number", "licen", "dl")
_NATIONAL_ID_STEMS += ("ausweis",)
_NATIONAL_ID_STEMS += ("führer", "fuehrer", "steuer", "tax", "aadhaar", "fiscale")
_NATIONAL_ID_STEMS += ("personnummer", "insurance")
_NATIONAL_ID_ACRONYMS = re.compile(
    r"(?:DNI|NIE|BSN|CPR|PESEL|NIR|NINO|SIN|TIN|NIN)(?![A-Za-z0-9_-])"
)
_FILLER = re.compile(
    r"(?:[\s:#=()\-\u2013]|(?<![a-z])(?:no|nr|num|number|nummer|numero|is|was|reads|id)"
    r"(?![a-z])\.?){0,12}"
)
_TOKEN = re.compile(r"[A-Za-z0-9]{1,20}(?:[ \-][A-Z0-9]{1,20}){0,5}(?![A-Za-z0-9_\-])")
_NINO_SUFFIX = re.compile(r"[A-D]")


def _document_number(text: str, folded: str, start: int) -> tuple[int, int] | None:
    """The span of the id number right after `start` (and filler words), or None."""
    filler = _FILLER.match(folded, start, start + 40)
    position = filler.end() if filler else start
    token = _TOKEN.match(text, position)
    if token is None:
        return None
    groups = re.split(r"[ \-]", token.group())
    kept = [groups[0]]
    for group in groups[1:]:
        if any(c.isdigit() for c in group):
            kept.append(group)
        elif _NINO_SUFFIX.fullmatch(group) and kept[-1].isdigit():
            kept.append(group)
            break
        else:
            break
    value = token.group()[: sum(len(g) for g in kept) + len(kept) - 1]
    compact = "".join(kept)
    if not 6 <= len(compact) <= 20 or sum(c.isdigit() for c in compact) < 3:
        return None
    first = groups[0]
    if not (first.isupper() or first.isdigit() or first.islower()):
        return None  # mixed-case words are prose, not document numbers
    if not any(c.isdigit() for c in first) and not (first.isupper() and len(first) <= 3):
        return None  # a word ("expires 2030"), not a letter prefix ("QQ 12 34 56 C")
    return position, position + len(value)


class DocumentNumberRecognizer:
    """Passport and national id numbers, recognized by the words in front of them."""

    name = "document_number"
    types = (PASSPORT, NATIONAL_ID)
    score_passport = 0.8
    score_national_id = 0.75

    def find(self, text: str) -> Iterator[Finding]:
        folded = fold(text)
        words: list[tuple[re.Match[str], str, float]] = []
        found = matches_near(_PASSPORT_WORDS, folded, _PASSPORT_STEMS)
        words += [(m, PASSPORT, self.score_passport) for m in found]
        found = matches_near(_NATIONAL_ID_WORDS, folded, _NATIONAL_ID_STEMS)
        words += [(m, NATIONAL_ID, self.score_national_id) for m in found]
        found = _NATIONAL_ID_ACRONYMS.finditer(text)
        words += [(m, NATIONAL_ID, self.score_national_id) for m in found]
        for word, kind, score in words:
            if glued_before(folded, word.start(), "-"):
                continue
            span = _document_number(text, folded, word.end())
            if span is not None:
                yield Finding(kind, span[0], span[1], score, self.name)
