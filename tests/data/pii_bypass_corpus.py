"""The issue 14 part of the PII corpus: the red-team bypasses and their near misses.

``make_pii_corpus.py`` calls `bypass_records` last, with its seeded generator and its value
makers, so the records before these do not change. Four groups:

- spellings (item 2): valid values typed with fullwidth characters, Unicode spaces, doubled
  or unusual separators, zero-width characters and soft hyphens inside, Unicode dashes,
  IBANs in lower case or grouped with hyphens, internationalised e-mail addresses, and
  context words broken by an invisible character;
- conversations (item 3): a card number split across two or more messages of one request
  (also around the other party's reply: each part is then labelled in its message), and a
  context word in the message before the number;
- context (item 4): Luhn-valid card numbers of no known issuer next to a card word in the
  languages the recognizers know, SSNs, phones, IBANs and MAC addresses in shapes that only
  a context word makes PII;
- near misses that must stay untouched: failed checksums with and without a card word,
  order numbers, part numbers one per line, text with fullwidth punctuation and digits but
  no PII, dash ranges, emoji sequences.

Records are written with ``[[TYPE:value]]`` marks; ``||`` separates the messages of a
conversation (the record's text is its messages joined by newlines, and a value split
across messages is one label over the newline).
"""

# ruff: noqa: RUF001  (look-alike characters are what this part of the corpus is about)

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad")
SPACES = ("\u00a0", "\u2009", "\u202f", "\u2007", "\u3000")
DASHES = ("\u2010", "\u2011", "\u2012", "\u2212", "\ufe63", "\uff0d", "\u2013")
FULLWIDTH = {code: code + 0xFEE0 for code in range(0x21, 0x7F)}
_MARK = re.compile(r"\[\[([A-Z_]+):(.*?)\]\]", re.DOTALL)
_BREAK = "||"


@dataclass(frozen=True)
class Makers:
    """The corpus generator's value makers (valid by construction) and its random source."""

    rng: random.Random
    card: Callable[[], str]  # grouped with spaces, dashes or nothing
    luhn_number: Callable[[str, int], str]  # (prefix, length) -> digits
    iban: Callable[[], str]
    ssn_digits: Callable[[], str]
    us_phone: Callable[[], str]
    intl_phone: Callable[[], str]
    email: Callable[[], str]
    passwords: Sequence[str]


def record(record_id: str, note: str, marked: str) -> dict[str, object]:
    """The record for `marked` text (see the module docstring)."""
    pieces: list[str] = []
    entities: list[dict[str, object]] = []
    length = 0
    position = 0
    for mark in _MARK.finditer(marked):
        before = marked[position : mark.start()].replace(_BREAK, "\n")
        value = mark.group(2).replace(_BREAK, "\n")
        entities.append({"type": mark.group(1), "start": length + len(before)})
        length += len(before) + len(value)
        entities[-1]["end"] = length
        pieces += (before, value)
        position = mark.end()
    pieces.append(marked[position:].replace(_BREAK, "\n"))
    result: dict[str, object] = {
        "id": record_id,
        "text": "".join(pieces),
        "entities": entities,
        "note": note,
    }
    if _BREAK in marked:
        result["messages"] = _MARK.sub(lambda m: m.group(2), marked).split(_BREAK)
    return result


def bypass_records(make: Makers) -> list[dict[str, object]]:
    return [*spellings(make), *conversations(make), *context(make), *near_misses(make)]


# ------------------------------------------------------------------------------- spellings


def _fullwidth(value: str) -> str:
    return value.translate(FULLWIDTH)


def _invisible(rng: random.Random, value: str, count: int = 2) -> str:
    """`value` with `count` zero-width characters (or soft hyphens) inside it."""
    characters = list(value)
    for _ in range(count):
        characters.insert(rng.randrange(1, len(characters)), rng.choice(ZERO_WIDTH))
    return "".join(characters)


