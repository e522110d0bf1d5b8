"""Tiny real ONNX models and tokenizers, built in memory, as bundle source folders.

The embedding table is deterministic and its [PAD] row is not zero, so a backend that forgot
the attention mask would give padded texts other vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers

from tests.helpers import write_source

DIM = 16
CONTEXT_LENGTH = 64  # tokens
WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "a", "cat", "sat"),
    *("on", "mat", "hello", "world", "model", "bundle", "signed", "edge", "box", "air"),
    *("gap", "policy", "query", "answer", "local", "remote"),
]
VOCAB = ["[PAD]", "[UNK]", *WORDS, *(f"w{i}" for i in range(100 - 2 - len(WORDS)))]
LABELS = ("allow", "review", "refuse")
Variant = Literal["tokens", "pooled", "ids-only"]


def tokenizer_json() -> bytes:
    """A WordLevel tokenizer over VOCAB that splits on white space and punctuation."""
    tokenizer = Tokenizer(
        models.WordLevel(vocab={w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer.to_str().encode("utf-8")


def _table(columns: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((len(VOCAB), columns)).astype(np.float32)


def _serialize(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # old enough for any ONNX Runtime this project accepts
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ids_input(name: str = "input_ids") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])


def embedding_model(variant: Variant = "tokens") -> bytes:
    """input_ids -> Gather from the table.

    "tokens": inputs input_ids, attention_mask, token_type_ids (the last two unused, as the
    padding rows of a real model's output are garbage); output `last_hidden_state`
    [batch, seq, 16]. "ids-only": input_ids alone, and each position adds the sequence's mean,
    so padding would change every position. "pooled": masked mean pooling
    inside the graph, output `sentence_embedding` [batch, 16].
    """
    table = numpy_helper.from_array(_table(DIM, seed=7), "table")
    gather = helper.make_node("Gather", ["table", "input_ids"], ["hidden"], axis=0)
    if variant in ("tokens", "ids-only"):
        out = helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", DIM]
        )
        inputs = [_ids_input()]
        if variant == "tokens":
            gather.output[0] = "last_hidden_state"
            inputs += [_ids_input("attention_mask"), _ids_input("token_type_ids")]
            nodes = [gather]
        else:  # every position sees the whole sequence, as with attention: padding would show
            nodes = [
                gather,
                helper.make_node("ReduceMean", ["hidden"], ["context"], axes=[1], keepdims=1),
                helper.make_node("Add", ["hidden", "context"], ["last_hidden_state"]),
            ]
        graph = helper.make_graph(nodes, "embed_tokens", inputs, [out], [table])
        return _serialize(graph)
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")
    axis2 = numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2")
    nodes = [
        gather,
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["hidden", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["sentence_embedding"]),
    ]
    out = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", DIM])
    inputs = [_ids_input(), _ids_input("attention_mask")]
    graph = helper.make_graph(nodes, "embed_pooled", inputs, [out], [table, axes, axis2])
    return _serialize(graph)


def classifier_model() -> bytes:
    """input_ids -> Gather 3 logits per token -> mean over tokens: `logits` [batch, 3]."""
    table = numpy_helper.from_array(_table(len(LABELS), seed=11), "table")
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["per_token"], axis=0),
        helper.make_node("ReduceMean", ["per_token"], ["logits"], axes=[1], keepdims=0),
    ]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])
    graph = helper.make_graph(nodes, "classify", [_ids_input()], [out], [table])
    return _serialize(graph)


def _write(folder: Path, name: str, model_bytes: bytes, model: dict[str, Any]) -> Path:
    files = {"model.onnx": model_bytes, "tokenizer.json": tokenizer_json()}
    section = {
        "format": "onnx",
        "context_length": CONTEXT_LENGTH,
        "file": "model.onnx",
        "tokenizer": "tokenizer.json",
        **model,
    }
    return write_source(folder, name=name, kind="model", files=files, model=section)


def write_embedding_source(
    folder: Path, *, name: str = "mini-embed", variant: Variant = "tokens"
) -> Path:
    """A bundle source folder (bundle.toml, model.onnx, tokenizer.json) for pack/sign."""
    return _write(folder, name, embedding_model(variant), {"role": "embedding"})


def write_classifier_source(folder: Path, *, name: str = "mini-classify") -> Path:
    return _write(folder, name, classifier_model(), {"role": "classifier", "labels": list(LABELS)})
