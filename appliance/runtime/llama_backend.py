"""GGUF chat/completion models through llama-cpp-python.

Per-token log-probabilities come from each step's logits, read in place from llama.cpp's
buffer (``llama_get_logits_ith``), so ``logits_all`` stays off: with Gemma's 262k vocabulary
that would keep n_ctx x vocab floats (about 2 GB at n_ctx 2048).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from appliance import logs
from appliance.errors import ModelError, ModelLoadError
from appliance.runtime import logits, templates
from appliance.runtime.adapters import check_adapter
from appliance.runtime.backend import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    TokenEvent,
)
from appliance.runtime.gpu import gpu_present
from appliance.runtime.signed_files import VerifiedFiles
from appliance.runtime.textstream import TextStream


def default_threads() -> int:
    """One thread per physical core (llama-cpp-python's own default is half of them)."""
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


class LlamaText:
    """What both GGUF backends do alike with a loaded llama_cpp.Llama: its tokenizer and
    chat template, and the refusals of work a generation model does not do."""

    spec: ModelSpec
    _template: str
    concurrency = 1  # one generation at a time (the batched backend has its slots)
    reused_tokens = 0  # no prefix kept between requests (see _start_from_empty_memory)

    def _require(self) -> Any:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        return self._require().tokenize(text.encode("utf-8"), add_bos=True, special=True)  # type: ignore[no-any-return]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        self._require()
        return templates.render(self._template, messages)

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        raise ModelError(f"{self.spec.name} is a {self.spec.role} model; it makes no embeddings")

    def classify(self, texts: Sequence[str]) -> list[dict[str, float]]:
        raise ModelError(f"{self.spec.name} is a {self.spec.role} model; it does not classify")

    def check_generates(self) -> None:
        if self.spec.role not in ("chat", "completion"):
            raise ModelError(f"{self.spec.name} is a {self.spec.role} model; it does not generate")


def open_llama(spec: ModelSpec, offload: bool, **params: Any) -> Any:
    """A ``llama_cpp.Llama`` of `spec`'s weights (and adapter), from the signed bytes.

    Both GGUF backends load this way: each file is checked against the bundle's manifest
    and given to llama.cpp as the descriptor that was hashed, and llama.cpp copies the
    weights rather than mapping them, so a later change to the file cannot reach the
    running model (see signed_files). `params` are the context's (n_ctx, threads, ...).
    """
    import llama_cpp

    logs.route_llama_logs()  # llama.cpp's own messages as JSON lines, not bare stderr text
    with VerifiedFiles(spec) as files:
        weights = files.open(spec.weights)
        adapter = files.open(spec.adapter) if spec.adapter is not None else None
        if adapter is not None:  # llama.cpp may crash on a bad one instead
            check_adapter(Path(weights.loader_path), Path(adapter.loader_path), adapter.path.name)
        try:
            llm = llama_cpp.Llama(
                model_path=weights.loader_path,
                n_gpu_layers=-1 if offload else 0,
                use_mmap=False,
                logits_all=False,
                lora_path=adapter.loader_path if adapter is not None else None,
                lora_scale=spec.adapter_scale,
                verbose=False,
                **params,
            )
        except (ValueError, RuntimeError, OSError) as e:
            with_adapter = f" with adapter {spec.adapter.name}" if spec.adapter else ""
            raise ModelLoadError(
                f"cannot load {spec.name} {spec.version} from {spec.weights.name}"
                f"{with_adapter}: {e}"
            ) from e
        try:
            files.check_unchanged()
        except ModelLoadError:
            llm.close()
            raise
    return llm


class LlamaBackend(LlamaText):
    def __init__(self, spec: ModelSpec, n_threads: int | None = None) -> None:
        if spec.format != "gguf":
            raise ModelLoadError(
                f"{spec.name}: the llama.cpp backend loads GGUF, not {spec.format}"
            )
        self.spec = spec
        self.n_threads = n_threads or default_threads()
        self._llm: Any = None
        self._template = ""
        self._device = "cpu"
        self._lock = threading.Lock()  # a llama context serves one generation at a time

    @property
    def device(self) -> str:
        return self._device

    def load(self) -> None:
        import llama_cpp

        offload = gpu_present() and bool(llama_cpp.llama_supports_gpu_offload())
        self._llm = open_llama(
            self.spec,
            offload,
            n_ctx=self.spec.context_length,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
        )
        self._device = "gpu" if offload else "cpu"
        self._template = templates.choose_template(self.spec.chat_template, self._llm.metadata)
        self._eog = llama_cpp.llama_vocab_is_eog
        self._vocab = self._llm._model.vocab
        self._n_vocab = self._llm.n_vocab()

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _require(self) -> Any:
        if self._llm is None:
            raise ModelError(f"{self.spec.name} is not loaded")
        return self._llm

    def generate(self, request: GenerationRequest) -> LlamaGeneration:
        self.check_generates()
        return LlamaGeneration(self, request)


class LlamaGeneration:
    """One generation on a loaded model; iterate it for TokenEvents, then read ``result``."""

    def __init__(self, backend: LlamaBackend, request: GenerationRequest) -> None:
        self._backend = backend
        self._request = request
        self._result: GenerationResult | None = None

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            raise RuntimeError("generation has not finished")
        return self._result

    def __iter__(self) -> Iterator[TokenEvent]:
        backend, request = self._backend, self._request
        with backend._lock:
            yield from self._run(backend, request)

    def _run(self, backend: LlamaBackend, request: GenerationRequest) -> Iterator[TokenEvent]:
        llm = backend._require()
        started = time.perf_counter()
        prompt = backend.tokenize(request.prompt)
        room = backend.spec.context_length - len(prompt)
        if room <= 0:
            raise ModelError(
                f"prompt is {len(prompt)} tokens; {backend.spec.name} holds "
                f"{backend.spec.context_length}"
            )
        budget = min(request.max_tokens, room)
        _start_from_empty_memory(llm)
        llm.set_seed(request.seed if request.seed is not None else random.getrandbits(31))
        greedy = request.temperature <= 0
        stream = TextStream(request.stop)
        produced = 0
        finish: FinishReason = "length"
        wants_logprobs = request.logprobs or request.top_logprobs > 0 or request.confidence
        tokens = llm.generate(
            prompt,
            temp=0.0 if greedy else request.temperature,
            top_p=1.0 if greedy else request.top_p,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
        )
        for token in tokens:
            if request.cancel.is_set():
                finish = "cancelled"
                break
            if backend._eog(backend._vocab, token):
                finish = "stop"
                break
            if wants_logprobs:
                logprob, alternatives = logits.logprobs(
                    logits.row(llm._ctx.ctx, -1, backend._n_vocab),
                    token,
                    request.top_logprobs,
                    lambda t: llm.detokenize([t]),
                )
            else:
                logprob, alternatives = math.nan, ()
            produced += 1
            raw = llm.detokenize([token])
            piece = stream.add(raw)
            if stream.stopped:
                finish = "stop"
            yield TokenEvent(
                token, piece, logprob, alternatives, raw.decode("utf-8", errors="replace")
            )
            if stream.stopped or produced >= budget:
                break
        if rest := stream.close():
            # what was held back for a possible stop string, now known not to be one
            yield TokenEvent(-1, rest, 0.0)
        self._result = GenerationResult(
            text=stream.text,
            finish_reason=finish,
            prompt_tokens=len(prompt),
            completion_tokens=produced,
            seconds=time.perf_counter() - started,
        )


def _start_from_empty_memory(llm: Any) -> None:
    """Make the next ``llm.generate`` evaluate the whole prompt from an empty KV memory.

    An appliance must answer a request the same, text and confidence, whatever another
    device asked before it. llama.cpp's logits for a token depend on how it was batched: its
    CPU kernels take the rows of a batch four at a time and the last one to three one by one,
    and the two round differently (llama.cpp issues 6583, 7052). Any reuse of what the KV
    memory holds makes a request evaluate only a tail of its prompt, split differently from a
    fresh evaluation: a partial prefix match moved a token's log-probability by up to 0.03
    (Gemma 3, measured), and llama-cpp-python's exact-repeat path, which replays the prompt's
    last token alone, moved logits by up to 0.68 on one x86-64 CPU and a log-probability by
    0.028 on the 2-core test box (an 8-token prompt: whether it moves depends on the length).

    So every request takes one path: the memory is emptied (``reset``: no position is kept,
    so ``generate`` removes every cell before it evaluates), the prompt goes in from position
    0 in llama-cpp-python's fixed ``n_batch`` chunks, and each generated token alone. The
    same llama_decode calls on the same empty memory give the same floats, bit for bit, on
    any CPU whose kernels are deterministic (llama.cpp's are: no threads race to a sum). An
    exact repeat pays for its prompt again: ``scripts/bench_serving.py --repeat-cost``
    measures it (``[runtime] slots`` > 1 reuses prefixes, see batched.py).
    """
    llm.reset()
