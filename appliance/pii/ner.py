"""A slot for a named-entity model (PERSON, ORGANIZATION): ONNX token classification.

Names cannot be found by rules, so they come from a model bundle when one is installed: an
ONNX token-classification model (``input_ids`` and, when the model asks for them,
``attention_mask`` and ``token_type_ids``; one output of logits ``[batch, tokens, labels]``)
and its ``tokenizer.json``. The labels are BIO tags (``B-PER``, ``I-PER``, ``O`` …; a tag
without prefix counts as inside); `type_map` maps the part after the prefix to a PII type,
and tags it does not map (``LOC``, ``MISC``) are ignored.

Spans come from the tokenizer's character offsets. An entity starts at a ``B-`` tag (or an
``I-`` tag of another type), grows over ``I-`` tags of its type and over the remaining
sub-word pieces of its last word (models are usually trained on the first piece only), and
its score is the mean probability of its tags. Long texts are run in windows of
`max_tokens`. The session runs on the CPU with one thread by default: the GPU and the other
core belong to the language model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np

from appliance.errors import ModelError, ModelLoadError
from appliance.pii.findings import ORGANIZATION, PERSON, Finding

CPU = "CPUExecutionProvider"
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_TYPE_MAP: Mapping[str, str] = {
    "PER": PERSON,
    "PERSON": PERSON,
    "ORG": ORGANIZATION,
    "ORGANIZATION": ORGANIZATION,
}
_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _split_tag(label: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER", ("I", "PER") for "PER", ("O", "") for "O"."""
    if label == "O" or not label:
        return "O", ""
    if len(label) > 2 and label[1] in "-_" and label[0] in "BIES":
        prefix = "B" if label[0] in "BS" else "I"
        return prefix, label[2:]
    return "I", label


class OnnxEntityRecognizer:
    """PERSON and ORGANIZATION (or whatever `type_map` names) from a token-classification model."""

    def __init__(
        self,
        model_path: str | PathLike[str],
        tokenizer_path: str | PathLike[str],
        labels: Sequence[str],
        input_names: Sequence[str] | None = None,
        *,
        output_name: str | None = None,
        type_map: Mapping[str, str] = DEFAULT_TYPE_MAP,
        max_tokens: int = 512,
        threads: int = 1,
        name: str = "ner",
    ) -> None:
        self.name = name
        self.labels = tuple(labels)
        self._tags = [_split_tag(label) for label in self.labels]
        self._kinds = [type_map.get(kind) for _, kind in self._tags]
        self.types: tuple[str, ...] = tuple(dict.fromkeys(k for k in self._kinds if k))
        if not self.types:
            raise ModelLoadError(f"{name}: none of the labels {list(labels)} maps to a PII type")
        self.max_tokens = max_tokens
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as e:
            raise ModelLoadError(f"{name}: cannot load the tokenizer: {_one_line(e)}") from e
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._session: Any = ort.InferenceSession(
                str(model_path), sess_options=options, providers=[CPU]
            )
        except Exception as e:
            raise ModelLoadError(f"{name}: cannot load the ONNX model: {_one_line(e)}") from e
        self._inputs = self._check_inputs(input_names)
        outputs = [o.name for o in self._session.get_outputs()]
        if output_name is not None and output_name not in outputs:
            raise ModelLoadError(f"{name}: the model has no output '{output_name}'")
        self._output = output_name or outputs[0]

    def _check_inputs(self, input_names: Sequence[str] | None) -> dict[str, Any]:
        model_inputs = {arg.name: arg.type for arg in self._session.get_inputs()}
        names = list(model_inputs) if input_names is None else list(input_names)
        inputs: dict[str, Any] = {}
        for input_name in names:
            if input_name not in KNOWN_INPUTS:
                raise ModelLoadError(
                    f"{self.name}: unsupported input '{input_name}' (one of {KNOWN_INPUTS})"
                )
            if input_name not in model_inputs:
                raise ModelLoadError(f"{self.name}: the model has no input '{input_name}'")
            dtype = _DTYPES.get(model_inputs[input_name])
            if dtype is None:
                raise ModelLoadError(
                    f"{self.name}: input '{input_name}' is {model_inputs[input_name]}, "
                    "not int64 or int32"
                )
            inputs[input_name] = dtype
        missing = set(model_inputs) - set(inputs)
        if missing or "input_ids" not in inputs:
            raise ModelLoadError(
                f"{self.name}: the model needs inputs {sorted(model_inputs)}, given {names}"
            )
        return inputs

    def _probabilities(self, ids: Sequence[int], type_ids: Sequence[int]) -> np.ndarray:
        """Label probabilities [tokens, labels] for one window of token ids."""
        arrays = {
            "input_ids": np.asarray([ids]),
            "attention_mask": np.ones((1, len(ids))),
            "token_type_ids": np.asarray([type_ids]),
        }
        feed = {name: arrays[name].astype(dtype) for name, dtype in self._inputs.items()}
        try:
            (logits,) = self._session.run([self._output], feed)
        except Exception as e:
            raise ModelError(f"{self.name}: inference failed: {_one_line(e)}") from e
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 3 or logits.shape[1] != len(ids) or logits.shape[2] != len(self.labels):
            raise ModelError(
                f"{self.name}: output shape {logits.shape}; [1, {len(ids)}, {len(self.labels)}]"
                " was expected"
            )
        row = logits[0] - logits[0].max(axis=-1, keepdims=True)
        exp = np.exp(row)
        probabilities: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
        return probabilities

    def find(self, text: str) -> Iterator[Finding]:
        if not text.strip():
            return
        encoding = self._tokenizer.encode(text)
        n = len(encoding.ids)
        special = encoding.special_tokens_mask or [0] * n
        words = encoding.word_ids
        for start in range(0, n, self.max_tokens):
            stop = min(n, start + self.max_tokens)
            probabilities = self._probabilities(
                encoding.ids[start:stop], encoding.type_ids[start:stop]
            )
            tokens = [
                (encoding.offsets[i], words[i], probabilities[i - start])
                for i in range(start, stop)
            ]
            yield from self._entities(tokens, [bool(special[i]) for i in range(start, stop)])

    def _entities(
        self,
        tokens: list[tuple[tuple[int, int], int | None, np.ndarray]],
        special: list[bool],
    ) -> Iterator[Finding]:
        current: list[Any] | None = None  # [type, start, end, word, probabilities]
        for (offsets, word, probabilities), is_special in zip(tokens, special, strict=True):
            if is_special or offsets[1] <= offsets[0]:
                continue
            label = int(probabilities.argmax())
            prefix, _ = self._tags[label]
            kind = self._kinds[label]
            continues_word = current is not None and word is not None and word == current[3]
            if kind is not None and (prefix == "I" and current and current[0] == kind):
                current[2], current[3] = offsets[1], word
                current[4].append(float(probabilities[label]))
                continue
            if continues_word and current is not None and prefix != "B":
                current[2] = offsets[1]  # the rest of the entity's last word
                continue
            if current is not None:
                yield self._finding(current)
                current = None
            if kind is not None:
                current = [kind, offsets[0], offsets[1], word, [float(probabilities[label])]]
        if current is not None:
            yield self._finding(current)

    def _finding(self, entity: list[Any]) -> Finding:
        kind, start, end, _, scores = entity
        score = min(1.0, max(1e-6, sum(scores) / len(scores)))
        return Finding(kind, start, end, score, self.name)
