"""Each recognizer: positives in many formats with exact spans, and the near misses it must skip."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.pii import (
    CREDIT_CARD,
    DATE_OF_BIRTH,
    EMAIL,
    IBAN,
    IP_ADDRESS,
    MAC_ADDRESS,
    NATIONAL_ID,
    PASSPORT,
    PHONE,
    SECRET,
    STREET_ADDRESS,
    US_SSN,
    Analyzer,
    Finding,
    default_analyzer,
    default_recognizers,
    resolve_overlaps,
)
from appliance.pii.dates import find_past_date


def values(text: str, kind: str) -> list[str]:
    """What the default analyzer reports as `kind` in `text` (after overlap resolution)."""
    return [f.value(text) for f in default_analyzer().analyze(text) if f.type == kind]


def assert_finds(kind: str, text: str, *expected: str) -> None:
    assert values(text, kind) == list(expected), text


# ----------------------------------------------------------------------------------- e-mail


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail john.doe@example.com now", "john.doe@example.com"),
        ("<first.last+tag@sub.example.co.uk>", "first.last+tag@sub.example.co.uk"),
        ("Contact: ops@example.org.", "ops@example.org"),
        ("(x_y-z%1@mail-server.example.io)", "x_y-z%1@mail-server.example.io"),
        ("mailto:SUPPORT@EXAMPLE.COM,", "SUPPORT@EXAMPLE.COM"),
        ("'a@b.museum'", "a@b.museum"),
        ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
        ("..lead@example.com", "lead@example.com"),
    ],
)
def test_email_positives(text: str, expected: str) -> None:
    assert_finds(EMAIL, text, expected)


@pytest.mark.parametrize(
    "text",
    [
        "icon@2x.png and logo@3x.jpg",
        "user@localhost",
        "@decorator and @types/node",
        "pkg@1.2.3",
        "a..b@example.com",
        "trailing.@example.com",
        "x@-bad.example.com",
        "email me at foo@bar",
    ],
)
def test_email_negatives(text: str) -> None:
    assert values(text, EMAIL) == []


# ------------------------------------------------------------------------------------ phone


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call +44 20 7946 0958 today", "+44 20 7946 0958"),
        ("US office (415) 555-2671.", "(415) 555-2671"),
        ("Berlin +49 (0)30 123456", "+49 (0)30 123456"),
        ("Handy 0171 1234567", "0171 1234567"),
        ("fax 415.555.2671", "415.555.2671"),
        ("call 415-555-2671", "415-555-2671"),
        ("+1-212-555-0123", "+1-212-555-0123"),
        ("E.164: +14155552671", "+14155552671"),
        ("Paris 01 23 45 67 89", "01 23 45 67 89"),
        ("FR +33 1 23 45 67 89", "+33 1 23 45 67 89"),
        ("Tokyo +81 3-1234-5678", "+81 3-1234-5678"),
        ("dial 0049 30 1234567", "0049 30 1234567"),
        ("Tel:0171 2345678", "0171 2345678"),
        ("tel:+14155552671", "+14155552671"),
        ("(+1 (512) 902-9751)", "+1 (512) 902-9751"),
        ("call me at 4155552671", "4155552671"),
        ("1-800-555-0199", "1-800-555-0199"),
    ],
)
def test_phone_positives(text: str, expected: str) -> None:
    assert_finds(PHONE, text, expected)


def test_two_phone_numbers_separated_by_a_blank_are_two_findings() -> None:
    assert_finds(PHONE, "phones: 415-555-2671 212-555-0123", "415-555-2671", "212-555-0123")


@pytest.mark.parametrize(
    "text",
    [
        "Order #123456789012 shipped",
        "order no. 4410-2287-113",
        "Invoice 4155552671",  # bare digits, no phone word
        "released v2.14.3 and 1.2.3",
        "on 2024-03-14 12:30:45",
        "due 14.03.2025 08:15",
        "date 03/14/85",
        "ISBN 978-3-16-148410-0",
        "isbn 0-306-40615-2",
        "card 4111 1111 1111 1111",
        "SSN 123-45-6789",
        "123-456-7890",  # area code 123 does not exist
        "555-2671",  # no area code
        "items 1 2 3 4 5 6 7 8",
        "ts=1710419445",
        "pi 3.14159265",
        "2023.10.1234",
        "price USD 1 234 567",
        "tracking 9400 1000 0000 0000 0000 00",
        "ip 192.168.100.200",
    ],
)
def test_phone_negatives(text: str) -> None:
    assert values(text, PHONE) == []


# ------------------------------------------------------------------------------ credit card


@pytest.mark.parametrize(
    "number",
    [
        "4111 1111 1111 1111",  # Visa
        "4111-1111-1111-1111",
        "4111111111111111",
        "4222222222222",  # Visa 13
        "5555 5555 5555 4444",  # Mastercard
        "2223 0031 2200 3222",  # Mastercard 2-series
        "3782 822463 10005",  # Amex
        "371449635398431",
        "6011 1111 1111 1117",  # Discover
        "3530 1113 3330 0000",  # JCB
        "3056 930902 5904",  # Diners
        "6212345678901232",  # UnionPay
        "6759 6498 2643 8453",  # Maestro
    ],
)
def test_card_positives(number: str) -> None:
    assert_finds(CREDIT_CARD, f"pay with {number}, thanks", number)


@pytest.mark.parametrize(
    "text",
    [
        "pay with 4111 1111 1111 1112",  # Luhn fails
        "pay with 4111111111111112",
        "pay with 1234 5678 9012 3452",  # Luhn ok, no issuer 12
        "pay with 3782 822463 10006",
        "pay with 4111 11111 1111 111",  # odd grouping
        "pay with 4111 1111-1111 1111",  # mixed separators
        "order 12345678901234567890",  # 20 digits
        "id 0000000000000000",
    ],
)
def test_card_negatives(text: str) -> None:
    assert values(text, CREDIT_CARD) == []


# ------------------------------------------------------------------------------------- IBAN


@pytest.mark.parametrize(
    "iban",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "NL91ABNA0417164300",
        "FR14 2004 1010 0505 0001 3M02 606",
        "CH93 0076 2011 6238 5295 7",
        "IT60 X054 2811 1010 0000 0123 456",
        "BE31 4354 1116 1155",
        "de89 3704 0044 0532 0130 00",  # as people type it: lower case
        "DE89-3704-0044-0532-0130-00",  # grouped with hyphens
        "gb82west12345698765432",
    ],
)
def test_iban_positives(iban: str) -> None:
    assert_finds(IBAN, f"IBAN: {iban}.", iban)


def test_iban_followed_by_an_upper_case_word_is_cut_to_its_country_length() -> None:
    assert_finds(IBAN, "to BE31 4354 1116 1155 FROM the bank", "BE31 4354 1116 1155")


def test_card_digits_inside_an_iban_are_the_iban() -> None:
    text = "IBAN DE89 3704 0044 0532 0130 00"
    assert [f.type for f in default_analyzer().analyze(text)] == [IBAN]


@pytest.mark.parametrize(
    "text",
    [
        "DE88 3704 0044 0532 0130 00",  # wrong check digits
        "DE89 3704 0044 0532 0130 0",  # too short
        "XX89 3704 0044 0532 0130 00",  # no such country
        "GB82 WEST 1234 5698 7654 33",
    ],
)
def test_iban_negatives(text: str) -> None:
    assert values(text, IBAN) == []


# -------------------------------------------------------------------------------------- SSN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SSN 536-90-4399", "536-90-4399"),
        ("ssn: 536 90 4399", "536 90 4399"),
        ("social security number 536904399", "536904399"),
        ("id 219-45-1197.", "219-45-1197"),
    ],
)
def test_ssn_positives(text: str, expected: str) -> None:
    assert_finds(US_SSN, text, expected)


@pytest.mark.parametrize(
    "text",
    [
        "SSN 000-12-3456",
        "SSN 666-12-3456",
        "SSN 912-34-5678",
        "SSN 123-00-4567",
        "SSN 123-45-0000",
        "SSN 078-05-1120",  # the Woolworth wallet card number
        "batch 536904399",  # nine bare digits need an SSN word
        "part 536-90-4399-12",
    ],
)
def test_ssn_negatives(text: str) -> None:
    assert values(text, US_SSN) == []


def test_ssn_scores_higher_with_context() -> None:
    (with_word,) = default_analyzer().analyze("SSN: 536-90-4399", [US_SSN])
    (without,) = default_analyzer().analyze("value 536-90-4399", [US_SSN])
    assert with_word.score > without.score


# --------------------------------------------------------------------------------------- IP


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host 192.168.1.20 down", ["192.168.1.20"]),
        ("http://10.0.0.1:8080/health", ["10.0.0.1"]),
        ("subnet 10.0.0.0/8.", ["10.0.0.0"]),
        ("1.2.3.4 is an address", ["1.2.3.4"]),
        ("v6 2001:db8::8a2e:370:7334 up", ["2001:db8::8a2e:370:7334"]),
        ("[2001:db8::1]:443", ["2001:db8::1"]),
        ("link fe80::1 on eth0", ["fe80::1"]),
        (
            "full 2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            ["2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
        ),
        ("mapped ::ffff:192.0.2.128", ["::ffff:192.0.2.128"]),
    ],
)
def test_ip_positives(text: str, expected: list[str]) -> None:
    assert values(text, IP_ADDRESS) == expected


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3.4",
        "firmware: 10.2.0.15",
        "v1.2.3.4",
        "release 1.2.3",
        "256.1.1.1",
        "OID 1.3.6.1.4.1.311",
        "build 10.0.19045.3803",
        "time 12:30:45",
        "std::vector and a::b",
        "x[::2]",
        "mac aa:bb:cc:dd:ee:ff",
        "01.02.03.04",  # leading zeros
    ],
)
def test_ip_negatives(text: str) -> None:
    assert values(text, IP_ADDRESS) == []


def test_loopback_scores_low() -> None:
    (finding,) = default_analyzer().analyze("bind 127.0.0.1", [IP_ADDRESS])
    assert finding.score < 0.9


# -------------------------------------------------------------------------------------- MAC


@pytest.mark.parametrize(
    "mac", ["aa:bb:cc:dd:ee:ff", "AA-BB-CC-DD-EE-FF", "00:1A:2B:3C:4D:5E", "aabb.ccdd.eeff"]
)
def test_mac_positives(mac: str) -> None:
    assert_finds(MAC_ADDRESS, f"nic {mac}, vlan 20", mac)


def test_cisco_mac_of_digits_needs_a_mac_word() -> None:
    assert_finds(MAC_ADDRESS, "MAC 0012.3456.7890", "0012.3456.7890")
    assert values("part 0012.3456.7890", MAC_ADDRESS) == []


@pytest.mark.parametrize(
    "text", ["aa:bb:cc", "aa:bb-cc:dd-ee:ff", "aa:bb:cc:dd:ee:ff:00", "#aabbcc", "12:30:45"]
)
def test_mac_negatives(text: str) -> None:
    assert values(text, MAC_ADDRESS) == []


# ---------------------------------------------------------------------------- date of birth


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DOB: 1985-03-14", "1985-03-14"),
        ("date of birth 14/03/1985", "14/03/1985"),
        ("born on March 14, 1985 in Ohio", "March 14, 1985"),
        ("Birthday: 14 Mar 1985", "14 Mar 1985"),
        ("d.o.b. 03/14/85", "03/14/85"),
        ("geb. 14.03.1985", "14.03.1985"),
        ("Geburtsdatum: 14. März 1985", "14. März 1985"),
        ("born 14th of March 1985", "14th of March 1985"),
        ("Her DOB is 3/4/1985.", "3/4/1985"),
    ],
)
def test_birth_date_positives(text: str, expected: str) -> None:
    assert_finds(DATE_OF_BIRTH, text, expected)


@pytest.mark.parametrize(
    "text",
    [
        "due 1985-03-14",  # no birth word
        "DOB: 2199-01-01",  # in the future
        "DOB: 1985-02-30",  # no such day
        "DOB: 13/13/1985",
        "born in 1985",  # a year is not a date
        "DOB unknown; the delivery on the next line\n2024-03-14",
        "reborn 1985-03-14",
    ],
)
def test_birth_date_negatives(text: str) -> None:
    assert values(text, DATE_OF_BIRTH) == []


def test_ambiguous_numeric_dates_accept_either_reading() -> None:
    assert find_past_date("03/04/1985", 0, 10) is not None
    assert find_past_date("31/12/1985", 0, 10) is not None
    assert find_past_date("12/31/1985", 0, 10) is not None


# --------------------------------------------------------------------- passport, national id


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("passport no. X1234567", PASSPORT, "X1234567"),
        ("Passport number: 533380006.", PASSPORT, "533380006"),
        ("passport #AB1234567", PASSPORT, "AB1234567"),
        ("Reisepass-Nr. C01X00T47", PASSPORT, "C01X00T47"),
        ("ID card number: T22000129", NATIONAL_ID, "T22000129"),
        ("driver's license D1234-5678-9012 expired", NATIONAL_ID, "D1234-5678-9012"),
        ("DL# D1234567", NATIONAL_ID, "D1234567"),
        ("NI number QQ 12 34 56 C", NATIONAL_ID, "QQ 12 34 56 C"),
        ("Aadhaar 2345 6789 0123 and", NATIONAL_ID, "2345 6789 0123"),
        ("Personalausweis L01X00T47", NATIONAL_ID, "L01X00T47"),
        ("DNI 12345678Z", NATIONAL_ID, "12345678Z"),
        ("national id: 123-456-789", NATIONAL_ID, "123-456-789"),
    ],
)
def test_document_number_positives(text: str, kind: str, expected: str) -> None:
    assert_finds(kind, text, expected)


@pytest.mark.parametrize(
    "text",
    [
        "X1234567 without any word",
        "passport expires 2030",
        "passport number: pending",
        "ID card is Blue12345",  # mixed case prose
        "the dni of 12",
        "user id 12345678",  # "id" alone is not an identity document
        "passport photo booth",
    ],
)
def test_document_number_negatives(text: str) -> None:
    assert values(text, PASSPORT) == values(text, NATIONAL_ID) == []


# ----------------------------------------------------------------------------------- secret


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7d",
        "sk-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9fG1hJ3",
        "sk-ant-api03-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9fG1hJ3kL5m",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "github_pat_11ABCDEFG0123456789abc_0123456789abcdefghijABCDEFGHIJ0123456789abcdefghij0",
        "AKIAIOSFODNN7EXAMPLE",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "glpat-Ab3dE5fG7hJ9kL1mN3pQ",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
)
def test_prefixed_secrets(secret: str) -> None:
    assert_finds(SECRET, f"here: {secret} (oops)", secret)


def test_pem_private_key_block() -> None:
    block = (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nq2VfZ0==\n-----END RSA PRIVATE KEY-----"
    )
    assert_finds(SECRET, f"key:\n{block}\nthanks", block)


def test_truncated_pem_block_covers_its_base64_lines() -> None:
    text = "-----BEGIN PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nq2VfZ0AB\n\nrest of the message"
    assert_finds(SECRET, text, text[: text.index("\n\n")])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password: hunter2!", "hunter2!"),
        ("Password = S3cure#Pass", "S3cure#Pass"),
        ("DB_PASSWORD=Tr0ub4dor&3", "Tr0ub4dor&3"),
        ("my password is hunter2.", "hunter2"),
        ('{"password": "correct horse"}', "correct horse"),
        ("dbPassword: 'Winter2024!'", "Winter2024!"),
        ("mysql --password Sup3r-Secret!", "Sup3r-Secret!"),
        ("Passwort: Geheim123!", "Geheim123!"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None),
        ("api_key: 3f2a9c1e5b7d4a6c8e0f1a2b3c4d5e6f", None),
        ("Authorization: Bearer AbCdEf0123456789GhIjKl4567", None),
        ("clientSecret=Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2", None),
        ("api key: 550e8400-e29b-41d4-a716-446655440000", None),  # a UUID given as a key
        ("postgres://report:s3cr3t-Pa55@db:5432/metrics", "s3cr3t-Pa55"),
    ],
)
def test_secrets_in_context(text: str, expected: str | None) -> None:
    value = expected or text.split()[-1].split("=")[-1]
    assert_finds(SECRET, text, value)


@pytest.mark.parametrize(
    "text",
    [
        "token: see the vault",
        "password: ********",
        "password: <redacted>",
        "the password is wrong",
        "password reset link expired",
        "api_key = os.environ['API_KEY']",
        "password=${DB_PASSWORD}",
        "password = config.password",
        "password_min_length = 12",
        "max_tokens: 512",
        "the token expires in 3600 seconds",
        "sha256 of the file is e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
        "request 550e8400-e29b-41d4-a716-446655440000",
        "secret: true",
        "pip install scikit-learn",
        "the task-force met",
        "<div class='sk-loading-spinner-wrapper-outer'>",
        "token: 3600",
    ],
)
def test_secret_negatives(text: str) -> None:
    assert values(text, SECRET) == []


# ---------------------------------------------------------------------------------- address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ship to 123 Main Street.", "123 Main Street"),
        ("at 123 Main St., Apt 4B", "123 Main St., Apt 4B"),
        (
            "home: 123 Main Street, Apt 4B, Springfield, IL 62704 (rear)",
            "123 Main Street, Apt 4B, Springfield, IL 62704",
        ),
        ("1600 Pennsylvania Avenue NW, Washington, DC 20500", None),
        ("221B Baker Street, London NW1 6XE", None),
        ("42 5th Ave Suite 200", None),
        ("5 Martin Luther King Jr. Boulevard", None),
        ("Hauptstraße 12", None),
        ("Berliner Str. 5a, 10115 Berlin", None),
        ("12 rue de la Paix, 75002 Paris", None),
        ("5 bis avenue Victor Hugo", None),
    ],
)
def test_address_positives(text: str, expected: str | None) -> None:
    assert_finds(STREET_ADDRESS, text, expected or text)


@pytest.mark.parametrize(
    "text",
    [
        "We have 3 Main points",
        "Chapter 12 Road Map",
        "walk 5 miles down the road",
        "In 2020 Main Street shops closed",
        "Spring 2024 release",
        "Route 66 Diner",
        "Section 4 Court Order",
    ],
)
def test_address_negatives(text: str) -> None:
    assert values(text, STREET_ADDRESS) == []


# --------------------------------------------------------------------------------- analyzer


def finding(kind: str, start: int, end: int, score: float) -> Finding:
    return Finding(kind, start, end, score, "test")


def test_overlaps_resolve_by_score_then_length() -> None:
    card = finding(CREDIT_CARD, 5, 24, 0.95)
    iban = finding(IBAN, 0, 27, 0.99)
    phone = finding(PHONE, 30, 40, 0.85)
    short = finding(SECRET, 30, 35, 0.85)
    later = finding(EMAIL, 50, 60, 0.5)
    assert resolve_overlaps([card, later, short, phone, iban]) == [iban, phone, later]


def test_findings_are_sorted_by_start_and_disjoint() -> None:
    text = "a@example.com, +44 20 7946 0958, 10.0.0.1, DE89 3704 0044 0532 0130 00"
    findings = default_analyzer().analyze(text)
    assert [f.type for f in findings] == [EMAIL, PHONE, IP_ADDRESS, IBAN]
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))


def test_types_and_min_score_filter() -> None:
    text = "SSN 536-90-4399 and mail a@example.com, value 536 90 4399"
    analyzer = default_analyzer()
    assert [f.type for f in analyzer.analyze(text, types=[EMAIL])] == [EMAIL]
    assert [f.type for f in analyzer.analyze(text, types=[US_SSN])] == [US_SSN, US_SSN]
    assert [f.value(text) for f in analyzer.analyze(text, [US_SSN], min_score=0.9)] == [
        "536-90-4399"
    ]
    assert analyzer.analyze(text, types=[]) == []


def test_extra_recognizers_plug_in() -> None:
    class Shouting:
        name = "shouting"
        types = ("SHOUT",)

        def find(self, text: str) -> list[Finding]:
            return [
                finding("SHOUT", i, i + 4, 1.0)
                for i in range(len(text))
                if text[i : i + 4] == "HEY!"
            ]

    analyzer = Analyzer([*default_recognizers(), Shouting()])
    assert "SHOUT" in analyzer.types
    assert [f.type for f in analyzer.analyze("HEY! a@example.com")] == ["SHOUT", EMAIL]


def test_default_analyzer_is_built_once() -> None:
    assert default_analyzer() is default_analyzer()


# ------------------------------------------------------------------------------ performance

ADVERSARIAL = {
    "at signs": "a@" * 16384,
    "dotted local part": "a." * 16383 + "@b",
    "digits": "7" * 32768,
    "spaced digits": "1 " * 16384,
    "dashed digits": "12-" * 10922,
    "dots and digits": "1." * 16384,
    "colons": "a:" * 16384,
    "hex colons": "ab:" * 10922,
    "upper case": "DE89" * 8192,
    "words": "Main Street " * 2730,
    "numbered words": "12 Main " * 4096,
    "keywords": "password: token= " * 1927,
    "pem": "-----BEGIN PRIVATE KEY-----" * 1213,
    "birth": "born " * 6553,
    "passport": "passport no. " * 2520,
    "mixed": "x" * 20000 + "@" + "y." * 6000,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_32kb_inputs_give_sane_findings(name: str) -> None:
    """Inputs shaped to make a regex backtrack; their speed is measured by
    scripts/bench_policy.py (its adversarial table), not asserted here."""
    text = ADVERSARIAL[name]
    findings = default_analyzer().analyze(text)
    assert all(0 <= f.start < f.end <= len(text) for f in findings), name
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings)), name


# A mix of the characters and words the recognizers key on, to reach their corner cases.
_CHARACTERS = ["+", "(", ")", "-", ".", ":", "@", "0", "1", "9", " ", "\n", "\u00b2", "\u0663"]
_WORDS = ["\u0130", "a", "Z", "born ", "DOB ", "passport no. ", "password: ", "::", "ff", "sk-"]
_WORDS += ["DE89", "12 Main St", "rue ", "-----BEGIN PRIVATE KEY-----", "eyJ", "x@y.com", "SSN "]
_PIECES = st.sampled_from([*_CHARACTERS, *_WORDS])


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=60).map("".join)))
def test_any_text_gives_disjoint_findings_inside_it(text: str) -> None:
    findings = default_analyzer().analyze(text)
    assert all(0 <= f.start < f.end <= len(text) and 0 < f.score <= 1 for f in findings)
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))
