"""Pseudonymization: placeholders in, originals back, nothing valid left behind."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum import iban as stdnum_iban
from stdnum import luhn, numdb

from appliance.pii import (
    CREDIT_CARD,
    EMAIL,
    PHONE,
    Finding,
    Redaction,
    default_analyzer,
    pseudonymize,
    rehydrate,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def finding(kind: str, start: int, end: int) -> Finding:
    return Finding(kind, start, end, 1.0, "test")


def redact(*texts: str) -> Redaction:
    analyzer = default_analyzer()
    return pseudonymize(texts, [analyzer.analyze(t) for t in texts])


# ------------------------------------------------------------------------------ behaviour


def test_same_value_same_placeholder_across_texts_numbered_per_type() -> None:
    result = redact(
        "mail a@example.com or b@example.com",
        "again a@example.com, call +44 20 7946 0958",
    )
    assert result.texts == [
        "mail <EMAIL_1> or <EMAIL_2>",
        "again <EMAIL_1>, call <PHONE_1>",
    ]
    assert result.mapping == {
        "<EMAIL_1>": "a@example.com",
        "<EMAIL_2>": "b@example.com",
        "<PHONE_1>": "+44 20 7946 0958",
    }
    assert result.types == [EMAIL, PHONE]


def test_values_are_compared_exactly() -> None:
    text = "4111 1111 1111 1111 vs 4111111111111111"
    result = redact(text)
    assert result.texts == ["<CREDIT_CARD_1> vs <CREDIT_CARD_2>"]
    assert rehydrate(result.texts[0], result.mapping) == text


def test_a_placeholder_the_user_wrote_is_not_confused_with_ours() -> None:
    text = "literal <EMAIL_1> and EMAIL_3 and <email_2>, real a@example.com"
    result = redact(text)
    assert result.texts == ["literal <EMAIL_1> and EMAIL_3 and <email_2>, real <EMAIL_4>"]
    assert rehydrate(result.texts[0], result.mapping) == text


def test_rehydrate_accepts_what_upstream_models_do_to_placeholders() -> None:
    mapping = {"<EMAIL_1>": "a@example.com", "<CREDIT_CARD_12>": "4111 1111 1111 1111"}
    answer = (
        "(<EMAIL_1>). <email_1>, EMAIL_1; < EMAIL_1 >! <EMAIL_1><EMAIL_1> "
        "credit_card_12 EMAIL_12 <EMAIL_2> <PHONE_1> xEMAIL_1"
    )
    assert rehydrate(answer, mapping) == (
        "(a@example.com). a@example.com, a@example.com; a@example.com! "
        "a@example.coma@example.com 4111 1111 1111 1111 EMAIL_12 <EMAIL_2> <PHONE_1> xEMAIL_1"
    )


def test_rehydrate_does_not_expand_an_original_that_looks_like_a_placeholder() -> None:
    mapping = {"<SECRET_1>": "<SECRET_2>", "<SECRET_2>": "hunter2"}
    assert rehydrate("<SECRET_1> <SECRET_2>", mapping) == "<SECRET_2> hunter2"


def test_rehydrate_without_mapping_is_identity() -> None:
    assert rehydrate("<EMAIL_1>", {}) == "<EMAIL_1>"


def test_overlapping_findings_keep_the_earlier_one() -> None:
    text = "0123456789"
    result = pseudonymize([text], [[finding("A", 2, 6), finding("B", 4, 8), finding("C", 8, 9)]])
    assert result.texts == ["01<A_1>67<C_1>9"]
    assert rehydrate(result.texts[0], result.mapping) == text


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="2 texts but 1"):
        pseudonymize(["a", "b"], [[]])
    with pytest.raises(ValueError, match="cannot name a placeholder"):
        pseudonymize(["abc"], [[finding("bad type", 0, 1)]])


def test_nothing_found_changes_nothing() -> None:
    result = redact("no pii here", "")
    assert result.texts == ["no pii here", ""]
    assert result.mapping == {}


def test_a_2kb_ticket_is_redacted_whole() -> None:
    """Every value of a 2 KB support ticket is replaced and comes back; the time this takes
    is measured by scripts/bench_policy.py (p50/p99), not asserted here."""
    values = [
        "ops.lead@example.com",
        "10.20.30.40",
        "3c:22:fb:9a:10:07",
        "+1 415 555 2671",
        "4111 1111 1111 1111",
        "DE89 3704 0044 0532 0130 00",
    ]
    prompt = (
        f"Ticket 4471 from {values[0]}: the edge box at {values[1]} (MAC {values[2]}) rebooted "
        f"after firmware 2.14.3. Call {values[3]}. Refund card {values[4]} to IBAN {values[5]}. "
    )
    prompt = (prompt + "Logs attached, nothing else to add. " * 40)[:2048]
    redaction = pseudonymize([prompt], [default_analyzer().analyze(prompt)])
    [redacted] = redaction.texts
    assert [v for v in values if v in redacted] == []
    assert sorted(redaction.mapping.values()) == sorted(values)
    assert rehydrate(redacted, redaction.mapping) == prompt


# ---------------------------------------------------------------------------- properties

WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.!?\n", max_size=40)
BOUNDARY = st.sampled_from([" ", "\n", ": ", " (", ", ", " '", "\t"])
AFTER = st.sampled_from(
    [" ", "\n", ")", ". ", ", ", "'", "!", "?"]
)  # a boundary: "123000a" is no number


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix, length = draw(
        st.sampled_from(
            [("4", 16), ("4", 13), ("51", 16), ("2221", 16), ("37", 15), ("6011", 16), ("3530", 16)]
        )
    )
    body = prefix + "".join(str(draw(st.integers(0, 9))) for _ in range(length - len(prefix) - 1))
    number = body + luhn.calc_check_digit(body)
    separator = draw(st.sampled_from(["", " ", "-"]))
    if length == 15:
        return separator.join([number[:4], number[4:10], number[10:]])
    return separator.join(number[i : i + 4] for i in range(0, length, 4))


_IBAN_DB = numdb.get("iban")
_BBAN_ALPHABET = {"n": "0123456789", "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
_BBAN_ALPHABET["c"] = _BBAN_ALPHABET["n"] + _BBAN_ALPHABET["a"]


@st.composite
def ibans(draw: st.DrawFn) -> str:
    import re

    country = draw(st.sampled_from(["DE", "GB", "NL", "AT", "CH", "PL", "IE", "DK"]))
    structure = _IBAN_DB.info(country)[0][1]["bban"]
    bban = "".join(
        "".join(draw(st.sampled_from(_BBAN_ALPHABET[kind])) for _ in range(int(n)))
        for n, kind in re.findall(r"([0-9]+)!([nac])", structure)
    )
    number = f"{country}{stdnum_iban.calc_check_digits(country + '00' + bban)}{bban}"
    if not stdnum_iban.is_valid(number):  # a national check digit of its own
        number = f"DE{stdnum_iban.calc_check_digits('DE00370400440532013000')}370400440532013000"
    return stdnum_iban.format(number) if draw(st.booleans()) else number


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.from_regex(r"[a-z0-9]{1,10}([._+-][a-z0-9]{1,8}){0,2}", fullmatch=True))
    labels = draw(
        st.lists(st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), min_size=1, max_size=3)
    )
    tld = draw(st.sampled_from(["com", "org", "de", "co.uk", "example", "io"]))
    return f"{local}@{'.'.join(labels)}.{tld}"


_PHONE_REGIONS = ["US", "GB", "DE", "FR", "IT", "NL", "CH", "AU", "JP", "BR", "IN", "SE"]


@st.composite
def phones(draw: st.DrawFn) -> str:
    region = draw(st.sampled_from(_PHONE_REGIONS))
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    national = str(example.national_number)
    tail = "".join(str(draw(st.integers(0, 9))) for _ in range(3))
    number = phonenumbers.parse(f"+{example.country_code}{national[:-3]}{tail}")
    if not phonenumbers.is_valid_number(number):
        number = example
    style = draw(
        st.sampled_from(
            [phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164]
        )
    )
    if region == "US" and draw(st.booleans()):
        style = phonenumbers.PhoneNumberFormat.NATIONAL
    return phonenumbers.format_number(number, style)


@st.composite
def embedded(draw: st.DrawFn) -> tuple[str, str]:
    """(text, value): a valid card, IBAN, e-mail or phone number inside random prose."""
    kind = draw(st.sampled_from([CREDIT_CARD, "IBAN", EMAIL, PHONE]))
    value = draw({CREDIT_CARD: cards(), "IBAN": ibans(), EMAIL: emails(), PHONE: phones()}[kind])
    lead = "tel " if kind == PHONE else ""
    text = draw(WORDS) + draw(BOUNDARY) + lead + value + draw(AFTER) + draw(WORDS)
    return text, value


@FAST
@given(embedded())
def test_no_valid_value_survives_redaction(case: tuple[str, str]) -> None:
    text, value = case
    result = redact(text)
    assert value not in result.texts[0]
    assert rehydrate(result.texts[0], result.mapping) == text


PLACEHOLDER_LIKE = st.sampled_from(
    ["<EMAIL_1>", "EMAIL_2", "<email_1>", "< PHONE_1 >", "<CREDIT_CARD_1>", "IBAN_7", "<X_1>"]
)
PII_BITS = st.sampled_from(
    ["a@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "10.0.0.1", "SSN 536-90-4399"]
)
PROSE = st.lists(st.one_of(st.text(max_size=12), PLACEHOLDER_LIKE, PII_BITS), max_size=8).map(
    " ".join
)


@FAST
@given(st.lists(PROSE, min_size=1, max_size=3))
def test_rehydrate_inverts_pseudonymize(texts: list[str]) -> None:
    result = redact(*texts)
    assert [rehydrate(t, result.mapping) for t in result.texts] == texts


@st.composite
def texts_with_findings(draw: st.DrawFn) -> tuple[list[str], list[list[Finding]]]:
    """Arbitrary texts with arbitrary (possibly overlapping) spans of a few types."""
    texts = draw(st.lists(st.one_of(st.text(max_size=30), PROSE), min_size=1, max_size=3))
    findings = []
    for text in texts:
        spans = draw(
            st.lists(st.tuples(st.integers(0, len(text)), st.integers(0, len(text))), max_size=4)
        )
        kinds = st.sampled_from([EMAIL, PHONE, CREDIT_CARD, "X"])
        findings.append([finding(draw(kinds), min(a, b), max(a, b)) for a, b in spans])
    return texts, findings


@FAST
@given(texts_with_findings())
def test_rehydrate_inverts_pseudonymize_for_any_spans(
    case: tuple[list[str], list[list[Finding]]],
) -> None:
    texts, findings = case
    result = pseudonymize(texts, findings)
    assert [rehydrate(t, result.mapping) for t in result.texts] == texts
    assert set(result.mapping.values()) <= {
        t[f.start : f.end] for t, group in zip(texts, findings, strict=True) for f in group
    }


# ------------------------------------------------------------ the original span, exactly


def test_redaction_replaces_the_original_span_with_its_invisible_characters() -> None:
    text = "card 4111\u200b1111 1111 1111"
    result = redact(text)
    assert result.texts == ["card <CREDIT_CARD_1>"]
    assert result.mapping == {"<CREDIT_CARD_1>": "4111\u200b1111 1111 1111"}
    assert rehydrate(result.texts[0], result.mapping) == text


FULLWIDTH = {code: code + 0xFEE0 for code in range(0x21, 0x7F)}  # "a" -> U+FF41 ...


def test_redaction_of_length_changing_spellings_gives_the_characters_back() -> None:
    email = "jordan@example.com".translate(FULLWIDTH)
    phone = "+44 20 7946 0958".translate(FULLWIDTH)
    text = f"Mail {email} or ju\u0308rgen@beispiel.de, tel {phone}."
    result = redact(text)
    assert result.texts == ["Mail <EMAIL_1> or <EMAIL_2>, tel <PHONE_1>."]
    assert rehydrate(result.texts[0], result.mapping) == text


INVISIBLE_CHARACTERS = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad")
INVISIBLE = st.sampled_from(INVISIBLE_CHARACTERS)
SPACE_LIKE = st.sampled_from([" ", "\u00a0", "\u2009", "\u202f", "\u3000", "  "])


@st.composite
def disguised_cards(draw: st.DrawFn) -> str:
    """A valid card number typed with Unicode spaces, and invisible characters inside."""
    number = draw(cards()).replace("-", " ")
    space = draw(SPACE_LIKE)
    characters = []
    for char in number:
        characters.append(space if char == " " else char)
        if draw(st.integers(0, 5)) == 0:
            characters.append(draw(INVISIBLE))
    return "".join(characters).rstrip("".join(INVISIBLE_CHARACTERS))  # inside, not after


@FAST
@given(disguised_cards())
def test_no_disguised_card_survives_redaction(value: str) -> None:
    text = f"please charge {value} today"
    result = redact(text)
    assert result.texts == ["please charge <CREDIT_CARD_1> today"]
    assert rehydrate(result.texts[0], result.mapping) == text
