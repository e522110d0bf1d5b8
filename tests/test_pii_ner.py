"""The NER slot: an ONNX token-classification model finds PERSON and ORGANIZATION."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ModelError, ModelLoadError
from appliance.pii import (
    EMAIL,
    ORGANIZATION,
    PERSON,
    Analyzer,
    OnnxEntityRecognizer,
    default_recognizers,
    pseudonymize,
    rehydrate,
)
from tests.pii_ner_model import LABELS, write_ner_model


def entities(recognizer: OnnxEntityRecognizer, text: str) -> list[tuple[str, str]]:
    return [(f.type, f.value(text)) for f in recognizer.find(text)]


@pytest.fixture
def ner(tmp_path: Path) -> OnnxEntityRecognizer:
    model, tokenizer = write_ner_model(tmp_path)
    return OnnxEntityRecognizer(model, tokenizer, LABELS, ["input_ids", "attention_mask"])


def test_bio_tags_become_person_and_organization_spans(ner: OnnxEntityRecognizer) -> None:
    text = "Alice Smith works at Acme Corp, and met Bob in Berlin."
    assert entities(ner, text) == [
        (PERSON, "Alice Smith"),
        (ORGANIZATION, "Acme Corp"),
        (PERSON, "Bob"),
    ]  # B-LOC is not mapped to a PII type
    assert ner.types == (PERSON, ORGANIZATION)
    assert all(0.9 < f.score <= 1.0 for f in ner.find(text))


def test_adjacent_entities_of_one_type_stay_apart(ner: OnnxEntityRecognizer) -> None:
    assert entities(ner, "Alice Bob Smith Globex GmbH Acme") == [
        (PERSON, "Alice"),
        (PERSON, "Bob Smith"),
        (ORGANIZATION, "Globex GmbH"),
        (ORGANIZATION, "Acme"),
    ]


def test_a_word_split_into_pieces_is_one_entity(tmp_path: Path) -> None:
    model, tokenizer = write_ner_model(tmp_path, kind="wordpiece")
    ner = OnnxEntityRecognizer(model, tokenizer, LABELS)
    assert entities(ner, "met Zelda at Acme") == [(PERSON, "Zelda"), (ORGANIZATION, "Acme")]


def test_special_tokens_are_skipped(tmp_path: Path) -> None:
    model, tokenizer = write_ner_model(tmp_path, specials=True)
    ner = OnnxEntityRecognizer(model, tokenizer, LABELS)
    assert entities(ner, "Alice") == [(PERSON, "Alice")]


def test_long_texts_run_in_windows(tmp_path: Path) -> None:
    model, tokenizer = write_ner_model(tmp_path)
    ner = OnnxEntityRecognizer(model, tokenizer, LABELS, max_tokens=4)
    text = "the office of Acme . " * 3 + "Bob"
    assert [kind for kind, _ in entities(ner, text)] == [ORGANIZATION] * 3 + [PERSON]


def test_empty_and_unknown_text(ner: OnnxEntityRecognizer) -> None:
    assert entities(ner, "") == []
    assert entities(ner, "   ") == []
    assert entities(ner, "nothing known here") == []


def test_plugs_into_the_analyzer_and_pseudonymize(ner: OnnxEntityRecognizer) -> None:
    analyzer = Analyzer([*default_recognizers(), ner])
    text = "Alice Smith (alice@example.com) works at Acme Corp."
    findings = analyzer.analyze(text)
    assert [f.type for f in findings] == [PERSON, EMAIL, ORGANIZATION]
    assert analyzer.analyze(text, types=[EMAIL])[0].type == EMAIL
    result = pseudonymize([text], [findings])
    assert result.texts == ["<PERSON_1> (<EMAIL_1>) works at <ORGANIZATION_1>."]
    assert rehydrate(result.texts[0], result.mapping) == text


def test_runs_on_the_cpu_only(ner: OnnxEntityRecognizer) -> None:
    assert ner._session.get_providers() == ["CPUExecutionProvider"]


def test_model_inputs_are_taken_from_the_model_when_not_named(tmp_path: Path) -> None:
    model, tokenizer = write_ner_model(tmp_path, inputs=("input_ids",))
    ner = OnnxEntityRecognizer(model, tokenizer, LABELS)
    assert entities(ner, "Bob") == [(PERSON, "Bob")]


def test_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    model, tokenizer = write_ner_model(tmp_path)
    with pytest.raises(ModelLoadError, match="maps to a PII type"):
        OnnxEntityRecognizer(model, tokenizer, ["O", "B-LOC", "I-LOC"])
    with pytest.raises(ModelLoadError, match="unsupported input"):
        OnnxEntityRecognizer(model, tokenizer, LABELS, ["input_ids", "pixel_values"])
    with pytest.raises(ModelLoadError, match="needs inputs"):
        OnnxEntityRecognizer(model, tokenizer, LABELS, ["input_ids"])
    with pytest.raises(ModelLoadError, match="tokenizer"):
        OnnxEntityRecognizer(model, tmp_path / "missing.json", LABELS)
    with pytest.raises(ModelLoadError, match="ONNX model"):
        OnnxEntityRecognizer(tmp_path / "missing.onnx", tokenizer, LABELS)
    with pytest.raises(ModelLoadError, match="no output"):
        OnnxEntityRecognizer(model, tokenizer, LABELS, output_name="scores")


def test_a_label_list_of_the_wrong_length_fails_at_inference(tmp_path: Path) -> None:
    model, tokenizer = write_ner_model(tmp_path)
    ner = OnnxEntityRecognizer(model, tokenizer, LABELS[:3])
    with pytest.raises(ModelError, match="output shape"):
        list(ner.find("Alice"))
