"""Writes tests/data/pii_corpus.jsonl: labelled prompts for the PII recognizers.

    .venv/bin/python tests/data/make_pii_corpus.py      # rewrites the jsonl next to it

Deterministic (one seeded `random.Random`), so a rerun gives the same file as long as the
``phonenumbers`` and ``python-stdnum`` metadata do not change; the committed jsonl is the
reference. Every generated value is valid by construction and checked with the same
libraries that define validity (Luhn, mod 97 plus the national BBAN rules, ``phonenumbers``
valid ranges, SSN area/group/serial rules), and spans are computed from where the value was
inserted, so they are exact.

The corpus has four parts: generated prompts with PII of one type in many formats and
positions (start, middle, end, next to punctuation, in code, lists, logs, multi-line);
prompts mixing several types; near misses that must not match (order numbers, versions,
timestamps, invalid checksums, hashes, UUIDs, prices, ISBNs, part numbers, dates without a
birth word, prose that looks like an address or a password); texts with no PII at all; and
hand-written prompts where ``[[TYPE:value]]`` marks the PII. PERSON and ORGANIZATION are not
labelled: they need an NER model.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TypeVar

import phonenumbers
from pii_bypass_corpus import Makers, bypass_records  # (this folder is on sys.path)
from stdnum import iban as stdnum_iban
from stdnum import luhn, numdb
from stdnum.us import ssn as stdnum_ssn

SEED = 20240314
OUT = Path(__file__).with_name("pii_corpus.jsonl")
rng = random.Random(SEED)
T = TypeVar("T")

FIRST = ["anna", "ben", "carla", "dmitri", "elena", "farid", "grace", "hiro", "ines", "jon"]
FIRST += ["kofi", "lena", "marco", "nadia", "oscar", "priya", "quinn", "rosa", "sven", "tariq"]
LAST = ["meyer", "okafor", "schmidt", "nguyen", "garcia", "rossi", "kowalski", "tanaka"]
LAST += ["dubois", "silva", "oconnor", "hansen", "novak", "ali", "murphy", "jansen"]
DOMAINS = ["example.com", "example.org", "corp.example.net", "mail.example.co.uk"]
DOMAINS += ["acme-logistics.example", "support.example.io", "field-ops.example.de", "example.fr"]


# ------------------------------------------------------------------------- value makers


def choice(items: Sequence[T]) -> T:
    return items[rng.randrange(len(items))]


def digits(n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def make_email() -> str:
    first, last = choice(FIRST), choice(LAST)
    local = choice(
        [
            f"{first}.{last}",
            f"{first[0]}{last}",
            f"{first}_{last}{rng.randrange(1, 99)}",
            f"{first}+{choice(['alerts', 'tickets', 'hr'])}",
            f"{last}.{first}{rng.randrange(60, 99)}",
            f"{first}-{last}",
        ]
    )
    address = f"{local}@{choice(DOMAINS)}"
    return address.upper() if rng.random() < 0.05 else address


US_AREAS = ["201", "202", "206", "212", "213", "305", "312", "404", "415", "503", "512", "617"]
US_AREAS += ["646", "702", "713", "718", "773", "808", "917", "972"]


def make_us_phone() -> str:
    while True:
        area, exchange, line = choice(US_AREAS), str(rng.randrange(200, 999)), digits(4)
        number = phonenumbers.parse(f"+1{area}{exchange}{line}")
        if phonenumbers.is_valid_number(number):
            break
    return choice(
        [
            f"({area}) {exchange}-{line}",
            f"{area}-{exchange}-{line}",
            f"{area}.{exchange}.{line}",
            f"+1 {area} {exchange} {line}",
            f"+1-{area}-{exchange}-{line}",
            f"+1 ({area}) {exchange}-{line}",
            f"1-{area}-{exchange}-{line}",
            f"+1{area}{exchange}{line}",
        ]
    )


INTERNATIONAL = ["GB", "DE", "FR", "IT", "ES", "NL", "CH", "AT", "BE", "IE", "AU", "JP", "IN"]
INTERNATIONAL += ["BR", "SE", "PL", "MX", "ZA", "SG"]
NATIONAL = ["GB", "DE", "FR", "NL", "BE", "AT", "CH", "IE", "AU", "IT"]  # trunk-0 fallbacks


def _varied_number(region: str) -> phonenumbers.PhoneNumber:
    """A valid number of `region`: its example number with the last digits changed."""
    kind = choice([phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE])
    example = phonenumbers.example_number_for_type(region, kind)
    national = str(example.national_number)
    for _ in range(200):
        candidate = national[:-3] + digits(3)
        number = phonenumbers.parse(f"+{example.country_code}{candidate}")
        if example.italian_leading_zero:
            number = phonenumbers.parse(f"+{example.country_code}0{candidate}")
        if phonenumbers.is_valid_number(number) and candidate[-3:] != "000":
            return number
    return example


def make_intl_phone() -> str:
    region = choice(INTERNATIONAL)
    number = _varied_number(region)
    formats = [phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164]
    text = phonenumbers.format_number(number, choice(formats))
    if region == "DE" and rng.random() < 0.3:  # "+49 (0)30 123456"
        head, _, rest = text.partition(" ")
        text = f"{head} (0){rest}" if rest else text
    return text


def make_national_phone() -> str:
    number = _varied_number(choice(NATIONAL))
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)


def make_phone() -> str:
    return choice(
        [make_us_phone, make_us_phone, make_intl_phone, make_intl_phone, make_national_phone]
    )()


CARD_BRANDS: list[tuple[str, Callable[[], str], int]] = [
    ("visa", lambda: "4", 16),
    ("visa13", lambda: "4", 13),
    ("mastercard", lambda: str(rng.randrange(51, 56)), 16),
    ("mastercard2", lambda: str(rng.randrange(2221, 2721)), 16),
    ("amex", lambda: choice(["34", "37"]), 15),
    ("discover", lambda: choice(["6011", "65", str(rng.randrange(644, 650))]), 16),
    ("jcb", lambda: str(rng.randrange(3528, 3590)), 16),
    ("diners", lambda: choice(["36", "38", str(rng.randrange(300, 306))]), 14),
    ("unionpay", lambda: "62" + str(rng.randrange(10, 99)), 16),
    ("maestro", lambda: choice(["5018", "5020", "5038", "6304", "6759"]), 16),
    ("visa19", lambda: "4", 19),
]


def luhn_number(prefix: str, length: int) -> str:
    body = prefix + digits(length - len(prefix) - 1)
    return body + luhn.calc_check_digit(body)


def group_card(number: str, separator: str) -> str:
    if len(number) == 15:
        return separator.join([number[:4], number[4:10], number[10:]])
    if len(number) == 14 and rng.random() < 0.5:
        return separator.join([number[:4], number[4:10], number[10:]])
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


def make_card(valid: bool = True) -> str:
    _, prefix, length = choice(CARD_BRANDS)
    number = luhn_number(prefix(), length)
    if not valid:  # same number, wrong check digit
        number = number[:-1] + str((int(number[-1]) + rng.randrange(1, 10)) % 10)
    return group_card(number, choice([" ", "-", ""]))


IBAN_COUNTRIES = ["DE", "GB", "FR", "NL", "ES", "IT", "CH", "AT", "BE", "PL", "SE", "IE", "DK"]
_IBAN_DB = numdb.get("iban")
_STRUCTURE = re.compile(r"([0-9]+)!([nac])")
_ALPHABET = {
    "n": string.digits,
    "a": string.ascii_uppercase,
    "c": string.ascii_uppercase + string.digits,
}


def make_iban(valid: bool = True) -> str:
    country = choice(IBAN_COUNTRIES)
    structure = _IBAN_DB.info(country)[0][1]["bban"]
    while True:
        bban = "".join(
            "".join(rng.choice(_ALPHABET[kind]) for _ in range(int(n)))
            for n, kind in _STRUCTURE.findall(structure)
        )
        check = stdnum_iban.calc_check_digits(f"{country}00{bban}")
        number = f"{country}{check}{bban}"
        if stdnum_iban.is_valid(number):
            break
    if not valid:
        wrong = f"{(int(check) + rng.randrange(1, 90)) % 97 + 2:02d}"
        number = f"{country}{wrong}{bban}"
        if stdnum_iban.is_valid(number):
            number = f"{country}{(int(wrong) + 1) % 97 + 2:02d}{bban}"
    return stdnum_iban.format(number) if rng.random() < 0.6 else number


def make_ssn_digits() -> str:
    while True:
        area = rng.randrange(1, 900)
        value = f"{area:03d}{rng.randrange(1, 100):02d}{rng.randrange(1, 10000):04d}"
        if stdnum_ssn.is_valid(value):
            return value


def make_ssn() -> str:
    value = make_ssn_digits()
    return f"{value[:3]}-{value[3:5]}-{value[5:]}"


def make_ipv4() -> str:
    n = rng.randrange
    return choice(
        [
            f"10.{n(256)}.{n(256)}.{n(1, 255)}",
            f"192.168.{n(256)}.{n(1, 255)}",
            f"172.{n(16, 32)}.{n(256)}.{n(1, 255)}",
            f"{n(11, 223)}.{n(256)}.{n(256)}.{n(1, 255)}",
        ]
    )


def make_ipv6() -> str:
    import ipaddress

    groups = [f"{rng.randrange(65536):x}" for _ in range(8)]
    kind = rng.randrange(4)
    if kind == 0:
        groups[:2] = ["2001", "db8"]
        groups[2:5] = ["0", "0", "0"]
    elif kind == 1:
        groups[:4] = ["fe80", "0", "0", "0"]
    address = ipaddress.IPv6Address(":".join(groups))
    return address.exploded if kind == 3 else address.compressed


def make_ip() -> str:
    return make_ipv4() if rng.random() < 0.65 else make_ipv6()


def make_mac() -> str:
    octets = [rng.randrange(256) for _ in range(6)]
    octets[0] |= 0xA0  # a hex letter in the first group, for the Cisco form's sake
    text = "".join(f"{o:02x}" for o in octets)
    style = rng.randrange(4)
    if style == 0:
        return ":".join(text[i : i + 2] for i in range(0, 12, 2))
    if style == 1:
        return "-".join(text[i : i + 2] for i in range(0, 12, 2)).upper()
    if style == 2:
        return ":".join(text[i : i + 2] for i in range(0, 12, 2)).upper()
    return ".".join(text[i : i + 4] for i in range(0, 12, 4))


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August"]
MONTHS += ["September", "October", "November", "December"]


def make_birth_date() -> str:
    day = date(1940, 1, 1) + timedelta(days=rng.randrange(24000))
    month = MONTHS[day.month - 1]
    return choice(
        [
            day.isoformat(),
            f"{day.day:02d}/{day.month:02d}/{day.year}",
            f"{day.month:02d}/{day.day:02d}/{day.year}",
            f"{day.day:02d}.{day.month:02d}.{day.year}",
            f"{month} {day.day}, {day.year}",
            f"{day.day} {month[:3]} {day.year}",
            f"{day.day} {month} {day.year}",
            f"{day.month:02d}/{day.day:02d}/{day.year % 100:02d}",
        ]
    )


def make_passport() -> str:
    letters = "CFGHJKLMNPRTVWXYZ"
    return choice(
        [
            digits(9),
            choice(string.ascii_uppercase) + digits(8),
            "".join(rng.choice(string.ascii_uppercase) for _ in range(2)) + digits(7),
            choice("CFGHJK")
            + "".join(rng.choice(letters + string.digits) for _ in range(4))
            + digits(4),
        ]
    )


def make_national_id() -> tuple[str, str]:
    """(context phrase with {} for the number, number)."""
    kinds = [
        ("driver's license {}", lambda: choice(string.ascii_uppercase) + digits(7)),
        ("driving licence number: {}", lambda: "MORGA" + digits(6) + "SM9IJ"),
        (
            "DL# {}",
            lambda: choice(string.ascii_uppercase) + digits(3) + "-" + digits(4) + "-" + digits(4),
        ),
        (
            "ID card number {}",
            lambda: choice("LMNT") + digits(2) + "X" + digits(2) + "T" + digits(2),
        ),
        ("national ID: {}", lambda: digits(3) + "-" + digits(3) + "-" + digits(3)),
        ("NI number {}", lambda: "AB " + digits(2) + " " + digits(2) + " " + digits(2) + " C"),
        (
            "Aadhaar {}",
            lambda: str(rng.randrange(2, 10)) + digits(3) + " " + digits(4) + " " + digits(4),
        ),
        ("Personalausweisnummer {}", lambda: "L" + digits(2) + "X" + digits(2) + "T" + digits(2)),
        ("DNI {}", lambda: digits(8) + choice("TRWAGMYFPDXBNJZSQVHLCKE")),
        ("Steuer-ID: {}", lambda: str(rng.randrange(1, 10)) + digits(10)),
        ("identity number {}", lambda: digits(2) + choice(string.ascii_uppercase) + digits(6)),
    ]
    phrase, make = choice(kinds)
    return phrase, make()


def _random(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"


def make_prefixed_secret() -> str:
    makers: list[Callable[[], str]] = [
        lambda: "sk-proj-" + _random(URLSAFE, 48),
        lambda: "sk-" + _random(ALNUM, 48),
        lambda: "sk-ant-api03-" + _random(URLSAFE, 93) + "AA",
        lambda: "ghp_" + _random(ALNUM, 36),
        lambda: "gho_" + _random(ALNUM, 36),
        lambda: "github_pat_" + _random(ALNUM, 22) + "_" + _random(ALNUM, 59),
        lambda: "AKIA" + _random(string.ascii_uppercase + string.digits, 16),
        lambda: "xoxb-" + digits(12) + "-" + digits(13) + "-" + _random(ALNUM, 24),
        lambda: "AIza" + _random(URLSAFE, 35),
        lambda: "sk_live_" + _random(ALNUM, 24),
        lambda: "rk_live_" + _random(ALNUM, 24),
        lambda: "glpat-" + _random(URLSAFE, 20),
        lambda: make_jwt(),
    ]
    return choice(makers)()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def make_jwt() -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(
        json.dumps({"sub": digits(8), "iat": 1700000000 + rng.randrange(10**7)}).encode()
    )
    return f"{header}.{payload}.{_b64(rng.randbytes(32))}"


def make_pem() -> str:
    kind = choice(["RSA ", "EC ", "", "OPENSSH "])
    body = "\n".join(
        base64.b64encode(rng.randbytes(48)).decode() for _ in range(rng.randrange(2, 5))
    )
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


def make_context_secret() -> tuple[str, str]:
    """(template with {} for the secret, secret) where only the context makes it a secret."""
    options = [
        ("api_key = '{}'", lambda: _random(ALNUM, 32)),
        ("aws_secret_access_key = {}", lambda: _random(ALNUM + "/+", 40)),
        ("token: {}", lambda: _random("0123456789abcdef", 40)),
        ('"client_secret": "{}"', lambda: _random(URLSAFE, 36)),
        ("Authorization: Bearer {}", lambda: _random(ALNUM, 32)),
        ("export SECRET_KEY={}", lambda: _random(ALNUM + "!#%", 28)),
        ("the access key is {}", lambda: _random(ALNUM, 24)),
    ]
    template, make = choice(options)
    return template, make()


PASSWORDS = ["hunter2!", "S3cure#Pass", "Tr0ub4dor&3", "correct-horse-9", "Winter2024!"]
PASSWORDS += ["p@ssw0rd123", "Geheim123!", "zq8!Lm2#rT", "Admin#2023", "blue42-Sky"]


def make_password() -> tuple[str, str]:
    template = choice(
        [
            "password: {}",
            "Password = {}",
            "DB_PASSWORD={}",
            "my password is {}",
            "pwd={}",
            "Passwort: {}",
            '"password": "{}"',
            "passphrase: {}",
        ]
    )
    return template, choice(PASSWORDS)


STREETS = ["Main", "Oak", "Maple", "Elm", "Washington", "Lake", "Cedar", "Pine", "Sunset"]
STREETS += ["Ocean", "Highland", "5th", "42nd", "Martin Luther King Jr.", "Park", "River"]
SUFFIXES = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Ln"]
SUFFIXES += ["Drive", "Dr", "Court", "Ct", "Way", "Place", "Pl", "Terrace", "Highway"]
CITIES = [("Springfield", "IL", "62704"), ("Austin", "TX", "78701"), ("Portland", "OR", "97205")]
CITIES += [("San Jose", "CA", "95112"), ("Boston", "MA", "02108"), ("Denver", "CO", "80202")]
DE_STREETS = ["Hauptstraße", "Bahnhofstraße", "Lindenweg", "Schillerstr.", "Marktplatz"]
DE_STREETS += ["Berliner Straße", "Goethestraße", "Am Ring", "Kastanienallee", "Mühlgasse"]
DE_CITIES = ["10115 Berlin", "80331 München", "50667 Köln", "20095 Hamburg", "04109 Leipzig"]
FR_STREETS = ["rue de la Paix", "avenue Victor Hugo", "boulevard Saint-Germain"]
FR_STREETS += ["rue du Faubourg Saint-Honoré", "place de la Concorde", "rue des Lilas"]
FR_CITIES = ["75002 Paris", "69002 Lyon", "13001 Marseille", "31000 Toulouse"]


def make_address() -> str:
    style = rng.random()
    if style < 0.6:
        street = f"{rng.randrange(1, 9999)} {choice(STREETS)} {choice(SUFFIXES)}"
        if rng.random() < 0.3:
            street += choice([", Apt 4B", " Suite 200", ", Unit 12", " #305", ", Apt. 7"])
        if rng.random() < 0.5:
            city, state, zip_code = choice(CITIES)
            street += f", {city}, {state} {zip_code}"
        return street
    if style < 0.8:
        name = choice([s for s in DE_STREETS if s != "Am Ring"])
        street = f"{name} {rng.randrange(1, 200)}{choice(['', '', 'a', 'b'])}"
        return street + (f", {choice(DE_CITIES)}" if rng.random() < 0.5 else "")
    street = f"{rng.randrange(1, 150)} {choice(FR_STREETS)}"
    return street + (f", {choice(FR_CITIES)}" if rng.random() < 0.5 else "")


# ----------------------------------------------------------------------- prompt assembly


@dataclass
class Prompt:
    id: str
    note: str
    parts: list[str] = field(default_factory=list)
    entities: list[dict[str, object]] = field(default_factory=list)
    length: int = 0

    def text(self, piece: str) -> Prompt:
        self.parts.append(piece)
        self.length += len(piece)
        return self

    def pii(self, kind: str, value: str) -> Prompt:
        self.entities.append({"type": kind, "start": self.length, "end": self.length + len(value)})
        return self.text(value)

    def record(self) -> dict[str, object]:
        return {
            "id": self.id,
            "text": "".join(self.parts),
            "entities": self.entities,
            "note": self.note,
        }


_SLOT = re.compile(r"\{\{|\}\}|\{([A-Z_]*)\}")


def fill(
    prompt_id: str, note: str, template: str, values: dict[str, str] | list[tuple[str, str]]
) -> dict[str, object]:
    """`template` with its slots ({EMAIL}, {PHONE}, {} …) replaced by values, spans recorded.

    `values` is either one value per type name, or an ordered list of (type, value) for the
    slots in order ("" as type: an unlabelled near miss).
    """
    prompt = Prompt(prompt_id, note)
    queue = list(values) if isinstance(values, list) else None
    position = 0
    for slot in _SLOT.finditer(template):
        prompt.text(template[position : slot.start()])
        position = slot.end()
        if slot.group() in ("{{", "}}"):
            prompt.text(slot.group()[0])
            continue
        if queue is not None:
            kind, value = queue.pop(0)
        else:
            kind = slot.group(1)
            value = values[kind]  # type: ignore[index]
        if kind:
            prompt.pii(kind, value)
        else:
            prompt.text(value)
    prompt.text(template[position:])
    return prompt.record()


# Places in a prompt where a structured value can appear without any context word.
GENERIC = [
    "{}",
    "{} is the one on file.",
    "Please update the record to {}.",
    "Can you check ({})? It bounced.",
    "- old: n/a\n- new: {}\n- status: pending",
    'config = {{"contact": "{}", "retries": 3}}',
    "[2024-03-14 12:30:45] WARN user={} action=login failed",
    "Ticket #4471: customer says '{}' is wrong, please fix.",
    "Notes:\n\n{}\n\nThanks!",
    "Is {}, the value in the CRM, still correct?",
    "value={};",
    "Escalate to tier 2 — {} — asap",
]
TEMPLATES: dict[str, list[str]] = {
    "EMAIL": [
        "Please reply to {} with the updated quote.",
        "From: {}\nSubject: RMA for unit 7\n\nHi, the unit arrived damaged.",
        "CC {}, {} on this thread",
        "Send the logs to <{}> before Friday.",
        "mailto:{}",
        "Contact: {}.",
        "users = ['{}', '{}']",
    ],
    "PHONE": [
        "Call me back at {} after 3pm.",
        "Tel.: {}",
        "Mobile {} (WhatsApp too)",
        "The driver's number is {}, he will call when he is at the gate.",
        "Hotline: {} — available 24/7.",
        "phone={}\nshift=night",
        "Customer can be reached at {} or by mail.",
    ],
    "CREDIT_CARD": [
        "Card number {} exp 04/27",
        "Charge the Visa ending in 1111? No, use {} instead.",
        "payment: {}, cvv withheld",
        "The customer read out {} over the phone.",
        "Refund to card {}.",
    ],
    "IBAN": [
        "IBAN: {}",
        "Please transfer the deposit to {} (BIC COBADEFFXXX).",
        "Bankverbindung {} — Verwendungszweck: Rechnung 4471",
        "payout_account = '{}'",
        "Refund goes to {}.",
    ],
    "US_SSN": [
        "SSN: {}",
        "Employee social security number {} needs correcting in payroll.",
        "Her SSN is {}, can you verify it?",
        "ssn={}",
        "Tax form shows {} as the taxpayer id.",
    ],
    "IP_ADDRESS": [
        "The gateway at {} stopped answering pings.",
        "Failed password for root from {} port 52214 ssh2",
        "Allow {} in the firewall.",
        "host: {}\nport: 8080",
        "Connection from {} refused.",
    ],
    "MAC_ADDRESS": [
        "Device MAC {} keeps dropping off the Wi-Fi.",
        "arp entry {} on vlan 20",
        "Whitelist {}, the new scanner.",
        "hw addr: {}",
        "The badge reader ({}) is offline.",
    ],
}
BIRTH_CONTEXTS = [
    "DOB: {}",
    "Date of birth: {}",
    "born on {}",
    "Birthday {}",
    "d.o.b. {}",
    "date of birth {} (verified)",
    "Patient born {}, allergic to penicillin.",
    "Geburtsdatum: {}",
    "Her DOB is {}.",
]
PASSPORT_CONTEXTS = [
    "passport no. {}",
    "Passport number: {}",
    "passport #{}",
    "Reisepass-Nr. {}",
    "His passport {} expires next year.",
    "Passport No {}.",
]


def generated() -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    makers: dict[str, Callable[[], str]] = {
        "EMAIL": make_email,
        "PHONE": make_phone,
        "CREDIT_CARD": make_card,
        "IBAN": make_iban,
        "US_SSN": make_ssn,
        "IP_ADDRESS": make_ip,
        "MAC_ADDRESS": make_mac,
        "STREET_ADDRESS": make_address,
    }
    for kind, make in makers.items():
        specific = TEMPLATES.get(kind, [])
        templates = specific + GENERIC if kind != "US_SSN" else specific
        if kind == "STREET_ADDRESS":
            templates = [
                "Ship to {}.",
                "Address: {}",
                "I moved to {} last month, please update my file.",
                "Deliver the pallet to {} before 10:00.",
                "Lieferadresse: {}",
                'billing_address = "{}"',
                "Pick-up at {}; gate code at the desk.",
                "New office:\n{}\nOpen Mon-Fri",
            ]
        count = 28 if kind in ("PHONE", "STREET_ADDRESS") else 24
        for n in range(count):
            template = templates[n % len(templates)]
            slots = template.count("{}")
            values = [(kind, make()) for _ in range(slots)]
            records.append(
                fill(f"{kind.lower()}-{n:02d}", f"{kind} in a generated template", template, values)
            )
    for n in range(10):  # SSNs also spaced or bare, after an SSN word
        value = make_ssn_digits()
        shown = value if n % 2 else f"{value[:3]} {value[3:5]} {value[5:]}"
        template = choice(["SSN {} on the W-2", "social security no. {}", "ssn: {}"])
        records.append(
            fill(
                f"us_ssn-ctx-{n:02d}",
                "SSN spaced or bare, with context",
                template,
                [("US_SSN", shown)],
            )
        )
    for n in range(24):
        template = BIRTH_CONTEXTS[n % len(BIRTH_CONTEXTS)]
        records.append(
            fill(
                f"dob-{n:02d}",
                "date of birth in context",
                "Patient note. " + template,
                [("DATE_OF_BIRTH", make_birth_date())],
            )
        )
    for n in range(20):
        template = PASSPORT_CONTEXTS[n % len(PASSPORT_CONTEXTS)]
        records.append(
            fill(
                f"passport-{n:02d}",
                "passport number in context",
                "Travel request: " + template,
                [("PASSPORT", make_passport())],
            )
        )
    for n in range(22):
        phrase, number = make_national_id()
        records.append(
            fill(
                f"national-id-{n:02d}",
                "national id in context",
                f"Onboarding form, {phrase}, please check.",
                [("NATIONAL_ID", number)],
            )
        )
    for n in range(14):
        value = make_prefixed_secret()
        template = choice(
            [
                "Here is my key {} — why does the API return 401?",
                "export OPENAI_API_KEY={}",
                "headers = {{'Authorization': 'Bearer {}'}}",
                "I accidentally committed {} to the repo, how do I rotate it?",
                "config:\n  key: {}\n  region: eu-west-1",
            ]
        )
        records.append(
            fill(
                f"secret-prefixed-{n:02d}", "vendor-prefixed secret", template, [("SECRET", value)]
            )
        )
    for n in range(4):
        records.append(
            fill(
                f"secret-pem-{n:02d}",
                "PEM private key block",
                "Deploy key below, install it on the box:\n{}\nthanks",
                [("SECRET", make_pem())],
            )
        )
    for n in range(10):
        template, value = make_context_secret()
        records.append(
            fill(
                f"secret-context-{n:02d}",
                "secret after a context word",
                "settings:\n" + template + "\nregion = eu-west-1",
                [("SECRET", value)],
            )
        )
    for n in range(10):
        template, value = make_password()
        records.append(
            fill(
                f"secret-password-{n:02d}",
                "password in context",
                "Login trouble. " + template + " does not work on the kiosk.",
                [("SECRET", value)],
            )
        )
    return records


def mixed() -> list[dict[str, object]]:
    """Prompts with several PII types, as a support desk would send them."""
    records = []
    templates = [
        (
            "Hi, I'm moving. New address: {STREET_ADDRESS}. My phone is {PHONE} and my email "
            "{EMAIL}. Please refund the deposit to {IBAN}.",
            "support ticket, four types",
        ),
        (
            "HR question: employee record shows SSN {US_SSN}, DOB {DATE_OF_BIRTH}, "
            "personal email {EMAIL}. Is it OK to store these in the ticket?",
            "HR record",
        ),
        (
            "Incident 2231\n- host: {IP_ADDRESS}\n- nic: {MAC_ADDRESS}\n- reported by: {EMAIL}\n"
            "- callback: {PHONE}",
            "network incident, list",
        ),
        (
            "Customer paid with {CREDIT_CARD} but the refund should go to {IBAN}; call {PHONE}.",
            "payment mix-up",
        ),
        (
            "Traveller profile\npassport no. {PASSPORT}\ndate of birth {DATE_OF_BIRTH}\n"
            "mobile: {PHONE}\nhome: {STREET_ADDRESS}",
            "travel profile, multi-line",
        ),
        (
            '```python\nclient = Client(api_key="{SECRET}", host="{IP_ADDRESS}")\n'
            'notify("{EMAIL}")\n```\nWhy does this time out?',
            "code snippet with a key",
        ),
    ]
    makers: dict[str, Callable[[], str]] = {
        "STREET_ADDRESS": make_address,
        "PHONE": make_phone,
        "EMAIL": make_email,
        "IBAN": make_iban,
        "US_SSN": make_ssn,
        "DATE_OF_BIRTH": make_birth_date,
        "IP_ADDRESS": make_ip,
        "MAC_ADDRESS": make_mac,
        "CREDIT_CARD": make_card,
        "PASSPORT": make_passport,
        "SECRET": make_prefixed_secret,
    }
    for n in range(30):
        template, note = templates[n % len(templates)]
        values = {kind: make() for kind, make in makers.items()}
        records.append(fill(f"mixed-{n:02d}", note, template, values))
    return records


def near_misses() -> list[dict[str, object]]:
    """Texts that contain look-alikes and no PII."""
    uuid = lambda: "-".join(_random("0123456789abcdef", n) for n in (8, 4, 4, 4, 12))  # noqa: E731
    sha = lambda n: _random("0123456789abcdef", n)  # noqa: E731
    makers: list[tuple[str, Callable[[], str]]] = [
        ("Order #{} has not shipped yet.", lambda: digits(12)),
        ("order no. {} was cancelled", lambda: f"{digits(4)}-{digits(4)}-{digits(3)}"),
        ("Invoice INV-2024-{} is overdue.", lambda: digits(5)),
        ("tracking number 1Z999AA1{}", lambda: digits(8)),
        (
            "Upgrade from v2.14.3 to {} fixed it.",
            lambda: f"v{rng.randrange(1, 9)}.{rng.randrange(20)}.{rng.randrange(20)}",
        ),
        ("Requires Python {} or later.", lambda: f"3.{rng.randrange(8, 14)}.{rng.randrange(10)}"),
        (
            "firmware version {} is installed",
            lambda: (
                f"{rng.randrange(1, 9)}.{rng.randrange(10)}.{rng.randrange(10)}.{rng.randrange(99)}"
            ),
        ),
        ("The card {} was declined (checksum).", lambda: make_card(valid=False)),
        ("Wrong IBAN {} — the check digits do not match.", lambda: make_iban(valid=False)),
        (
            "The SSN field shows {} which is not valid.",
            lambda: choice(
                ["000-12-3456", "666-45-6789", "912-34-5678", "123-00-4567", "123-45-0000"]
            ),
        ),
        ("commit {} broke the build", lambda: sha(40)),
        ("sha256 of the file is {}", lambda: sha(64)),
        ("md5: {}", lambda: sha(32)),
        ("request id {} timed out", uuid),
        (
            "[{}] worker 4 restarted",
            lambda: (
                f"2024-0{rng.randrange(1, 10)}-1{rng.randrange(10)}T12:3{rng.randrange(10)}:45Z"
            ),
        ),
        ("ts={} level=info msg=ok", lambda: str(1700000000 + rng.randrange(10**8))),
        (
            "Total: {} incl. VAT",
            lambda: choice(["$1,299.99", "EUR 12 500,00", "€4.50", "USD 1 234 567"]),
        ),
        ("ISBN {}", lambda: choice(["978-3-16-148410-0", "0-306-40615-2", "978-0-596-52068-7"])),
        ("Replace part PN-{} on the conveyor.", lambda: f"{digits(4)}-{digits(2)}-A"),
        ("SKU {} is out of stock", lambda: f"{digits(2)}-{digits(4)}-{digits(4)}"),
        (
            "The meeting moved to {}.",
            lambda: choice(["2025-05-01", "14/03/2025", "March 3, 2025", "03/14/25"]),
        ),
        ("We have 3 Main points to discuss, see {}.", lambda: "Chapter 12 Road Map"),
        ("Version {} of the protocol", lambda: f"{rng.randrange(1, 4)}.{rng.randrange(10)}"),
        (
            "ping {} failed: invalid address",
            lambda: choice(["256.10.1.1", "10.0.0", "1.2.3", "300.1.2.3"]),
        ),
        ("Time window {} to 14:00", lambda: "12:30:45"),
        ("Call 123-456-7890 for the demo line? That's {}.", lambda: "not real"),
        ("password reset link expired, {}", lambda: "please resend"),
        ("token: {}", lambda: "see the vault"),
        ("password: {}", lambda: choice(["********", "<redacted>", "required"])),
        ("the password is {}", lambda: choice(["wrong", "incorrect", "expired"])),
        ("api_key = {}", lambda: "os.environ['API_KEY']"),
        ("password={}", lambda: "${DB_PASSWORD}"),
        ("pip install {}", lambda: "scikit-learn==1.4.2"),
        ("Temperature {} °C at sensor 12", lambda: f"{rng.randrange(10, 40)}.{rng.randrange(10)}"),
        (
            "Coordinates {}",
            lambda: f"{rng.randrange(10, 60)}.{digits(4)}, {rng.randrange(1, 30)}.{digits(4)}",
        ),
        ("Serial {} passed QA", lambda: f"SN{digits(10)}"),
        ("pid {} exited with code 137", lambda: digits(6)),
        ("Section 4 Court Order {} applies", lambda: "7(b)"),
        ("std::vector<int> v; v.push_back({});", lambda: digits(2)),
        ("x = arr[::2] + {}", lambda: digits(1)),
        ("Room {} on floor 3", lambda: f"{digits(3)}"),
        ("icon@2x.png and {}", lambda: "logo@3x.png"),
    ]
    records = []
    for n in range(len(makers) * 2):
        template, make = makers[n % len(makers)]
        records.append(fill(f"near-miss-{n:03d}", "look-alike, no PII", template, [("", make())]))
    return records


NO_PII = [
    "Summarise the attached maintenance log in three bullet points.",
    "Translate 'the conveyor belt is jammed' into German and French.",
    "Write a Python function that returns the median of a list.",
    "What is the torque spec for an M8 bolt, grade 8.8?",
    "Explain the difference between TCP and UDP to a new technician.",
    "The generator ran for 36 hours; estimate fuel use at 12 litres per hour.",
    "Draft a polite reminder that the safety training is due next week.",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "List the steps to replace the air filter on unit B.",
    "Why does my Docker build fail with exit code 137?",
    "Give me a regex that matches ISO dates like 2024-03-14.",
    "How many pallets fit in a 40 ft container?",
    "Rewrite this sentence to sound more formal: we gotta ship it by Monday.",
    "What does HTTP status 429 mean and how should a client back off?",
    "Compare SQLite and PostgreSQL for an offline edge device.",
    "The build took 1234 seconds on 2 cores; how long on 8?",
    "Create a checklist for the quarterly fire drill.",
    "Explain what a Luhn checksum is.",
    "Is 0.1 + 0.2 == 0.3 in Python? Why not?",
    "Write a haiku about a server room at night.",
    "Describe how IBANs are validated, without giving an example.",
    "Our SLA is 99.9% uptime; how many minutes of downtime per month is that?",
    "Sort these part codes: A-12, B-7, A-3.",
    "Suggest names for a field-tech status screen.",
    "In 2019 the site had 14 sensors; now it has 52. What's the growth rate?",
    "Refactor: for i in range(len(xs)): print(xs[i])",
    "What's the capital of Australia?",
    "Explain backpressure in message queues.",
    "Set the retry limit to 5 and the timeout to 30 s.",
    "The quick brown fox jumps over the lazy dog.",
]

HANDWRITTEN = [
    "Hi team,\nplease send the signed NDA to [[EMAIL:j.okafor@field-ops.example.de]] and call "
    "[[PHONE:+49 30 901820]] if anything is unclear.\nBest",
    "Refund request: card [[CREDIT_CARD:5555 5555 5555 4444]], amount $49.99, order #100234 "
    "(shipped 2024-02-11).",
    "Wire the deposit to [[IBAN:GB82 WEST 1234 5698 7654 32]]. Reference: INV-2024-0042.",
    "Kunde bittet um Rückruf unter [[PHONE:0171 2345678]] wegen Lieferung nach "
    "[[STREET_ADDRESS:Bahnhofstraße 5, 80335 München]].",
    "Server log:\n2024-03-14 02:10:11 sshd[2231]: Failed password for admin from "
    "[[IP_ADDRESS:203.0.113.45]] port 40112\n2024-03-14 02:10:15 sshd[2231]: Connection closed",
    "The new access point ([[MAC_ADDRESS:3c:22:fb:9a:10:07]]) got [[IP_ADDRESS:192.168.40.17]] "
    "from DHCP.",
    "Applicant: DOB [[DATE_OF_BIRTH:1985-03-14]], SSN [[US_SSN:219-45-1197]], passport no. "
    "[[PASSPORT:X1234567]].",
    "export ANTHROPIC_API_KEY=[[SECRET:sk-ant-api03-Xb7Qk2mN9pLr4TvW8yZc1Df3Gh5Jk7Lm9Np0Qr2St4Uv6"
    "Wx8Yz0Ab2Cd4Ef6Gh8Ij0Kl2Mn4Op6Qr8St0Uv2Wx4Yz6Ab8Cd0Ef2Gh4Ij6Kl8Mn0Op2QrAA]]\n"
    "Why does the client still say unauthorized?",
    "Ship to [[STREET_ADDRESS:1600 Pennsylvania Avenue NW, Washington, DC 20500]] — gate B.",
    "Lieferung an [[STREET_ADDRESS:12 rue de la Paix, 75002 Paris]], étage 3.",
    "Our office at [[STREET_ADDRESS:221B Baker Street]] has a new phone: "
    "[[PHONE:+44 20 7946 0958]].",
    "DB creds: user=svc_report password=[[SECRET:Xk9#mQ2!vL]] host=[[IP_ADDRESS:10.20.30.40]]",
    "Please redact: born [[DATE_OF_BIRTH:March 4, 1979]], driver's license "
    "[[NATIONAL_ID:D1234567]], phone [[PHONE:(312) 555-0147]].",
    "curl -H 'Authorization: Bearer [[SECRET:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U]]' https://api.example.com/v1/jobs",
    "IPv6 neighbour [[IP_ADDRESS:fe80::1c2a:3bff:fe4d:5e6f]] on eth0 is "
    "[[MAC_ADDRESS:1e:2a:3b:4d:5e:6f]].",
    "Switch port Gi0/12 shows [[MAC_ADDRESS:00a0.c9f4.2b11]] flapping.",
    "Reisepass-Nr. [[PASSPORT:C01X00T47]], Personalausweis [[NATIONAL_ID:L01X00T47]], "
    "geb. [[DATE_OF_BIRTH:14.03.1985]]",
    "Contact list:\n* [[EMAIL:ops@example.com]]\n* [[EMAIL:night-shift@example.com]]\n* "
    "[[PHONE:+33 1 42 68 53 00]]",
    "Version 4.18.0 is deployed on 10 nodes; release 2.3.1.4 next week. No customer data here.",
    "Git: commit 9fceb02d0ae598e95dc970b74767f19372d61af8 fixed the SSN validator.",
    "AWS keys found in the log: [[SECRET:AKIAIOSFODNN7EXAMPLE]] / aws_secret_access_key="
    "[[SECRET:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY]]",
    "GitHub token [[SECRET:ghp_16C7e42F292c6912E7710c838347Ae178B4a]] leaked in CI output.",
    "Slack bot token [[SECRET:xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx]] "
    "should be rotated.",
    "Stripe [[SECRET:sk_live_4eC39HqLyjWDarjtT1zdp7dc]] was pasted into the chat by mistake.",
    "Amex [[CREDIT_CARD:3782 822463 10005]] and Diners [[CREDIT_CARD:3056 930902 5904]] both "
    "declined.",
    "UnionPay card [[CREDIT_CARD:6212345678901232]] — is this format supported?",
    "Postgres URL: postgres://report:[[SECRET:s3cr3t-Pa55]]@[[IP_ADDRESS:10.1.2.3]]:5432/metrics",
    "My SSN is [[US_SSN:536-90-4399]]. Also my DOB: [[DATE_OF_BIRTH:07/22/1990]].",
    "NI number [[NATIONAL_ID:QQ 12 34 56 C]], National Insurance letter attached.",
    "Tel [[PHONE:+1 415-555-2671]] / Fax [[PHONE:+1 415-555-2672]]",
    "The chapter 12 road map says 3 Main points; nothing personal here.",
    "Spanish customer: DNI [[NATIONAL_ID:12345678Z]], móvil [[PHONE:+34 612 34 56 78]].",
    "Italian office: [[PHONE:+39 02 1234 5678]], IBAN [[IBAN:IT60 X054 2811 1010 0000 0123 456]].",
    "Dutch account [[IBAN:NL91ABNA0417164300]] for the Rotterdam depot.",
    "Swiss IBAN [[IBAN:CH93 0076 2011 6238 5295 7]] and French "
    "[[IBAN:FR14 2004 1010 0505 0001 3M02 606]].",
    "Log line: [[IP_ADDRESS:10.0.0.255]] is the broadcast; the printer is "
    "[[IP_ADDRESS:10.0.0.42]].",
    "Email me at [[EMAIL:first.last@example.co.uk]]; my colleague is at "
    "[[EMAIL:c.rossi@mail.example.it]].",
    "uuid 123e4567-e89b-12d3-a456-426614174000 and sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709 "
    "are fine to share.",
    "Kreditkarte [[CREDIT_CARD:4012-8888-8888-1881]], gültig bis 09/26.",
    "I was born on [[DATE_OF_BIRTH:2 February 1964]] in Leeds, moved to "
    "[[STREET_ADDRESS:48 Oak Lane, Apt 3, Austin, TX 78701]] in 2001.",
    # harder formats
    "London desk: [[PHONE:+44 (0) 20 7946 0321]], Berlin: [[PHONE:0049 30 1234567]].",
    "From Europe dial [[PHONE:001 415 555 2671]]; the hotline ext. 42 is at "
    "[[PHONE:+1 (800) 555-0199]] ext. 42.",
    "Tel:[[PHONE:0171 2345678]] Fax:[[PHONE:030/1234567]]",
    '<a href="tel:[[PHONE:+14155552671]]">call us</a>',
    "Callback numbers: [[PHONE:415 555 2671]], [[PHONE:(415)555-2672]] and "
    "[[PHONE:+49-89-12345678]].",
    "HQ: [[STREET_ADDRESS:1600 Amphitheatre Parkway, Mountain View, CA 94043]]; UK branch "
    "[[STREET_ADDRESS:221B Baker Street, London NW1 6XE]].",
    "Meet at [[STREET_ADDRESS:350 Fifth Avenue]] then [[STREET_ADDRESS:10 Downing St]].",
    "Subnet [[IP_ADDRESS:192.168.1.0]]/24, gateway http://[[IP_ADDRESS:192.168.1.1]]:8080/health, "
    "v6 [[[IP_ADDRESS:2001:db8::1]]]:443 and mapped [[IP_ADDRESS:::ffff:192.0.2.128]].",
    "dhcp: MAC=[[MAC_ADDRESS:00:1A:2B:3C:4D:5E]] lease [[IP_ADDRESS:10.8.0.12]]; "
    "switch sees [[MAC_ADDRESS:001a.2b3c.4d5e]]",
    "Patient: DOB [[DATE_OF_BIRTH:3/4/1985]]; sibling born [[DATE_OF_BIRTH:14th March 1988]]; "
    "Date of Birth | [[DATE_OF_BIRTH:1990/11/02]]",
    "mysql -u root --password [[SECRET:Sup3r-Secret!]] -h [[IP_ADDRESS:10.2.3.4]]",
    "db.connect(user='app', password='[[SECRET:hunter2]]')",
    "SSN#[[US_SSN:123-45-6789]] and card [[CREDIT_CARD:4111-1111-1111-1111]].",
    "Send it to Jane <[[EMAIL:jane.doe@example.com]]> (cc: [[EMAIL:ops-team@sub.example.museum]]).",
    "OPENAI_API_KEY=[[SECRET:sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9fG1hJ3kL5m]]",
    # hard negatives: no PII
    "Settings: password_min_length = 12, token_count = 1024, max_tokens: 512, secret: true.",
    "Forgot password? Click here. The token expires in 3600 seconds. Tokens: 512.",
    '"password": {"type": "string", "minLength": 8}',
    "Build 10.0.19045.3803, kernel 6.1.7601.17514, semver 1.2.3-beta.4, python 3.11.7.",
    "At 12:30:45.123 the job started; colour #aabbcc; cells A1:B2; groups ab:cd:ef.",
    "Tracking: 9400 1000 0000 0000 0000 00 (USPS). Account 0123456789. ID 1234567890.",
    "In 2021 Park Street bakery opened; Route 66 Diner is closed; call 911 in an emergency.",
    "password_hash: $2b$12$KIXQJZ8yZ5yq1F1o2Zc3UO0uQ1hV5pY6nX7wB8cD9eF0gH1iJ2kL3",
    "pi is 3.14159265, e is 2.7182818; 1-800-FLOWERS is a brand.",
]

_MARK = re.compile(r"\[\[([A-Z_]+):(.*?)\]\]", re.DOTALL)


def handwritten() -> list[dict[str, object]]:
    records = []
    for n, marked in enumerate(HANDWRITTEN):
        prompt = Prompt(f"hand-{n:02d}", "hand-written")
        position = 0
        for mark in _MARK.finditer(marked):
            prompt.text(marked[position : mark.start()])
            prompt.pii(mark.group(1), mark.group(2))
            position = mark.end()
        prompt.text(marked[position:])
        records.append(prompt.record())
    return records


def build() -> list[dict[str, object]]:
    records = generated() + mixed() + near_misses()
    records += [
        fill(f"no-pii-{n:02d}", "no PII", text.replace("{", "{{").replace("}", "}}"), [])
        for n, text in enumerate(NO_PII)
    ]
    records += handwritten()
    makers = Makers(
        rng=rng,
        card=make_card,
        luhn_number=luhn_number,
        iban=make_iban,
        ssn_digits=make_ssn_digits,
        us_phone=make_us_phone,
        intl_phone=make_intl_phone,
        email=make_email,
        passwords=PASSWORDS,
    )
    records += bypass_records(makers)  # last: the records above stay as they were
    return records


def decimal_digits(value: str) -> str:
    """The digits of `value` in ASCII, whatever script or width they were typed in."""
    return "".join(
        str(unicodedata.decimal(c)) for c in value if unicodedata.decimal(c, None) is not None
    )


def alphanumerics(value: str) -> str:
    """`value`'s letters and digits in ASCII upper case (fullwidth ones folded by NFKC)."""
    return "".join(c for c in unicodedata.normalize("NFKC", value).upper() if c.isalnum())


