"""Street addresses: US/UK style, German and French.

US/UK style: a house number (``221B``, ``12-14``), one to four capitalised street-name
words or ordinals (``Main``, ``5th``, ``Martin Luther King Jr.``), a street suffix
(Street/St, Avenue/Ave, Road/Rd, Boulevard/Blvd, Lane/Ln, Drive/Dr, Court/Ct, Way,
Place/Pl, Terrace, Highway/Hwy, Parkway …), then optionally a direction, a unit (``Apt 4B``,
``Suite 200``, ``#12``) and ``, City, ST 12345`` or a UK ``, City NW1 6XE``. The full stop of
an abbreviated suffix (``St.``) is part of the span, also at the end of a sentence. The
suffix is what makes it an address: "3 Main points" and "Chapter 12 Road Map" have no street
name followed by a suffix. Name words must be capitalised, since "5 miles down the road" is
prose, and a year after "in", "since" … is not a house number ("In 2020 Main Street …").

German: ``Hauptstraße 12``, ``Berliner Str. 5a``, ``Lindenweg 3``, optionally
``, 10115 Berlin``. French: ``12 rue de la Paix``, ``5 bis avenue Victor Hugo``, optionally
``, 75002 Paris``. The score is higher when a city and postal code follow.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from appliance.pii.context import contains_any, fold, glued_before, has_context
from appliance.pii.findings import STREET_ADDRESS, Finding

# fmt: off
_US_STATES = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN",
    "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH",
    "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT",
    "VT", "VA", "WA", "WV", "WI", "WY", "PR", "GU", "VI",
)
_SUFFIX_WORDS = (
    "Street", "Avenue", "Road", "Boulevard", "Lane", "Drive", "Court", "Way", "Place",
    "Terrace", "Highway", "Parkway", "Circle", "Square", "Trail", "Alley", "Row", "Close",
    "Crescent", "Loop", "Pike", "Plaza", "Expressway", "Freeway", "Route", "Gardens", "Grove",
    "Mews", "Walk", "Hill",
)
_SUFFIX_ABBREVIATIONS = (
    "St", "Ave", "Av", "Rd", "Blvd", "Ln", "Dr", "Ct", "Pl", "Ter", "Hwy", "Pkwy", "Cir", "Sq",
    "Trl", "Cres", "Rte", "Expy", "Fwy",
)
# fmt: on
_SUFFIX = (
    r"(?:(?i:" + "|".join(_SUFFIX_WORDS) + r")"
    r"|(?:"
    + "|".join(_SUFFIX_ABBREVIATIONS)
    + r"|"
    + "|".join(a.upper() for a in _SUFFIX_ABBREVIATIONS)
    + r")\.?)"
)
_NAME_WORD = r"(?:[A-Z][A-Za-z'\u2019\-]*\.?|[0-9]{1,3}(?:st|nd|rd|th)|Saint|Mc[A-Z][a-z]+)"
_UNIT = (
    r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|Fl|Floor|Rm|Room|Bldg|Building|Flat)\.?"
    r"[ \t]*#?[ \t]*[A-Za-z0-9\-]{1,6}|,?[ \t]+#[ \t]*[A-Za-z0-9\-]{1,6})"
)
_CITY = r"[A-Z][a-z]+(?:[ \-][A-Z][a-z]+){0,2}"
_US_TAIL = rf",[ \t]*{_CITY},?[ \t]+(?:{'|'.join(_US_STATES)})[ \t]+[0-9]{{5}}(?:-[0-9]{{4}})?"
_UK_POSTCODE = r"[A-Z]{1,2}[0-9][A-Z0-9]?[ \t]?[0-9][A-Z]{2}"
_UK_TAIL = rf",[ \t]*{_CITY},?[ \t]+{_UK_POSTCODE}"
_US_ADDRESS = re.compile(
    r"[0-9]{1,6}[A-Za-z]?(?:-[0-9]{1,4})?"
    rf"(?:[ \t]+{_NAME_WORD}){{1,4}}?[ \t]+{_SUFFIX}(?![\w])"
    r"(?:[ \t]+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
    rf"{_UNIT}?"
    rf"(?P<tail>{_US_TAIL}|{_UK_TAIL})?"
    r"(?![\w])"
)
_UPPER = "A-ZÄÖÜ"
_LOWER = "a-zäöüß"
_DE_TYPES = r"(?:straße|strasse|str\.|weg|gasse|platz|allee)"
_DE_STEMS = ("straße", "strasse", "str.", "weg", "gasse", "platz", "allee", "ring", "damm")
_DE_ADDRESS = re.compile(
    rf"(?:[{_UPPER}][{_LOWER}]+(?:-[{_UPPER}][{_LOWER}]+)*{_DE_TYPES}"
    rf"|[{_UPPER}][{_LOWER}]+[ \t]+(?:Straße|Strasse|Str\.|Weg|Gasse|Platz|Allee|Ring|Damm))"
    r"[ \t]+[0-9]{1,3}[ \t]?[a-z]?(?![\w])"
    rf"(?P<tail>,[ \t]*[0-9]{{5}}[ \t]+[{_UPPER}][{_LOWER}]+(?:[ \t\-][{_UPPER}][{_LOWER}]+)?)?"
)
_FR_STEMS: tuple[str, ...] = ("rue", "avenue", "boulevard", "bd", "place", "chemin", "allée")
_FR_STEMS += ("impasse", "quai")
_FR_STEMS += ("route", "cours", "passage")
_FR_ADDRESS = re.compile(
    r"[0-9]{1,4}(?:[ \t]?(?:bis|ter))?,?[ \t]+"
    r"(?i:rue|avenue|boulevard|bd|place|chemin|allée|impasse|quai|route|cours|passage)[ \t]+"
    r"(?:(?:de[ \t]+la|de[ \t]+l'|du|des|de|d'|la|le|les)[ \t]*)?"
    r"[A-ZÉÈ][\w'\u2019\-]+(?:[ \t]+(?:(?:de[ \t]+la|de|du|des)[ \t]+)?[A-ZÉÈ][\w'\u2019\-]+){0,3}"
    r"(?P<tail>,[ \t]*[0-9]{5}[ \t]+[A-ZÉ][\w\-]+)?"
)

# House numbers are found from the blank after them ("12 ", "221B ", "12, "): far fewer
# places to try than every digit of the text.
# The look-ahead keeps only blanks followed by what a street name can start with.
_AFTER_NUMBER = re.compile(
    r"[ \t,](?:(?<=[0-9][ \t,])|(?<=[0-9][A-Za-z][ \t]))"
    r"(?=[ \t]*(?:[A-Z]|[0-9]{1,3}(?:st|nd|rd|th)[ \t]|bis[ \t]|ter[ \t]|rue[ \t]|avenue|boulevard"
    r"|bd[ \t]|place|chemin|allée|impasse|quai|route|cours|passage))"
)


def _number_start(text: str, blank: int) -> int:
    """The start of the house number ("12", "221B", "12-14") that ends at `blank`."""
    start = blank
    if text[start - 1].isalpha():
        start -= 1
    while start > 0 and (text[start - 1].isdigit() or text[start - 1] == "-"):
        start -= 1
    while text[start] == "-":
        start += 1
    return start


# "In 2020 Main Street shops closed": a year after a time word is not a house number.
_YEAR = re.compile(r"(?:19|20)[0-9][0-9]\b")
_TIME_WORDS = re.compile(
    r"\b(?:in|since|by|of|from|until|till|before|after|year|during|circa|around)[ \t]+$"
)


class StreetAddressRecognizer:
    """House number + street name + street type, with optional unit, city and postcode."""

    name = "street_address"
    types = (STREET_ADDRESS,)
    score = 0.7
    score_with_postcode = 0.85

    def find(self, text: str) -> Iterator[Finding]:
        folded = fold(text)
        if contains_any(folded, _DE_STEMS):
            for match in _DE_ADDRESS.finditer(text):
                if not glued_before(text, match.start(), "-"):
                    yield self._finding(match)
        french = contains_any(folded, _FR_STEMS)
        for anchor in _AFTER_NUMBER.finditer(text):
            start = _number_start(text, anchor.start())
            if glued_before(text, start, ".,/#-"):
                continue
            if _YEAR.match(text, start) and has_context(text, start, _TIME_WORDS, 16):
                continue
            found = _US_ADDRESS.match(text, start)
            if found is None and french:
                found = _FR_ADDRESS.match(text, start)
            if found is not None:
                yield self._finding(found)

    def _finding(self, match: re.Match[str]) -> Finding:
        score = self.score_with_postcode if match.group("tail") else self.score
        return Finding(STREET_ADDRESS, match.start(), match.end(), score, self.name)
