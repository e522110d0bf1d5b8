"""The one small interface every model runner implements: load, generate, embed, close.

A backend runs one model on one thread at a time; the model manager owns the threads and the
queues in front of them. Generation is an iterator of ``TokenEvent``: the caller stops it by
setting the request's ``cancel`` event (a client that went away) or by not asking for more.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SignedFile:
    """A payload file as the signed manifest of its bundle lists it (checked at every load)."""

    bundle: str  # "NAME VERSION", to name it in messages
    rel: str  # "payload/PATH": never an absolute path, which would tell a client the layout
    size: int  # bytes
    sha256: str  # hex


@dataclass(frozen=True)
class ModelSpec:
    """What the runtime needs to know to load one installed model bundle."""

    name: str  # the bundle name: what clients put in "model"
    version: str
    digest: str  # bundle digest: identifies the exact signed bytes
    root: Path  # bundles/NAME/VERSION
    format: Literal["gguf", "onnx"]
    role: Literal["chat", "completion", "embedding", "classifier"]
    context_length: int  # tokens
    weights: Path  # the model file inside payload/
    chat_template: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of the manifest's model
    # an active signed adapter bundle (LoRA GGUF) that names this model as its base
    adapter: Path | None = None
    adapter_scale: float = 1.0
    adapter_digest: str | None = None
    # Every payload file of the bundle (and of the adapter's), by absolute path, as the signed
    # manifest lists it: a backend checks each file it reads against this at every load.
    # None for a model not loaded from an installed bundle (a test or a tool on a loose file).
    files: Mapping[Path, SignedFile] | None = None

    @property
    def identity(self) -> tuple[str, str | None]:
        """What must match for a loaded model to be the one wanted: weights and adapter."""
        return self.digest, self.adapter_digest

    @property
    def payload(self) -> Path:
        return self.root / "payload"


@dataclass
class GenerationRequest:
    """One completion: the prompt is text (chat templates are applied before this)."""

    prompt: str
    max_tokens: int = 128  # tokens
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    # Log-probabilities cost ~0.6 ms a token over Gemma's 262k vocabulary (a pass over the
    # logits), so tokens get one only when the device asks (`logprobs`) or the cascade needs
    # the answer's confidence (`confidence`); otherwise they carry NaN.
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives to report per token (0: only the chosen one)
    confidence: bool = False  # the router needs every token's log-probability
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, with its log-probability under the model (before sampling)."""

    token_id: int  # -1 for a closing event that only releases held-back text
    text: str  # text released now (held back while it may still become a stop string)
    logprob: float  # NaN when it was not computed (see GenerationRequest.logprobs)
    top_logprobs: tuple[tuple[str, float], ...] = ()
    token: str = ""  # this token's own text, for logprobs


@dataclass(frozen=True)
class GenerationResult:
    """Summary once generation has ended."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class Generation(Protocol):
    """An in-progress generation: iterate for tokens, then read ``result``."""

    def __iter__(self) -> Iterator[TokenEvent]: ...

    @property
    def result(self) -> GenerationResult: ...


class Backend(Protocol):
    """A loaded (or loadable) model: every backend has every member, and refuses with a
    ``ModelError`` the work its kind of model does not do (no probing for capabilities)."""

    spec: ModelSpec

    @property
    def concurrency(self) -> int:
        """How many generations the model manager may run on it at once (its slots)."""

    @property
    def reused_tokens(self) -> int:
        """Prompt tokens not evaluated again thanks to a cached prefix (0 where none is kept)."""

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        """The prompt a chat model reads for `messages` (its chat template applied)."""

    def classify(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Label probabilities for each text; classifier models only."""

    def load(self) -> None:
        """Load the weights; raise ``ModelLoadError`` with a clear message on failure."""

    def count_tokens(self, text: str) -> int:
        """Tokens the model's tokenizer makes of `text` (for limits and usage)."""

    def generate(self, request: GenerationRequest) -> Generation:
        """Start generating; chat/completion models only."""

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """Embeddings for each text and the number of input tokens; embedding models only."""

    def close(self) -> None:
        """Free the model's memory."""

    @property
    def device(self) -> str:
        """Where the model runs: "gpu" or "cpu"."""
