"""E-mail addresses and telephone numbers.

Both are found by a cheap regex and then validated, because the regexes alone match far too
much: a version string, a date or an order number has the same characters as a phone number.

E-mail: the local part and the domain are checked against the RFC limits (64 and 253
characters, labels of at most 63, no leading, trailing or doubled dots, no hyphen at a
label's edge) and the top-level domain must be letters (or ``xn--`` punycode), not a file
extension (``icon@2x.png`` is an asset name, not an address). Internationalised addresses
(RFC 6531) count too: letters and marks of any script in the local part and the domain
(``jürgen.müller@beispiel.de``, ``用户@例子.中国``). In scripts written without spaces the
local part runs back to the previous blank or punctuation, which may take in a word before
the address: more is redacted, never less.

Phone: a candidate is a run of ASCII digits and separators (space, ``-``, ``.``, ``/``,
brackets) with 7 to 15 digits (E.164's maximum), not glued to a word, a path or a time
("Tel:0171 …" is fine, "12:30 …" is not). Shapes that are something else are dropped: dates,
dotted quads (IP addresses), SSNs, card groupings (4-4-4-4, 4-6-5), 13-digit ISBNs, lone
digits ("1 2 3 4 5 6 7"), and candidates right after words such as "order", "invoice",
"ISBN" or "id"; digits without any separator (``4155552671``) need a phone word before them
("call", "tel", "mobile" ...), since a bare run is more often an id. What is left is parsed
with ``phonenumbers`` and must be **valid** (``is_valid_number``: a number in an allocated
range of its region), not just possible (right length), which accepts nearly every string of
the right length. Numbers with ``+`` or ``00`` carry their country; others are read as US
numbers (the default region) and, when they start with a trunk ``0`` (``0171 1234567``,
``020 7946 0958``), as national numbers of the regions in `NATIONAL_REGIONS`. Validity alone
is weak evidence (about half of all random 10-digit strings are valid US numbers, and most
random ``0…`` strings are valid somewhere in `NATIONAL_REGIONS`): the shape and word rules
above carry most of the precision. Dot-separated numbers must look like phone groupings
(``415.555.2671``, ``01.23.45.67.89``) so that ``2023.10.1234`` is not read as a Washington
number, unless a phone word is right before them ("Tel. 0171.234.5678"). Two numbers
separated only by blanks are split; an extension ("ext. 42") is not part of the span.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator

import phonenumbers
from phonenumbers import PhoneNumber

from appliance.pii.context import digits, glued_before, has_context
from appliance.pii.findings import EMAIL, PHONE, Finding
from appliance.pii.normalize import is_mark

# ---------------------------------------------------------------------------------- e-mail

# Only the domain is matched by a regex, forward from each '@'; the local part is found by
# walking back at most 64 characters. Anchoring at '@' keeps the scan to the few places that
# can hold an address, and no input makes it quadratic.
# Letters and digits of any script ([^\W_]) and the combining marks of the scripts with
# internationalised domains (Devanagari vowel signs are not \w): labels and top-level domain.
_MARKS = "\u0300-\u036f\u0483-\u0487\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0900-\u0dff"
_MARKS += "\u0e00-\u0eff\u1000-\u109f"
_EMAIL_DOMAIN = re.compile(
    rf"(?:(?:[^\W_]|[\-{_MARKS}]){{1,63}}\.){{1,8}}"
    rf"(?:xn--[A-Za-z0-9\-]{{1,59}}|(?:[^\W\d_]|[{_MARKS}]){{2,24}})(?![\w\-{_MARKS}])"
)
_LOCAL_CHARS = frozenset(string.ascii_letters + string.digits + "._%+-")
MAX_LOCAL_PART = 64
# Extensions that are never top-level domains but follow '@' in asset names (icon@2x.png).
# fmt: off
_FILE_EXTENSIONS = frozenset((
    "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "heic", "pdf",
    "txt", "json", "yaml", "yml", "toml", "xml", "csv", "html", "htm", "css", "js", "mjs", "ts",
    "tsx", "jsx", "lock", "log", "tmp", "bak", "ini", "cfg", "conf",
))
# fmt: on


def _local_char(char: str) -> bool:
    """Whether `char` may be part of a local part (RFC 5322 atext we see in use, RFC 6531)."""
    if char in _LOCAL_CHARS:
        return True
    return char > "\x7f" and (char.isalnum() or is_mark(char))


def _local_part_start(text: str, at: int) -> int | None:
    """Where the local part before the '@' at `at` starts, or None when there is none."""
    start = at
    while start > 0 and at - start <= MAX_LOCAL_PART and _local_char(text[start - 1]):
        start -= 1
    if at - start > MAX_LOCAL_PART:
        return None
    while start < at and text[start] == ".":
        start += 1  # "..x@y.z": the address starts after the dots
    local = text[start:at]
    if not local or local.endswith(".") or ".." in local:
        return None
    return start


def _valid_domain(domain: str) -> bool:
    if len(domain) > 253:
        return False
    labels = domain.split(".")
    if any(label[0] == "-" or label[-1] == "-" for label in labels):
        return False
    return labels[-1].lower() not in _FILE_EXTENSIONS


class EmailRecognizer:
    """RFC-shaped e-mail addresses (see the module docstring for the checks)."""

    name = "email"
    types = (EMAIL,)
    score = 0.95

    def find(self, text: str) -> Iterator[Finding]:
        at = text.find("@")
        while at >= 0:
            domain = _EMAIL_DOMAIN.match(text, at + 1)
            if domain is not None and _valid_domain(domain.group()):
                start = _local_part_start(text, at)
                if start is not None:
                    yield Finding(EMAIL, start, domain.end(), self.score, self.name)
            at = text.find("@", at + 1)


# ----------------------------------------------------------------------------------- phone

# A run of digits and separators that starts with '+', '(' or a digit and ends with a digit
# or ')'; bounded (27 characters) so a long digit string costs a constant amount per starting
# point. The pattern starts with a plain character class so the engine can skip to candidate
# starts quickly; the look-behind drops starts inside a number or word at once. It may not
# start right after a word character, '+', '/', '.', ':', '#', '@', '-', or a currency sign
# (`_GLUE`, checked in Python), and may not end before more digits.
_PHONE_CANDIDATE = re.compile(
    r"[+(0-9](?<![A-Za-z0-9_][0-9])[0-9 \t\-.()/]{6,26}(?<=[0-9)])"
    r"(?![A-Za-z0-9_@]|[.\-/:,][0-9])"
)
_GLUE = "+/.:#@$€£-"
# Shapes that are something else: dates, dotted quads (IP addresses), SSNs, card groupings
# (4-4-4-4, 4-6-5) and 13-digit ISBNs. One alternation, so one call rejects them all.
_OTHER_SHAPES = re.compile(
    r"[0-9]{4}([-./])[0-9]{1,2}\1[0-9]{1,2}"
    r"|[0-9]{1,2}([-./])[0-9]{1,2}\2(?:[0-9]{4}|[0-9]{2})"
    r"|[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
    r"|[0-9]{3}-[0-9]{2}-[0-9]{4}"
    r"|97[89](?:[ -]?[0-9]){10}"
    r"|[0-9]{4}([ -])[0-9]{6}\3[0-9]{4,5}"
    r"|[0-9]{4}([ -])[0-9]{4}\4[0-9]{4}\4[0-9]{1,4}(?:\4[0-9]{1,3})?"
)
_CARD_SHAPE = re.compile(r"[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{1,4}|[0-9]{4}([ -])[0-9]{6}\2")
_GROUP = re.compile(r"[0-9]+")
_DOTTED_PHONE = re.compile(r"\+.*|\(?[0-9]{3}\)?\.[0-9]{3}\.[0-9]{4}|[0-9]{2}(?:\.[0-9]{2}){4}")
_PHONE_WORDS = re.compile(
    r"(?:phone|tel|telephone|telefon|mobile|mobil|cell|handy|fax|call|ring|sms|text"
    r"|whatsapp|signal|contact|reach|dial|hotline|landline)\b[^\n0-9]{0,12}$"
)
_NOT_PHONE_WORDS = re.compile(
    r"\b(?:order|invoice|ticket|tracking|serial|sku|part|isbn|issn|case|ref|reference"
    r"|po|batch|lot|build|version|account|acct|iban|card|ssn|social|id|ean|upc|imei|customer)"
    r"\b[\s#:.=-]{0,4}(?:no\.?|nr\.?|number|num\.?)?[\s#:.=-]{0,4}$"
)
_BARE_DIGITS = re.compile(r"[0-9]+")

DEFAULT_REGION = "US"
# Regions whose national numbers (with the trunk '0') are tried when a number has no
# country code and is not a valid US number. Italy keeps its leading zero in E.164.
NATIONAL_REGIONS: tuple[str, ...] = ("GB", "DE", "FR", "NL", "BE", "AT", "CH", "IE", "AU", "IT")
_COUNTRY_CODES = {
    region: phonenumbers.country_code_for_region(region) for region in NATIONAL_REGIONS
}
MIN_DIGITS, MAX_DIGITS = 7, 15


def _glued(text: str, start: int) -> bool:
    """Whether the candidate at `start` continues something else (see `_GLUE`).

    A colon is glue after a digit ("12:30 …") but not after a word ("Tel:0171 …",
    "tel:+1…").
    """
    if start >= 2 and text[start - 1] == ":" and text[start - 2].isalpha():
        return False
    return glued_before(text, start, _GLUE)


def _wrapped(candidate: str) -> bool:
    """Whether `candidate` is a whole number in brackets, not "(415) 555-2671"."""
    inner = candidate[1:-1]
    return (
        candidate[:1] == "("
        and candidate[-1:] == ")"
        and inner.count("(") == inner.count(")")
        and _GROUP.fullmatch(inner.lstrip("+")) is None
    )


def _valid_national(number_digits: str) -> bool:
    """Whether '0…' is a valid national number in one of `NATIONAL_REGIONS`."""
    if not number_digits.startswith("0") or number_digits.startswith("00"):
        return False
    for region, code in _COUNTRY_CODES.items():
        if region == "IT":
            number = PhoneNumber(
                country_code=code, national_number=int(number_digits), italian_leading_zero=True
            )
        else:
            number = PhoneNumber(country_code=code, national_number=int(number_digits[1:]))
        if phonenumbers.is_valid_number(number):
            return True
    return False


def _valid_phone(candidate: str) -> bool:
    number_digits = digits(candidate)
    if not MIN_DIGITS <= len(number_digits) <= MAX_DIGITS:
        return False
    try:
        if candidate.startswith(("+", "(+")) or number_digits.startswith("00"):
            region = DEFAULT_REGION if candidate.startswith(("+", "(+")) else "DE"  # 00 = intl
            return phonenumbers.is_valid_number(phonenumbers.parse(candidate, region))
        if number_digits[0] != "0" and phonenumbers.is_valid_number(
            phonenumbers.parse(candidate, DEFAULT_REGION)
        ):
            return True  # (a trunk '0' never starts a North American number)
    except phonenumbers.NumberParseException:
        return False
    return _valid_national(number_digits)


def _shape_ok(candidate: str, any_dots: bool = False) -> bool:
    """Rejects the shapes of dates, IP addresses, SSNs, cards, ISBNs and odd groupings
    (dotted ones too, unless `any_dots`: a phone word is right before the number)."""
    if _OTHER_SHAPES.fullmatch(candidate):
        return False
    # "1 2 3 4 5 6 7" is no number: a single digit may only be a country code or trunk prefix
    # ("+1 …", "1-800-…") or a one-digit area code after a country code ("+33 1 …").
    groups = _GROUP.findall(candidate)
    first_free = 2 if candidate.startswith(("+", "(+")) else 1
    if any(len(group) == 1 for group in groups[first_free:]):
        return False
    if "." in candidate and not any_dots and not _DOTTED_PHONE.fullmatch(candidate):
        return False
    return candidate.count("(") == candidate.count(")")


class PhoneRecognizer:
    """International and national phone numbers, validated by ``phonenumbers``."""

    name = "phone"
    types = (PHONE,)
    score_international = 0.95  # a '+' country code and a valid number
    score_national = 0.85

    def find(self, text: str) -> Iterator[Finding]:
        valid: dict[str, bool] = {}  # candidate -> verdict, for this text only
        for match in _PHONE_CANDIDATE.finditer(text):
            if not _glued(text, match.start()):
                yield from self._check(text, match.start(), match.group(), valid)

    def _check(
        self, text: str, start: int, candidate: str, valid: dict[str, bool]
    ) -> Iterator[Finding]:
        candidate = candidate.rstrip(" \t-./(")
        if candidate.endswith(")") and candidate.count("(") < candidate.count(")"):
            candidate = candidate[:-1]
        if _wrapped(candidate):  # "(+1 415 555 2671)": the brackets are the prose's
            start, candidate = start + 1, candidate[1:-1]
        phone_context = None
        if not _shape_ok(candidate):
            phone_context = "." in candidate and has_context(text, start, _PHONE_WORDS, 30)
            if not (phone_context and _shape_ok(candidate, any_dots=True)):
                if not _CARD_SHAPE.match(candidate):
                    yield from self._split(text, start, candidate, valid)
                return
        if phone_context is None:
            phone_context = has_context(text, start, _PHONE_WORDS, 30)
        if not phone_context and has_context(text, start, _NOT_PHONE_WORDS, 30):
            return
        if not phone_context and _BARE_DIGITS.fullmatch(candidate):
            return
        if candidate not in valid:
            valid[candidate] = _valid_phone(candidate)
        if valid[candidate]:
            international = candidate.startswith(("+", "(+", "00"))
            score = self.score_international if international else self.score_national
            yield Finding(PHONE, start, start + len(candidate), score, self.name)
            return
        # Two numbers separated only by a space read as one run: try the first groups alone.
        yield from self._split(text, start, candidate, valid)

    def _split(
        self, text: str, start: int, candidate: str, valid: dict[str, bool]
    ) -> Iterator[Finding]:
        cuts = [m.start() for m in re.finditer(r"[ \t]+", candidate)]
        for cut in reversed(cuts):
            head = candidate[:cut]
            if len(digits(head)) < MIN_DIGITS:
                break
            if len(digits(head)) > MAX_DIGITS or not _shape_ok(head):
                continue
            if head not in valid:
                valid[head] = _valid_phone(head)
            if valid[head]:
                international = head.startswith(("+", "(+", "00"))
                score = self.score_international if international else self.score_national
                yield Finding(PHONE, start, start + cut, score, self.name)
                rest = candidate[cut:]
                offset = len(rest) - len(rest.lstrip())
                tail = _PHONE_CANDIDATE.match(rest.lstrip())
                if tail is not None:
                    yield from self._check(text, start + cut + offset, tail.group(), valid)
                return