def _grouped(make: Makers) -> str:
    """A card number grouped with single spaces (the spellings below change the spaces)."""
    while " " not in (card := make.card()):
        pass
    return card


def spellings(make: Makers) -> list[dict[str, object]]:
    rng = make.rng
    cases: list[tuple[str, str]] = []
    for _ in range(3):
        cases.append((f"Card number [[CREDIT_CARD:{_fullwidth(make.card())}]] please", "fullwidth"))
    for space in SPACES:
        value = _grouped(make).replace(" ", space)
        cases.append((f"Charge [[CREDIT_CARD:{value}]] for the fee.", f"U+{ord(space):04X}"))
    for separator in ("  ", ".", "_", "..", "__"):
        value = _grouped(make).replace(" ", separator)
        cases.append((f"payment: [[CREDIT_CARD:{value}]], cvv withheld", repr(separator)))
    for _ in range(4):
        value = _invisible(rng, make.card(), rng.randrange(1, 4))
        cases.append((f"The customer read out [[CREDIT_CARD:{value}]] over the phone.", "zw"))
    for _ in range(3):
        while "-" not in (phone := make.us_phone()):
            pass
        value = phone.replace("-", rng.choice(DASHES))
        cases.append((f"Call me back at [[PHONE:{value}]] after 3pm.", "unicode dash"))
    for phone in ("415-555-2671", "212-555-0123"):
        value = phone.replace("-", rng.choice(DASHES))
        cases.append((f"Customer can be reached at [[PHONE:{value}]] or by mail.", "dash"))
    for _ in range(2):
        value = _fullwidth(make.intl_phone())
        cases.append((f"Mobile [[PHONE:{value}]] (WhatsApp too)", "fullwidth phone"))
    for space in ("\u00a0", "\u2009", "\u202f"):
        value = "+44 20 7946 0958".replace(" ", space)
        cases.append((f"Hotline: [[PHONE:{value}]] - available 24/7.", "unicode space"))
    for _ in range(2):
        value = _invisible(rng, "0171 2345678", 1)
        cases.append((f"Tel.: [[PHONE:{value}]]", "zw phone"))
    for dash in DASHES:
        digits = make.ssn_digits()
        value = f"{digits[:3]}{dash}{digits[3:5]}{dash}{digits[5:]}"
        cases.append((f"Her SSN is [[US_SSN:{value}]], can you verify it?", f"U+{ord(dash):04X}"))
    for _ in range(2):
        digits = make.ssn_digits()
        value = _fullwidth(f"{digits[:3]}-{digits[3:5]}-{digits[5:]}")
        cases.append((f"Employee SSN [[US_SSN:{value}]] needs correcting.", "fullwidth SSN"))
    for _ in range(2):
        digits = make.ssn_digits()
        value = _invisible(rng, f"{digits[:3]}-{digits[3:5]}-{digits[5:]}", 2)
        cases.append((f"ssn=[[US_SSN:{value}]]", "zw SSN"))
    for _ in range(3):
        value = _spaced_iban(make).lower()
        cases.append((f"IBAN: [[IBAN:{value}]]", "lower case"))
    for _ in range(3):
        value = _spaced_iban(make).replace(" ", "-")
        cases.append((f"Refund goes to [[IBAN:{value}]].", "hyphens"))
    for _ in range(2):
        value = _spaced_iban(make).replace(" ", "\u00a0")
        cases.append((f"Bankverbindung [[IBAN:{value}]] - danke", "NBSP"))
    value = _invisible(rng, _spaced_iban(make), 2)
    cases.append((f"payout_account = '[[IBAN:{value}]]'", "zw IBAN"))
    for _ in range(2):
        local, domain = make.email().split("@")
        cases.append((f"Please reply to [[EMAIL:{local}\uff20{domain}]] today.", "fullwidth @"))
    cases.append((f"Contact: [[EMAIL:{_fullwidth(make.email())}]]", "fullwidth e-mail"))
    for _ in range(2):
        cases.append((f"Send the logs to [[EMAIL:{_invisible(rng, make.email())}]].", "zw"))
    for address in (
        "jürgen.müller@beispiel.de",
        "françois.lefèvre@exemple.fr",
        "josé.garcía@ejemplo.es",
        "用户@例子.中国",
        "пользователь@пример.рф",
        "δοκιμή@παράδειγμα.ελ",
        "info@münchen.de",
    ):
        cases.append((f"E-Mail: [[EMAIL:{address}]] bitte", "internationalised"))
    for word in ("pass\u200bword", "Pass\u00adwort", "pass\u2060phrase", "pass\u200cwd"):
        cases.append((f"{word}: [[SECRET:{rng.choice(make.passwords)}]]", "zw in the word"))
    return [
        record(f"bypass-spelling-{n:02d}", f"everyday spelling: {note}", marked)
        for n, (marked, note) in enumerate(cases)
    ]


