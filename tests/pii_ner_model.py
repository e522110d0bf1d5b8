"""A tiny real ONNX token-classification model and its tokenizer, for the NER slot's tests.

The model is a Gather over a fixed logits table, one row per token id: known first names
get B-PER, surnames I-PER, company names B-ORG and "Corp"/"GmbH" I-ORG; every other token
(and [UNK]) is O. The WordPiece variant splits "Zelda" into "Zel" + "##da" and labels only
the first piece, as real models are trained to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from tests.onnx_models import _ids_input, _serialize

LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC")
TAGS = {
    "Alice": "B-PER",
    "Bob": "B-PER",
    "Zel": "B-PER",
    "Smith": "I-PER",
    "Jones": "I-PER",
    "Acme": "B-ORG",
    "Globex": "B-ORG",
    "Corp": "I-ORG",
    "GmbH": "I-ORG",
    "Berlin": "B-LOC",
}
WORDS = ["works", "at", "and", "met", "in", "the", "office", "of", "called", ".", ","]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
VOCAB = [*SPECIALS, *TAGS, *WORDS, "##da", "Zelda_unused"]


def _logits_table(confidence: float = 6.0) -> np.ndarray:
    table = np.zeros((len(VOCAB), len(LABELS)), dtype=np.float32)
    for index, token in enumerate(VOCAB):
        table[index, LABELS.index(TAGS.get(token, "O"))] = confidence
    return table


def model_bytes(inputs: tuple[str, ...] = ("input_ids", "attention_mask")) -> bytes:
    """input_ids -> Gather -> `logits` [batch, seq, labels]; other inputs are declared only."""
    table = numpy_helper.from_array(_logits_table(), "table")
    gather = helper.make_node("Gather", ["table", "input_ids"], ["logits"], axis=0)
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", len(LABELS)])
    graph = helper.make_graph(
        [gather], "ner", [_ids_input(name) for name in inputs], [out], [table]
    )
    return _serialize(graph)


def tokenizer_json(kind: str = "wordlevel", specials: bool = False) -> str:
    """A WordLevel (or WordPiece) tokenizer over VOCAB, splitting on blanks and punctuation."""
    vocab = {token: index for index, token in enumerate(VOCAB)}
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
        tokenizer.decoder = decoders.WordPiece()
    else:
        tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if specials:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    return tokenizer.to_str()


def write_ner_model(
    folder: Path,
    *,
    kind: str = "wordlevel",
    specials: bool = False,
    inputs: tuple[str, ...] = ("input_ids", "attention_mask"),
) -> tuple[Path, Path]:
    """model.onnx and tokenizer.json in `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    tokenizer = folder / "tokenizer.json"
    model.write_bytes(model_bytes(inputs))
    tokenizer.write_text(tokenizer_json(kind, specials), encoding="utf-8")
    return model, tokenizer
