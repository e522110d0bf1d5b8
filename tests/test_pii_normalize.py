"""The normalised view the recognizers read, and its map back to the original offsets."""

# ruff: noqa: RUF001  (look-alike characters are what these tests are about)

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.pii.normalize import _FOLDABLE, MESSAGE_BREAK, fold_chunk, normalize

ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
SPACES = ["\u00a0", "\u2009", "\u202f", "\u2007", "\u3000", "\u1680"]
DASHES = ["\u2010", "\u2011", "\u2012", "\u2212", "\ufe63", "\uff0d"]


def original(text: str, start: int, end: int) -> str:
    """The original characters behind view span [start, end)."""
    view = normalize(text)
    first, last = view.span(start, end)
    return text[first:last]


def test_plain_ascii_is_its_own_view() -> None:
    text = "Card 4111 1111 1111 1111, mail a@example.com\n\tdone.  Two spaces after prose."
    view = normalize(text)
    assert view.text == text
    assert view.same_offsets
    assert view.span(5, 24) == (5, 24)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("４１１１ １１１１", "4111 1111"),  # fullwidth digits and space
        ("jordan＠example．com", "jordan@example.com"),
        ("①②③", "123"),  # circled digits
        ("x²", "x2"),
        ("٣٤٥ ३४५", "345 345"),  # Arabic-Indic and Devanagari digits
        ("ﬁle", "file"),  # a ligature: one character reads as two
        ("⑩", "10"),
        ("u\u0308ber", "über"),  # a combining mark composes with its letter
        ("4\u20e31\u0332", "41"),  # keycap and underline marks on digits go
        ("line\u2028break\u2029para\x0bv\x85n", "line\nbreak\npara\nv\nn"),
        ("nul\x00bell\x07", "nulbell"),
        ("a\u202eb\u2066c", "abc"),  # bidi controls
        ("x\ufe0fy\u3164z", "xyz"),  # variation selector, Hangul filler
    ],
)
def test_everyday_spellings_fold_to_ascii_shapes(text: str, expected: str) -> None:
    assert normalize(text).text == expected


@pytest.mark.parametrize("char", ZERO_WIDTH)
def test_zero_width_characters_vanish_inside_values_and_words(char: str) -> None:
    assert normalize(f"pass{char}word: 41{char}11").text == "password: 4111"


@pytest.mark.parametrize("char", SPACES)
def test_unicode_spaces_read_as_a_space(char: str) -> None:
    assert normalize(f"4111{char}1111").text == "4111 1111"


@pytest.mark.parametrize("char", DASHES)
def test_hyphens_read_as_hyphen_minus_anywhere(char: str) -> None:
    assert normalize(f"536{char}90{char}4399 well{char}known").text == "536-90-4399 well-known"


def test_en_and_em_dashes_read_as_hyphens_only_between_digits() -> None:
    text = "call 415\u2013555\u20142671 \u2014 or write\u2014now, 2019\u20152024"
    assert normalize(text).text == "call 415-555-2671 \u2014 or write\u2014now, 2019-2024"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4111  1111   1111", "4111 1111 1111"),
        ("4111..1111__1111--1111", "4111.1111_1111-1111"),
        ("4111\u00a0 1111", "4111 1111"),  # a no-break space and a space: doubled
        ("4111 \u200b 1111", "4111 1111"),  # doubled once the zero-width space is gone
        ("end.  Next", "end.  Next"),  # not between digits: as typed
        ("a..b@example.com", "a..b@example.com"),
    ],
)
def test_a_doubled_separator_between_digits_reads_as_one(text: str, expected: str) -> None:
    assert normalize(text).text == expected


def test_case_is_kept() -> None:
    assert normalize("de89\u00a03704 ＡＢ").text == "de89 3704 AB"


def test_one_for_one_replacements_keep_the_offsets() -> None:
    view = normalize("card ４１１１\u00a0１１１１")
    assert view.text == "card 4111 1111"
    assert view.same_offsets


def test_a_span_covers_the_zero_width_characters_inside_it() -> None:
    text = "card 4111\u200b1111 1111 1111 ok"
    view = normalize(text)
    assert view.text == "card 41111111 1111 1111 ok"
    start = view.text.index("4")
    end = start + len("41111111 1111 1111")
    assert original(text, start, end) == "4111\u200b1111 1111 1111"


def test_a_span_covers_whole_original_characters_when_one_reads_as_two() -> None:
    text = "ﬁ ⑩ x"
    view = normalize(text)
    assert view.text == "fi 10 x"
    assert original(text, 0, 1) == "ﬁ"  # half of the ligature maps to all of it
    assert original(text, 1, 2) == "ﬁ"
    assert original(text, 3, 5) == "⑩"
    assert original(text, 4, 7) == "⑩ x"


def test_a_collapsed_separator_covers_its_whole_run() -> None:
    text = "4111 \u200b\u00a0 1111"
    view = normalize(text)
    assert view.text == "4111 1111"
    assert original(text, 4, 5) == " \u200b\u00a0 "
    assert original(text, 0, 9) == text


def test_a_composed_letter_maps_to_its_letter_and_mark() -> None:
    text = "mu\u0308ller@example.de"
    view = normalize(text)
    assert view.text == "müller@example.de"
    assert original(text, 1, 2) == "u\u0308"
    assert original(text, 0, len(view.text)) == text


def test_spans_outside_the_view_are_refused() -> None:
    view = normalize("a\u200bb")
    with pytest.raises(ValueError, match="no span"):
        view.span(1, 5)
    with pytest.raises(ValueError, match="no span"):
        view.span(1, 1)


def test_a_text_never_holds_the_message_break() -> None:
    assert MESSAGE_BREAK not in normalize(f"a{MESSAGE_BREAK}b\u2028c").text


def test_every_character_that_reads_differently_is_looked_at() -> None:
    """The character class built at import covers every BMP character `fold_chunk` changes
    (else a text made of it would skip normalisation and hide the value)."""
    missed = [
        f"U+{code:04X}"
        for code in range(0x80, 0x10000)
        if not 0xD800 <= code <= 0xDFFF
        and fold_chunk(chr(code)) != chr(code)
        and not _FOLDABLE.match(chr(code))
    ]
    assert missed == []


_ODD = ["ﬁ", "①", "⑩", "\u0308", "\u20e3", "\u2013", "４", "＠", "\u2028", "\x00", "\u0663"]
_PIECES = st.sampled_from(
    [*ZERO_WIDTH, *SPACES, *DASHES, *_ODD, "a", "4", " ", "  ", "..", "-", "\n", "é", "用", "👍"]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(_PIECES, max_size=40).map("".join)))
def test_every_view_character_maps_into_the_original_in_order(text: str) -> None:
    view = normalize(text)
    previous_start = 0
    for index in range(len(view.text)):
        start, end = view.span(index, index + 1)
        assert 0 <= start < end <= len(text)
        assert start >= previous_start
        previous_start = start


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_the_view_holds_no_format_character_and_no_message_break(text: str) -> None:
    view = normalize(text)
    assert MESSAGE_BREAK not in view.text
    assert not any(unicodedata.category(c) == "Cf" for c in view.text)
