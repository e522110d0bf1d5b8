"""PII split across the messages of one request: found in the joined view, redacted in each."""

from __future__ import annotations

import pytest

from appliance.pii import CREDIT_CARD, US_SSN, default_analyzer, pseudonymize, rehydrate
from appliance.pii.conversation import JoinedView
from appliance.pii.findings import Finding
from appliance.pii.normalize import MESSAGE_BREAK, normalize


def found(*texts: str) -> list[list[tuple[str, str]]]:
    """(type, value) per message, as `analyze_all` reports them."""
    per_text = default_analyzer().analyze_all(list(texts))
    return [[(f.type, f.value(t)) for f in group] for t, group in zip(texts, per_text, strict=True)]


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["My card: 4111 1111", "1111 1111"], ["4111 1111", "1111 1111"]),
        (["card 4111 1111 ", " 1111 1111 thanks"], ["4111 1111", "1111 1111"]),
        (["4111 1111 1111\n", "1111"], ["4111 1111 1111", "1111"]),
        (["4111", "1111", "1111", "1111"], ["4111", "1111", "1111", "1111"]),
        (["41111111", "11111111"], ["41111111", "11111111"]),
        (["pay with 4111\u200b1111", "1111\u00a01111."], ["4111\u200b1111", "1111\u00a01111"]),
    ],
)
def test_a_card_split_across_messages_is_found_in_each(
    texts: list[str], expected: list[str]
) -> None:
    assert found(*texts) == [[(CREDIT_CARD, value)] for value in expected]


@pytest.mark.parametrize(
    "texts",
    [
        ["My card: 4111 1111", "Go on.", "1111 1111"],
        ["You are a helpful agent.", "My card: 4111 1111", "Sure, the rest?", "1111 1111"],
        ["4111 1111", "and?", "1111", "ok", "1111"],
    ],
)
def test_a_card_split_around_a_reply_is_found_in_the_speakers_messages(
    texts: list[str],
) -> None:
    expected = [[] if "1111" not in t else [(CREDIT_CARD, t.split(": ")[-1])] for t in texts]
    assert found(*texts) == expected


def test_across_a_reply_only_values_that_run_on_count() -> None:
    """Every other message is read joined by the card recognizer only, and only a number
    that runs on across the break counts: no context from two messages back."""
    assert found("Ticket 4111 1111", "Go on.", "Room 1111 1111") == [[], [], []]
    reply = "Which of your accounts do you mean, the new one?"  # the card word is far
    assert found("My card?", reply, "Ref 1234 5678 9012 3452") == [[], [], []]


def test_each_message_alone_holds_no_card() -> None:
    assert default_analyzer().analyze("My card: 4111 1111") == []
    assert default_analyzer().analyze("1111 1111") == []


def test_a_context_word_in_the_message_before_counts() -> None:
    assert found("What is your card number?", "1234 5678 9012 3452") == [
        [],
        [(CREDIT_CARD, "1234 5678 9012 3452")],
    ]
    assert found("And your SSN?", "536904399") == [[], [(US_SSN, "536904399")]]


@pytest.mark.parametrize(
    "texts",
    [
        ["Part numbers:\n4111\n1111\n1111\n1111", "Quantities: 2, 3, 1, 5"],
        ["Order 4111 1111", "1111 1112"],  # joined, the Luhn check fails
        ["Tracking: 4111 1111", "Reply: 1111-1111"],  # two kinds of separator
        ["Ticket 4111", "Room 1111 1111 1111"],  # a word between the numbers
    ],
)
def test_conversation_near_misses(texts: list[str]) -> None:
    assert found(*texts) == [[] for _ in texts]


def test_newlines_inside_one_message_never_join_card_groups() -> None:
    """A list of part numbers, one per line, is no card, even when its digits would be one."""
    text = "Replace these parts:\n4111\n1111\n1111\n1111\nthanks"
    assert default_analyzer().analyze(text) == []
    assert found(text, "and 4111 as well") == [[], []]


def test_redaction_replaces_every_piece_and_rehydrates_exactly() -> None:
    texts = ["My card: 4111 1111", "1111 1111", "thanks"]
    result = pseudonymize(texts, default_analyzer().analyze_all(texts))
    assert result.texts == ["My card: <CREDIT_CARD_1>", "<CREDIT_CARD_2>", "thanks"]
    assert [rehydrate(t, result.mapping) for t in result.texts] == texts


def test_a_single_text_reads_as_analyze_does() -> None:
    text = "a@example.com and 4111 1111 1111 1111"
    assert default_analyzer().analyze_all([text]) == [default_analyzer().analyze(text)]
    assert default_analyzer().analyze_all([]) == []


def test_joined_view_pieces_map_to_each_message_and_skip_blanks() -> None:
    views = [normalize("ab \u200b"), normalize(""), normalize("  cd")]
    joined = JoinedView.of(views)
    assert joined.text == f"ab {MESSAGE_BREAK}{MESSAGE_BREAK}  cd"
    finding = Finding("X", 0, len(joined.text), 1.0, "test")
    pieces = [(index, piece.start, piece.end) for index, piece in joined.pieces(finding)]
    assert pieces == [(0, 0, 2), (2, 2, 4)]