def check_labels(records: list[dict[str, object]]) -> None:
    """Fails when a labelled checksum-bearing value (hand-written ones too) is not valid."""
    import ipaddress

    checks: dict[str, Callable[[str], bool]] = {
        "CREDIT_CARD": lambda v: luhn.is_valid(decimal_digits(v)),
        "IBAN": lambda v: stdnum_iban.is_valid(alphanumerics(v)),
        "US_SSN": lambda v: stdnum_ssn.is_valid(decimal_digits(v)),
        "IP_ADDRESS": lambda v: bool(ipaddress.ip_address(v)),
    }
    for record in records:
        text = str(record["text"])
        values = [(e["type"], text[e["start"] : e["end"]]) for e in record["entities"]]  # type: ignore[attr-defined]
        if "messages" in record:  # a number split around a reply: one label per part
            parts = [v for kind, v in values if kind == "CREDIT_CARD"]
            if len(parts) > 1:
                values = [(k, v) for k, v in values if k != "CREDIT_CARD"]
                values.append(("CREDIT_CARD", "".join(parts)))
        for kind, value in values:
            check = checks.get(kind)
            if check is not None and not check(value):
                raise SystemExit(f"{record['id']}: invalid {kind} {value!r}")


def main() -> int:
    records = build()
    check_labels(records)
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate ids")
    with OUT.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(records)} prompts -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