def _spaced_iban(make: Makers) -> str:
    while " " not in (value := make.iban()):
        pass
    return value


# --------------------------------------------------------------------------- conversations


def conversations(make: Makers) -> list[dict[str, object]]:
    rng = make.rng
    cases: list[tuple[str, str]] = []
    for _ in range(4):
        groups = _grouped(make).split(" ")
        cut = rng.randrange(1, len(groups))
        first, second = " ".join(groups[:cut]), " ".join(groups[cut:])
        cases.append((f"My card: [[CREDIT_CARD:{first}||{second}]]||thanks", "card split in two"))
    groups = _grouped(make).split(" ")
    cases.append(
        ("Card?||[[CREDIT_CARD:" + "||".join(groups) + "]]", "card split, one group a message")
    )
    number = make.luhn_number("4", 16)
    cases.append((f"pay with [[CREDIT_CARD:{number[:8]}||{number[8:]}]]", "contiguous, split"))
    for reply in ("Go on.", "Sure, and the rest of the number?"):
        groups = _grouped(make).split(" ")
        first, second = " ".join(groups[:2]), " ".join(groups[2:])
        marked = f"My card: [[CREDIT_CARD:{first}]]||{reply}||[[CREDIT_CARD:{second}]]"
        cases.append((marked, "card split by the user around a reply"))
    unknown = _unknown_issuer(make)
    cases.append(
        (f"What is the card number?||[[CREDIT_CARD:{unknown}]]", "card word the message before")
    )
    cases.append((f"And your SSN?||[[US_SSN:{make.ssn_digits()}]]", "SSN word the message before"))
    return [
        record(f"bypass-conversation-{n:02d}", f"across messages: {note}", marked)
        for n, (marked, note) in enumerate(cases)
    ]


# --------------------------------------------------------------------------------- context

CARD_WORDS = (
    "Card number",
    "credit card",
    "Debit card no.",
    "CC#",
    "PAN:",
    "Visa",
    "Kreditkarte",
    "Kartennummer:",
    "numéro de carte",
    "tarjeta de crédito",
    "carta di credito",
    "creditcard",
)


def _unknown_issuer(make: Makers) -> str:
    """A Luhn-valid 16-digit number, grouped in fours, that no issuer in the table starts."""
    number = make.luhn_number(make.rng.choice("1789") + make.rng.choice("0123456789"), 16)
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


