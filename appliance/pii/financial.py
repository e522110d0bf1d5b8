"""Payment card numbers and IBANs: both carry a checksum, so a match is near certain.

Card: 13 to 19 digits, contiguous or in the groupings printed on cards (4-4-4-4, 4-4-4-4-3,
Amex 4-6-5, Diners 4-6-4) with one kind of separator, the Luhn checksum valid (one random
number in ten passes) **and** an issuer prefix with a length that issuer uses (Visa,
Mastercard including the 2-series, Amex, Discover, JCB, Diners, UnionPay, Maestro). An order
number of the right length therefore passes about one time in a hundred, not one in ten.

IBAN: country code, two check digits and the BBAN, contiguous or in groups of four, upper
case. ``python-stdnum`` checks mod 97 == 1, the BBAN's per-country structure and length, and
the national check digits where it knows them. A candidate that runs on into a following
group of letters or digits is cut to its country's IBAN length before it is checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

from stdnum import iban, luhn, numdb
from stdnum.exceptions import ValidationError
from stdnum.iso7064 import mod_97_10
from stdnum.util import get_cc_module

from appliance.pii.context import digits, glued_before
from appliance.pii.findings import CREDIT_CARD, IBAN, Finding

# ------------------------------------------------------------------------------------ card

# The look-behind after the first digit rejects a start inside a number at once (a leading
# look-behind would keep the engine from skipping quickly to the digits).
_CARD_CANDIDATE = re.compile(
    r"[0-9](?<![A-Za-z0-9_][0-9])(?:[ \-]?[0-9]){12,18}(?![A-Za-z0-9_\-]|[.,][0-9])"
)

# (lowest prefix, highest prefix, lengths): prefixes compared on as many digits as they have.
_ISSUERS: tuple[tuple[int, int, tuple[int, ...]], ...] = (
    (4, 4, (13, 16, 19)),  # Visa
    (51, 55, (16,)),  # Mastercard
    (2221, 2720, (16,)),  # Mastercard 2-series
    (34, 34, (15,)),  # American Express
    (37, 37, (15,)),
    (6011, 6011, (16, 17, 18, 19)),  # Discover
    (644, 649, (16, 17, 18, 19)),
    (65, 65, (16, 17, 18, 19)),
    (3528, 3589, (16, 17, 18, 19)),  # JCB
    (300, 305, (14, 15, 16, 17, 18, 19)),  # Diners Club
    (3095, 3095, (14, 15, 16, 17, 18, 19)),
    (36, 36, (14, 15, 16, 17, 18, 19)),
    (38, 39, (14, 15, 16, 17, 18, 19)),
    (62, 62, (16, 17, 18, 19)),  # UnionPay (and Discover's 622126-622925)
    (5018, 5018, tuple(range(12, 20))),  # Maestro
    (5020, 5020, tuple(range(12, 20))),
    (5038, 5038, tuple(range(12, 20))),
    (5893, 5893, tuple(range(12, 20))),
    (6304, 6304, tuple(range(12, 20))),
    (6759, 6759, tuple(range(12, 20))),
    (6761, 6763, tuple(range(12, 20))),
)
_CARD_GROUPINGS = ((4, 6, 5), (4, 6, 4))


def known_issuer(number: str) -> bool:
    """Whether the digits `number` start with an issuer prefix and have its length."""
    for low, high, lengths in _ISSUERS:
        width = len(str(low))
        if len(number) in lengths and low <= int(number[:width]) <= high:
            return True
    return False


def _grouping_ok(candidate: str) -> bool:
    separators = {c for c in candidate if not c.isdigit()}
    if not separators:
        return True
    if len(separators) > 1:
        return False
    groups = tuple(len(g) for g in candidate.split(separators.pop()))
    if groups in _CARD_GROUPINGS:
        return True
    return all(n == 4 for n in groups[:-1]) and 1 <= groups[-1] <= 4 and len(groups) >= 4


class CreditCardRecognizer:
    """Luhn-valid card numbers with a known issuer prefix."""

    name = "credit_card"
    types = (CREDIT_CARD,)
    score = 0.95

    def find(self, text: str) -> Iterator[Finding]:
        for match in _CARD_CANDIDATE.finditer(text):
            if glued_before(text, match.start(), "-.,"):
                continue
            candidate = match.group()
            number = digits(candidate)
            if (
                13 <= len(number) <= 19
                and _grouping_ok(candidate)
                and known_issuer(number)
                and luhn.is_valid(number)
            ):
                yield Finding(CREDIT_CARD, match.start(), match.end(), self.score, self.name)


# ------------------------------------------------------------------------------------ IBAN

_IBAN_CANDIDATE = re.compile(
    r"[A-Z][A-Z][0-9][0-9](?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
)
_BBAN_FIELD = re.compile(r"([0-9]+)!")
_BBAN_PART = re.compile(r"([0-9]+)!?([nac])")  # "8!n10!n": 8 digits, then 10 digits
_IBAN_DB = numdb.get("iban")


@cache
def iban_length(country: str) -> int | None:
    """The length of `country`'s IBANs, from the registry stdnum ships (None: no IBANs)."""
    info = _IBAN_DB.info(country)
    structure = info[0][1].get("bban") if info and info[0][1] else None
    if not structure:
        return None
    return 4 + sum(int(n) for n in _BBAN_FIELD.findall(structure))


@cache
def _bban_rules(country: str) -> tuple[re.Pattern[str] | None, Any]:
    """`country`'s BBAN structure as a pattern, and stdnum's national checks (if any)."""
    info = _IBAN_DB.info(country)
    structure = info[0][1].get("bban") if info and info[0][1] else None
    if not structure:
        return None, None
    fields = {"n": "[0-9]", "a": "[A-Z]", "c": "[A-Za-z0-9]"}
    body = "".join(f"{fields[kind]}{{{n}}}" for n, kind in _BBAN_PART.findall(structure))
    return re.compile(f"{body}$"), get_cc_module(country.lower(), "iban")


def valid_iban(number: str) -> bool:
    """stdnum's ``iban.validate`` in the cheapest order, the registry lookups cached.

    The mod-97 check first (it rejects nearly every random candidate), then the country's
    BBAN structure, then the national check digits stdnum knows (e.g. the French RIB key).
    """
    if not mod_97_10.is_valid(number[4:] + number[:4]):
        return False
    pattern, national = _bban_rules(number[:2])
    if pattern is None or not pattern.match(number[4:]):
        return False
    if national is not None:
        try:
            national.validate(number)
        except ValidationError:
            return False
    return True


def _prefix_end(candidate: str, alphanumerics: int) -> int:
    """The index in `candidate` just after its first `alphanumerics` letters and digits."""
    seen = 0
    for index, char in enumerate(candidate):
        if char.isalnum():
            seen += 1
            if seen == alphanumerics:
                return index + 1
    return len(candidate)


class IbanRecognizer:
    """IBANs with a valid mod-97 check and the BBAN structure of their country."""

    name = "iban"
    types = (IBAN,)
    score = 0.99

    def find(self, text: str) -> Iterator[Finding]:
        for match in _IBAN_CANDIDATE.finditer(text):
            if glued_before(text, match.start()):
                continue
            candidate = match.group()
            length = iban_length(candidate[:2])
            if length is None:
                continue
            compact = iban.compact(candidate)
            if len(compact) < length:
                continue
            end = _prefix_end(candidate, length)
            if end < len(candidate) and candidate[end] != " ":
                continue  # the cut would split a group of the text
            if not valid_iban(compact[:length]):
                continue
            yield Finding(IBAN, match.start(), match.start() + end, self.score, self.name)
