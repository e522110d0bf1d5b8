"""ONNX embedding and classifier models through ONNX Runtime, tokenized by ``tokenizers``.

The bundle ships the model file and a ``tokenizer.json`` (``model.tokenizer`` in the manifest
names another path). Inputs are ``input_ids`` plus, when the model asks for them,
``attention_mask`` and ``token_type_ids``. The output is either already pooled
(``[batch, dim]``) or per token (``[batch, seq, dim]``), which is mean-pooled over the
attention mask (``model.pooling = "cls"`` takes the first token instead). Vectors come back
L2-normalised; a text that makes no tokens at all gets the zero vector. CUDA is asked for
only when a GPU is really there, so a CPU-only box logs no CUDA error. A model without an
``attention_mask`` input is given one text at a time, so it never sees padding. The model
and the tokenizer are read once, checked against the signed manifest, and loaded from those
bytes (see signed_files); a model with its weights in an external-data file is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from appliance.errors import ModelError, ModelLoadError
from appliance.runtime.backend import Generation, GenerationRequest, ModelSpec
from appliance.runtime.gpu import gpu_present
from appliance.runtime.signed_files import VerifiedFiles

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
BATCH_SIZE = 32  # texts per session run
ROLES = ("embedding", "classifier")
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
POOLED_OUTPUTS = ("sentence_embedding", "embeddings", "text_embeds")
TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
CLASSIFIER_OUTPUTS = ("logits",)
POOLINGS = ("mean", "cls")
_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>")


def choose_providers(available: Sequence[str], gpu_present: bool) -> list[str]:
    """CUDA first when ONNX Runtime has it *and* a GPU is present; the CPU always."""
    if gpu_present and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return probabilities


class OnnxBackend:
    concurrency = 1  # one run at a time on its worker thread
    reused_tokens = 0

    def __init__(self, spec: ModelSpec) -> None:
        if spec.format != "onnx":
            raise ModelLoadError(f"{spec.name}: the ONNX backend loads ONNX, not {spec.format}")
        self.spec = spec
        self._session: Any = None
        self._tokenizer: Any = None  # truncates to the context length
        self._counter: Any = None  # the same tokenizer, without truncation
        self._inputs: dict[str, Any] = {}  # input name -> numpy dtype
        self._output = ""
        self._pad_id = 0
        self._pooling = str(spec.extra.get("pooling", "mean"))

    @property
    def _label(self) -> str:
        return f"{self.spec.name} {self.spec.version}"

    @property
    def device(self) -> str:
        if self._session is not None and CUDA in self._session.get_providers():
            return "gpu"
        return "cpu"

    @property
    def providers(self) -> list[str]:
        """The providers the loaded session really uses (empty before load)."""
        return [] if self._session is None else list(self._session.get_providers())

    def load(self) -> None:
        if self.spec.role not in ROLES:
            raise ModelLoadError(
                f"{self._label}: the ONNX backend serves {' and '.join(ROLES)} models, "
                f"not {self.spec.role}"
            )
        if self._pooling not in POOLINGS:
            raise ModelLoadError(
                f"{self._label}: model.pooling '{self._pooling}' is not one of {POOLINGS}"
            )
        with VerifiedFiles(self.spec) as files:  # each file read once, checked, then used
            tokenizer, counter = self._load_tokenizers(files)
            session = self._load_session(files)
        self._inputs = self._check_inputs(session)
        self._output = self._pick_output(session)
        self._pad_id = self._find_pad_id(tokenizer)
        self._tokenizer = tokenizer
        self._counter = counter
        self._session = session

    def _load_tokenizers(self, files: VerifiedFiles) -> tuple[Any, Any]:
        """The tokenizer (truncating to the context length) and a counter (not truncating),
        from the checked bytes of the bundle's tokenizer file."""
        tokenizer_rel = str(self.spec.extra.get("tokenizer", "tokenizer.json"))
        try:
            from tokenizers import Tokenizer

            data = files.read(self.spec.payload / tokenizer_rel)
            tokenizer = Tokenizer.from_buffer(data)
            counter = Tokenizer.from_buffer(data)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(
                f"{self._label}: cannot load tokenizer {tokenizer_rel}: {_one_line(e)}"
            ) from e
        tokenizer.no_padding()  # batches are padded here, with a mask
        tokenizer.enable_truncation(max_length=self.spec.context_length)
        counter.no_padding()
        counter.no_truncation()
        return tokenizer, counter

    def _load_session(self, files: VerifiedFiles) -> Any:
        """An ONNX Runtime session of the checked bytes of the model file."""
        try:
            import onnxruntime as ort

            data = files.read(self.spec.weights)
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: no warnings about unused initializers
            providers = choose_providers(ort.get_available_providers(), gpu_present())
            return ort.InferenceSession(data, sess_options=options, providers=providers)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(
                f"{self._label}: cannot load ONNX model {self.spec.weights.name}: {_one_line(e)}"
            ) from e

    def _check_inputs(self, session: Any) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        for arg in session.get_inputs():
            if arg.name not in KNOWN_INPUTS:
                raise ModelLoadError(
                    f"{self._label}: unsupported model input '{arg.name}' "
                    f"(this backend feeds {', '.join(KNOWN_INPUTS)})"
                )
            if arg.type not in _DTYPES:
                raise ModelLoadError(
                    f"{self._label}: model input '{arg.name}' is {arg.type}; int64 or int32 "
                    "is expected"
                )
            inputs[arg.name] = _DTYPES[arg.type]
        if "input_ids" not in inputs:
            raise ModelLoadError(f"{self._label}: the model has no 'input_ids' input")
        return inputs

    def _pick_output(self, session: Any) -> str:
        names = [o.name for o in session.get_outputs()]
        wanted = self.spec.extra.get("output")
        if wanted is not None:
            if wanted not in names:
                raise ModelLoadError(
                    f"{self._label}: model.output '{wanted}' is not an output of the model "
                    f"({', '.join(names)})"
                )
            return str(wanted)
        preferred = (
            CLASSIFIER_OUTPUTS if self.spec.role == "classifier" else POOLED_OUTPUTS + TOKEN_OUTPUTS
        )
        return next((n for n in preferred if n in names), names[0])

    @staticmethod
    def _find_pad_id(tokenizer: Any) -> int:
        padding = tokenizer.padding
        if padding and padding.get("pad_id") is not None:
            return int(padding["pad_id"])
        for token in _PAD_TOKENS:
            found = tokenizer.token_to_id(token)
            if found is not None:
                return int(found)
        return 0

    def _loaded(self) -> tuple[Any, Any]:
        if self._session is None or self._tokenizer is None:
            raise ModelError(f"{self._label} is not loaded")
        return self._session, self._tokenizer

    def close(self) -> None:
        self._session = None
        self._tokenizer = None
        self._counter = None

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` before truncation to the context length."""
        self._loaded()
        return len(self._counter.encode(text).ids)

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        raise ModelError(f"{self.spec.name} is a {self.spec.role} model; it takes no chat")

    def generate(self, request: GenerationRequest) -> Generation:
        if self.spec.role == "embedding":
            raise ModelError(f"{self.spec.name} is an embedding model; use /v1/embeddings")
        raise ModelError(f"{self.spec.name} is a {self.spec.role} model; it does not generate text")

    def _run(self, texts: Sequence[str]) -> tuple[list[np.ndarray], int]:
        """The model's output for each batch (pooled to [batch, dim]) and the input tokens."""
        session, tokenizer = self._loaded()
        outputs: list[np.ndarray] = []
        tokens = 0
        # A model that takes no mask would see the padding: give it one text at a time.
        size = BATCH_SIZE if "attention_mask" in self._inputs else 1
        for start in range(0, len(texts), size):
            encodings = tokenizer.encode_batch(list(texts[start : start + size]))
            length = max(1, max(len(e.ids) for e in encodings))
            ids = np.full((len(encodings), length), self._pad_id, dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for row, encoding in enumerate(encodings):
                n = len(encoding.ids)
                ids[row, :n] = encoding.ids
                mask[row, :n] = 1
                types[row, :n] = encoding.type_ids
                tokens += n
            arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            feed = {name: arrays[name].astype(dtype) for name, dtype in self._inputs.items()}
            try:
                (result,) = session.run([self._output], feed)
            except Exception as e:
                raise ModelError(f"{self._label}: inference failed: {_one_line(e)}") from e
            outputs.append(self._pool(np.asarray(result, dtype=np.float32), mask))
        return outputs, tokens

    def _pool(self, result: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if result.ndim == 2:
            return result
        if result.ndim != 3:
            raise ModelError(
                f"{self._label}: output '{self._output}' has shape {result.shape}; "
                "[batch, dim] or [batch, seq, dim] is expected"
            )
        if self._pooling == "cls":
            return result[:, 0, :]
        weights = mask[:, :, None].astype(np.float32)
        summed = (result * weights).sum(axis=1)
        pooled: np.ndarray = summed / np.maximum(weights.sum(axis=1), 1.0)
        return pooled

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        if self.spec.role != "embedding":
            raise ModelError(
                f"{self.spec.name} is a {self.spec.role} model, not an embedding model"
            )
        if not texts:
            return [], 0
        outputs, tokens = self._run(texts)
        vectors = np.nan_to_num(np.concatenate(outputs, axis=0), nan=0.0)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
        return vectors.astype(float).tolist(), tokens

    def classify(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Label probabilities (softmax over the logits) for each text; classifier models only."""
        if self.spec.role != "classifier":
            raise ModelError(f"{self.spec.name} is a {self.spec.role} model, not a classifier")
        if not texts:
            return []
        outputs, _ = self._run(texts)
        logits = np.concatenate(outputs, axis=0)
        labels = [str(x) for x in self.spec.extra.get("labels") or []]
        labels = labels or [f"LABEL_{i}" for i in range(logits.shape[1])]
        if len(labels) != logits.shape[1]:
            raise ModelError(
                f"{self._label}: the model gives {logits.shape[1]} logits but model.labels "
                f"names {len(labels)}"
            )
        probabilities = _softmax(logits.astype(np.float64))
        return [
            {label: float(p) for label, p in zip(labels, row, strict=True)} for row in probabilities
        ]
