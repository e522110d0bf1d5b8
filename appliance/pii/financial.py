"""Payment card numbers and IBANs: both carry a checksum, so a match is near certain.

Card: 13 to 19 digits, contiguous or in the groupings printed on cards (4-4-4-4, 4-4-4-4-3,
Amex 4-6-5, Diners 4-6-4), with one kind of separator (space, '-', '.' or '_'; a doubled
one reads as one, see `appliance.pii.normalize`), where a separator may also be left out
("41111111 1111 1111": an invisible character in place of a space), and the Luhn checksum
valid (one random number in ten passes). Without a card word nearby it also needs an issuer
prefix with a length that issuer uses (Visa, Mastercard including the 2-series, Amex,
Discover, JCB, Diners, UnionPay, Maestro), so an order number of the right length passes
about one time in a hundred, not one in ten. With a card word within 40 characters before
it or 24 after ("card", "credit", "Visa", "PAN", "Kreditkarte", "carte", "tarjeta" …) the
prefix does not matter (issuers outside the table, new BIN ranges), and any grouping in
groups of three or more digits counts.

Across messages: in the joined view of a request's messages (`MESSAGE_BREAK` between them,
see `appliance.pii.conversation`) a card number may continue from one message into the next
("My card: 4111 1111" / "1111 1111"); the break then counts as a separator of the number.
A newline inside one message never does: a list of part numbers, one per line, is no card.

IBAN: country code, two check digits and the BBAN, contiguous or in groups of four separated
by spaces or hyphens, in either case (``de89 3704 …``: people type it so; the checks run on
the upper case). ``python-stdnum`` checks mod 97 == 1, the BBAN's per-country structure and
length, and the national check digits where it knows them. A candidate that runs on into a
following group of letters or digits is cut to its country's IBAN length before it is
checked. After an account word ("IBAN", "account", "Konto", "compte" …) any grouping counts
(``DE89 37040044 0532013000``, the bank code and account number apart, or with dots).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

from stdnum import luhn, numdb
from stdnum.exceptions import ValidationError
from stdnum.iso7064 import mod_97_10
from stdnum.util import get_cc_module

from appliance.pii.context import after, digits, fold, glued_before, has_context
from appliance.pii.findings import CREDIT_CARD, IBAN, Finding
from appliance.pii.normalize import MESSAGE_BREAK

# ------------------------------------------------------------------------------------ card

# The look-behind after the first digit rejects a start inside a number at once (a leading
# look-behind would keep the engine from skipping quickly to the digits).
_BREAK = rf"[ \t\r\n]*{MESSAGE_BREAK}[ \t\r\n]*"
_CARD_CANDIDATE = re.compile(
    rf"[0-9](?<![A-Za-z0-9_][0-9])(?:(?:[ \-._]|{_BREAK})?[0-9]){{12,18}}"
    r"(?![A-Za-z0-9_\-]|[.,_][0-9])"
)
_BREAK_UNIT = re.compile(_BREAK)
_GAP = re.compile(r"[^0-9]+")

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
# Matched in the lower-cased text around a candidate: the words that make a Luhn-valid
# number a card number whatever its prefix, in the languages the other recognizers know.
_CARD_WORDS = re.compile(
    r"(?<![a-z0-9])(?:cards?|card\s*(?:no|number|holder)|cardholder|credit|debit|visa"
    r"|master\s?card|amex|american\s+express|cc|ccn|cc#|pan"
    r"|(?:kredit|debit|ec-?|bank)?karten?(?:nummer|-?nr)?|girocard"
    r"|cartes?|cr[ée]dit|bancaire|tarjeta|cr[ée]dito|d[ée]bito|carta"
    r"|kaart|creditcard|betaalkaart|pinpas|(?:kredit)?kort(?:nummer)?)(?![a-z])"
)
CARD_CONTEXT_AFTER = 24  # characters after a candidate searched for a card word


def known_issuer(number: str) -> bool:
    """Whether the digits `number` start with an issuer prefix and have its length."""
    for low, high, lengths in _ISSUERS:
        width = len(str(low))
        if len(number) in lengths and low <= int(number[:width]) <= high:
            return True
    return False


def _groups(candidate: str) -> tuple[tuple[int, ...], str] | None:
    """The lengths of `candidate`'s digit groups and its separator ("" for none); None when
    it mixes separators. A message break, with the blanks around it, separates groups too."""
    kinds = set()
    groups = [0]
    for char in _BREAK_UNIT.sub(MESSAGE_BREAK, candidate):
        if "0" <= char <= "9":
            groups[-1] += 1
            continue
        if char != MESSAGE_BREAK:
            kinds.add(char)
        groups.append(0)
    if len(kinds) > 1:
        return None
    return tuple(groups), "".join(kinds)


def grouping_ok(candidate: str, in_context: bool = False) -> bool:
    """Whether `candidate`'s digits are grouped as on a card (see the module docstring)."""
    grouped = _groups(candidate)
    if grouped is None:
        return False
    groups, separator = grouped
    if not separator or groups in _CARD_GROUPINGS:
        return True  # contiguous, or cut only where one message ends
    # 4-4-4-4 with separators left out: each separator follows a multiple of four digits
    position = 0
    for length in groups[:-1]:
        position += length
        if position % 4:
            break
    else:
        return True
    return in_context and min(groups) >= 3


