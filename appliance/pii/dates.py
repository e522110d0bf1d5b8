"""Calendar dates in the formats people type, validated as real days in the past.

Used by the date-of-birth recognizer: a date is not PII on its own, only next to "born",
"DOB" and the like. Numeric dates are ambiguous (03/04/1985): a date is accepted when
either the day-first or the month-first reading is a real day. Two-digit years are read as
the latest year not in the future (``03/14/85`` is 1985, ``01/02/03`` is 2003).
"""

from __future__ import annotations

import re
from datetime import date

_MONTH_NAMES = {
    "january": 1, "jan": 1, "januar": 1, "janvier": 1, "jänner": 1,
    "february": 2, "feb": 2, "februar": 2, "février": 2, "fevrier": 2,
    "march": 3, "mar": 3, "märz": 3, "maerz": 3, "mars": 3, "mär": 3,
    "april": 4, "apr": 4, "avril": 4,
    "may": 5, "mai": 5,
    "june": 6, "jun": 6, "juni": 6, "juin": 6,
    "july": 7, "jul": 7, "juli": 7, "juillet": 7,
    "august": 8, "aug": 8, "août": 8, "aout": 8,
    "september": 9, "sep": 9, "sept": 9, "septembre": 9,
    "october": 10, "oct": 10, "oktober": 10, "okt": 10, "octobre": 10,
    "november": 11, "nov": 11, "novembre": 11,
    "december": 12, "dec": 12, "dezember": 12, "dez": 12, "décembre": 12, "decembre": 12,
}  # fmt: skip
_MONTH = "|".join(sorted((re.escape(m) for m in _MONTH_NAMES), key=len, reverse=True))
_START = r"(?<![\w/.\-])"
_END = r"(?![\w])(?![-/.][0-9])"
_ISO = re.compile(_START + r"(?P<y>[0-9]{4})([-/.])(?P<m>[0-9]{1,2})\2(?P<d>[0-9]{1,2})" + _END)
_NUMERIC = re.compile(
    _START + r"(?P<a>[0-9]{1,2})([-/.])(?P<b>[0-9]{1,2})\2(?P<y>[0-9]{4}|[0-9]{2})" + _END
)
_MONTH_FIRST = re.compile(
    rf"(?i){_START}(?P<mn>{_MONTH})\.?\s+(?P<d>[0-9]{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<y>[0-9]{{4}})"
    + _END
)
_DAY_FIRST = re.compile(
    rf"(?i){_START}(?P<d>[0-9]{{1,2}})(?:st|nd|rd|th|\.)?\s+(?:of\s+)?(?P<mn>{_MONTH})\.?,?\s+(?P<y>[0-9]{{4}})"
    + _END
)
DATE_PATTERNS = (_ISO, _NUMERIC, _MONTH_FIRST, _DAY_FIRST)
EARLIEST_YEAR = 1900
MAX_DATE_LENGTH = 40  # characters: "14th of September, 1985" and then some


def _real_day(year: int, month: int, day: int, today: date) -> bool:
    try:
        when = date(year, month, day)
    except ValueError:
        return False
    return year >= EARLIEST_YEAR and when <= today


def _full_year(year: str, today: date) -> int:
    if len(year) == 4:
        return int(year)
    century = today.year - today.year % 100
    full = century + int(year)
    return full if full <= today.year else full - 100


def past_date(match: re.Match[str], today: date | None = None) -> bool:
    """Whether a match of one of `DATE_PATTERNS` names a real day between 1900 and today."""
    today = today or date.today()
    groups = match.groupdict()
    year = _full_year(groups["y"], today)
    if "mn" in groups:
        month = _MONTH_NAMES[groups["mn"].lower()]
        return _real_day(year, month, int(groups["d"]), today)
    if "m" in groups:
        return _real_day(year, int(groups["m"]), int(groups["d"]), today)
    first, second = int(groups["a"]), int(groups["b"])
    return _real_day(year, second, first, today) or _real_day(year, first, second, today)


def find_past_date(text: str, start: int, end: int) -> re.Match[str] | None:
    """The first real past date that begins in `text[start:end]`.

    Each pattern is tried anchored at the starts of words in the window only, so the cost is
    bounded by the window, however long the text is.
    """
    for index in range(start, min(end, len(text))):
        if not text[index].isalnum() or (index > 0 and text[index - 1].isalnum()):
            continue
        for pattern in DATE_PATTERNS:
            match = pattern.match(text, index, min(len(text), index + MAX_DATE_LENGTH))
            if match is not None and past_date(match):
                return match
    return None