def context(make: Makers) -> list[dict[str, object]]:
    rng = make.rng
    cases: list[tuple[str, str]] = []
    for word in CARD_WORDS:
        cases.append((f"{word} [[CREDIT_CARD:{_unknown_issuer(make)}]] exp 04/27", word))
    number = make.luhn_number("9", 19)
    cases.append((f"card [[CREDIT_CARD:{number}]]", "19 digits, unknown issuer"))
    for template in ("SSN: {}", "social security no. {}", "ssn {}"):
        digits = make.ssn_digits()
        separator = rng.choice([".", "/", " / ", " - "])
        value = f"{digits[:3]}{separator}{digits[3:5]}{separator}{digits[5:]}"
        cases.append((template.format(f"[[US_SSN:{value}]]"), "SSN, any separator"))
    for value in ("0171.234.5678", "030.1234.5678"):
        cases.append((f"Tel. [[PHONE:{value}]]", "dotted phone"))
    for _ in range(3):
        compact = _spaced_iban(make).replace(" ", "")
        value = f"{compact[:4]} {compact[4:11]} {compact[11:]}"  # not in fours
        cases.append((f"IBAN [[IBAN:{value}]]", "IBAN, bank code and account apart"))
    for word in ("MAC:", "mac address", "BSSID="):
        value = "".join(rng.choice("0123456789abcdef") for _ in range(12))
        value = value.upper() if rng.random() < 0.5 else value
        cases.append((f"{word} [[MAC_ADDRESS:{value}]] on port 3", "bare MAC"))
    return [
        record(f"bypass-context-{n:02d}", f"context word: {note}", marked)
        for n, (marked, note) in enumerate(cases)
    ]


# ----------------------------------------------------------------------------- near misses


def near_misses(make: Makers) -> list[dict[str, object]]:
    rng = make.rng
    texts: list[tuple[str, str]] = []

    def failing(prefix: str) -> str:
        number = make.luhn_number(prefix, 16)
        return number[:-1] + str((int(number[-1]) + rng.randrange(1, 10)) % 10)

    texts.append((f"Order {failing('4')} has not shipped yet.", "16 digits, Luhn fails"))
    texts.append((f"Card {failing('1')} was declined (checksum).", "card word, Luhn fails"))
    texts.append((f"order {_fullwidth(failing('5'))} cancelled", "fullwidth, Luhn fails"))
    texts.append((f"Tracking number {_unknown_issuer(make)} (DHL)", "Luhn ok, no card word"))
    texts.append((f"Order #{_unknown_issuer(make).replace(' ', '')}", "Luhn ok, order word"))
    number = make.luhn_number("4", 16)
    parts = "\n".join(number[i : i + 4] for i in range(0, 16, 4))
    texts.append((f"Replace these parts:\n{parts}\nthanks", "part numbers, one per line"))
    texts.append((f"Parts:\n{parts}||Quantities: 2, 3, 1, 5", "part numbers, then another message"))
    texts.append(("Ticket 4111||Room 1111 1111 1111", "numbers in two messages, a word between"))
    texts.append(("会议改到周四（下午３点），地点：２号楼，请准时。", "fullwidth digits, no PII"))
    texts.append(("在庫：１２個、価格：￥３，５００（税込）。", "fullwidth numbers, no PII"))
    texts.append(("Version ｖ２．１４．３ fixed it; see pages 12\u201315.", "fullwidth version"))
    texts.append(("Open 9\u201317 h, 2019\u20132024 figures \u2014 all fine.", "dash ranges"))
    texts.append(("Great job \U0001f469\u200d\U0001f4bb team \u2014 ship it!", "emoji ZWJ"))
    texts.append(("ab12 cdef ghij klmn opqr stuv", "letters and digits, no IBAN"))
    texts.append(("Wrong IBAN de88 3704 0044 0532 0130 00, check it", "lower case, bad check"))
    texts.append(("Room 536\u201190 on floor 4399", "non-breaking hyphen, no SSN"))
    texts.append(("serial 001A2B3C4D5E passed QA", "twelve hex digits, no MAC word"))
    texts.append(("ref 536.90.4399 in the ledger", "dotted digits, no SSN word"))
    texts.append(("icon\uff202x.png and logo\uff203x.png", "fullwidth at in asset names"))
    return [
        record(f"bypass-near-miss-{n:02d}", f"look-alike, no PII: {note}", text)
        for n, (text, note) in enumerate(texts)
    ]