def _card_context(text: str, start: int, end: int) -> bool:
    if has_context(text, start, _CARD_WORDS):
        return True
    return _CARD_WORDS.search(fold(after(text, end, CARD_CONTEXT_AFTER))) is not None


class CreditCardRecognizer:
    """Luhn-valid card numbers with a known issuer prefix, or with a card word nearby."""

    name = "credit_card"
    types = (CREDIT_CARD,)
    joins_messages = True  # a number may run on across a message break (see the analyzer)
    score = 0.95
    score_in_context = 0.9  # any prefix, but a card word next to it

    def find(self, text: str) -> Iterator[Finding]:
        for match in _CARD_CANDIDATE.finditer(text):
            start, end = match.span()
            finding = self._checked(text, start, end)
            if finding is None:  # "qty 2 4111 1111 1111 1111": the number after the first
                gap = _GAP.search(text, start, end)
                finding = None if gap is None else self._checked(text, gap.end(), end)
            if finding is not None:
                yield finding

    def _checked(self, text: str, start: int, end: int) -> Finding | None:
        """The card number `text[start:end]`, or None when it is none."""
        if glued_before(text, start, "-.,"):
            return None
        candidate = text[start:end]
        number = digits(candidate)
        if not 13 <= len(number) <= 19 or not luhn.is_valid(number):
            return None
        if len(set(number)) == 1:
            return None  # 0000 0000 0000 0000: a placeholder
        if grouping_ok(candidate) and known_issuer(number):
            return Finding(CREDIT_CARD, start, end, self.score, self.name)
        if grouping_ok(candidate, in_context=True) and _card_context(text, start, end):
            return Finding(CREDIT_CARD, start, end, self.score_in_context, self.name)
        return None


# ------------------------------------------------------------------------------------ IBAN

# Starts at the check digits (a letter pair is far more common in prose than a digit) and
# looks back for the country code; takes any grouping, and runs on into what follows:
# `IbanRecognizer` cuts it to its country's length and checks the grouping.
_IBAN_CANDIDATE = re.compile(r"[0-9](?<=[A-Za-z][A-Za-z][0-9])[0-9](?:[ \-.]?[A-Za-z0-9]){11,30}")
_ACCOUNT_WORDS = re.compile(
    r"(?<![a-z0-9])(?:iban|bank|account|acct|konto|kontonummer|bankverbindung|compte|rib"
    r"|cuenta|conto|rekening)(?![a-z])"
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


def _grouped_by_four(value: str) -> bool:
    """Whether `value` is contiguous or in groups of four, some separators maybe left out,
    with one kind of separator (space or hyphen)."""
    separators = {c for c in value if not c.isalnum()}
    if not separators:
        return True
    if len(separators) > 1 or separators.pop() not in " -":
        return False
    position = 0
    for char in value:
        if char.isalnum():
            position += 1
        elif position % 4:
            return False
    return True


class IbanRecognizer:
    """IBANs with a valid mod-97 check and the BBAN structure of their country."""

    name = "iban"
    types = (IBAN,)
    score = 0.99

    def find(self, text: str) -> Iterator[Finding]:
        position = 0
        while (match := _IBAN_CANDIDATE.search(text, position)) is not None:
            finding = self._checked(text, match.start() - 2, match.end())
            # a candidate may run on into the next IBAN: look again right after this one
            position = match.start() + 1 if finding is None else finding.end
            if finding is not None:
                yield finding

    def _checked(self, text: str, start: int, end: int) -> Finding | None:
        """The IBAN that `text[start:end]` starts with, cut to its country's length."""
        if glued_before(text, start):
            return None
        candidate = text[start:end].upper()
        length = iban_length(candidate[:2])
        if length is None:
            return None
        compact = "".join(c for c in candidate if c.isalnum())
        if len(compact) < length:
            return None
        cut = _prefix_end(candidate, length)
        if cut < len(candidate) and candidate[cut] not in " -.":
            return None  # the cut would split a group of the text
        if not valid_iban(compact[:length]):
            return None
        if not _grouped_by_four(candidate[:cut]) and not has_context(text, start, _ACCOUNT_WORDS):
            return None
        return Finding(IBAN, start, start + cut, self.score, self.name)
