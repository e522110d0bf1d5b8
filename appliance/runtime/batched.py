"""Continuous batching for GGUF models: many requests share one llama.cpp context.

One scheduler thread owns a llama.cpp context with ``slots`` sequences (each with its own
``context_length`` of KV memory). Every step it builds one ``llama_batch`` for one
``llama_decode`` call: the next token of every sequence that is generating, and up to
``prefill_chunk`` prompt tokens of the sequences still being prefilled, oldest first (so a
long prompt never stalls the running streams for long, and prompts are served first come,
first served, so none starves). Each sequence with fresh logits samples its token with its
own sampler chain (its own temperature, top_p and seed), checks its stop strings and
``max_tokens``, and hands a ``TokenEvent`` to the thread waiting for it. A finished or
cancelled sequence frees its slot at once; a new request joins between two steps.

Prompt-prefix reuse: a slot keeps the tokens of its last sequence in KV memory. A new
request goes to the free slot that shares the longest prefix with its prompt, and only the
rest is evaluated (always at least the prompt's last token, whose logits are needed), from a
multiple of REUSE_ALIGN tokens so that it is batched as a fresh evaluation would be.

Greedy answers alone and in a batch: llama.cpp's CPU kernels round a token's numbers
differently with the tokens that share its batch (llama.cpp#6583, #7052, PR #6950), so an
answer in company can part from its alone answer where the top two choices nearly tie
(``tests/test_batching.py`` checks that it parts only there, and to the runner-up);
``scripts/bench_serving.py --concurrency`` counts how often, for llama.cpp's own server too.
A request's confidence moves with its company as well: ``--confidence-spread`` measures how
far (with 3 other streams, by up to 0.044 on the probability scale the policy's threshold
uses, 0.011 on average). A request alone gets the numbers of a fresh evaluation, whatever
the other slots hold and whatever its own slot reuses (see _admit). ``slots = 1``
(llama_backend) evaluates every request from an empty memory, alone: the same request, the
same text and confidence.
"""

from __future__ import annotations

import collections
import math
import queue
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ModelError, ModelLoadError
from appliance.runtime import logits, templates
from appliance.runtime.backend import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    TokenEvent,
)
from appliance.runtime.gpu import gpu_present
from appliance.runtime.llama_backend import LlamaText, default_threads, open_llama
from appliance.runtime.textstream import TextStream

PREFILL_CHUNK = 256  # prompt tokens evaluated per step, over all prefilling sequences
REUSE_ALIGN = 8  # a reused prefix ends on a multiple of this many tokens (see _admit)
MIN_REUSE = 16  # shared prompt tokens worth keeping in a slot's memory
HOLDER_CTX = 64  # tokens of the context llama_cpp.Llama keeps (it only holds the weights)
_END = object()


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    prompt: list[int]
    budget: int
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    started: float = field(default_factory=time.perf_counter)
    slot: int = -1
    n_past: int = 0  # tokens of this sequence in KV memory
    last: int = -1  # the sampled token not yet in KV memory
    produced: int = 0
    index: int = -1  # its row in the last batch it wanted logits from
    sampler: Any = None
    stream: TextStream | None = None
    result: GenerationResult | None = None

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)


@dataclass
class _Slot:
    cached: list[int] = field(default_factory=list)  # tokens in this sequence's KV memory
    busy: _Sequence | None = None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class BatchedLlamaBackend(LlamaText):
    """A GGUF chat/completion model serving up to ``slots`` requests at once."""

    def __init__(
        self,
        spec: ModelSpec,
        slots: int = 4,
        n_threads: int | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        if spec.format != "gguf":
            raise ModelLoadError(
                f"{spec.name}: the llama.cpp backend loads GGUF, not {spec.format}"
            )
        self.spec = spec
        self.slots = slots
        self.concurrency = slots  # how many generations the model manager may run at once
        self.n_threads = n_threads or default_threads()
        self.prefill_chunk = prefill_chunk
        self._llm: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._device = "cpu"
        self._cond = threading.Condition()
        self._pending: collections.deque[_Sequence] = collections.deque()
        self._slots = [_Slot() for _ in range(slots)]
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.reused_tokens = 0  # prompt tokens not evaluated again thanks to a cached prefix

    @property
    def device(self) -> str:
        return self._device

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        import llama_cpp

        spec = self.spec
        offload = gpu_present() and bool(llama_cpp.llama_supports_gpu_offload())
        # The Llama object holds the weights (checked against the signed manifest: see
        # open_llama), the tokenizer, the metadata and the LoRA adapter; its own context is
        # tiny. Generation runs on the batched context below.
        self._llm = open_llama(
            spec,
            offload,
            n_ctx=HOLDER_CTX,
            n_batch=HOLDER_CTX,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
        )
        try:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = spec.context_length * self.slots
            params.n_batch = params.n_ubatch = self.prefill_chunk + self.slots
            params.n_seq_max = self.slots
            params.n_threads = params.n_threads_batch = self.n_threads
            # Each sequence its own KV memory of context_length. One memory for all
            # (kv_unified) would spare the extra passes over the weights that a gap in the
            # busy slots costs (see _step), but then where a prompt's cells land among other
            # sequences' cells changes its numbers: the same lone request, after other
            # traffic, gave another greedy answer (measured). Apart, a lone request's answer
            # is always the same.
            params.kv_unified = False
            params.swa_full = True  # sliding-window models: prefixes stay reusable
            self._ctx = llama_cpp.llama_init_from_model(self._llm._model.model, params)
            if not self._ctx:
                raise RuntimeError(f"llama.cpp could not make a context for {self.slots} slots")
            if self._llm._lora_adapter is not None:
                adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._llm._lora_adapter)
                scales = (llama_cpp.ctypes.c_float * 1)(spec.adapter_scale)
                if llama_cpp.llama_set_adapters_lora(self._ctx, adapters, 1, scales):
                    raise RuntimeError("the LoRA adapter could not be applied")
        except (ValueError, RuntimeError, OSError) as e:
            self.close()
            with_adapter = f" with adapter {spec.adapter.name}" if spec.adapter else ""
            raise ModelLoadError(
                f"cannot load {spec.name} {spec.version} from {spec.weights.name}"
                f"{with_adapter}: {e}"
            ) from e
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self._n_batch = params.n_batch
        self._device = "gpu" if offload else "cpu"
        self._template = templates.choose_template(spec.chat_template, self._llm.metadata)
        self._vocab = self._llm._model.vocab
        self._n_vocab = self._llm.n_vocab()
        self._lib = llama_cpp
        self._thread = threading.Thread(target=self._loop, name=f"batch-{spec.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _require(self) -> Any:
        if self._llm is None or self._ctx is None:
            raise ModelError(f"{self.spec.name} is not loaded")
        return self._llm

    # -- the Backend interface -------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> BatchedGeneration:
        self.check_generates()
        return BatchedGeneration(self, request)

    def _submit(self, request: GenerationRequest) -> _Sequence:
        prompt = self.tokenize(request.prompt)
        room = self.spec.context_length - len(prompt)
        if room <= 0:
            raise ModelError(
                f"prompt is {len(prompt)} tokens; {self.spec.name} holds {self.spec.context_length}"
            )
        sequence = _Sequence(request, prompt, min(request.max_tokens, room))
        with self._cond:
            if self._stopping:
                raise ModelError(f"{self.spec.name} is closing")
            self._pending.append(sequence)
            self._cond.notify_all()
        return sequence

    # -- the scheduler ---------------------------------------------------------------------

    def _loop(self) -> None:
        running: list[_Sequence] = []
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not running:
                    self._cond.wait()
                if self._stopping:
                    break
                while self._pending and any(s.busy is None for s in self._slots):
                    sequence = self._pending.popleft()
                    if sequence.request.cancel.is_set():
                        self._finish(sequence, "cancelled")
                        continue
                    self._admit(sequence)
                    running.append(sequence)
            try:
                self._step(running)
            except BaseException as e:  # a failed decode fails the sequences in it
                for sequence in running:
                    self._fail(sequence, e)
                running.clear()
                self._lib.llama_memory_clear(self._mem, True)  # start every slot afresh
                for slot in self._slots:
                    slot.cached = []
                continue
            running = [s for s in running if s.result is None]
        for sequence in [*running, *self._pending]:
            self._fail(sequence, ModelError(f"{self.spec.name} was unloaded"))

    def _admit(self, sequence: _Sequence) -> None:
        """Give `sequence` the free slot whose cached tokens share most of its prompt, or
        else the lowest free slot (busy slots packed low keep a step's batch in one pass).

        The reused prefix ends on a multiple of REUSE_ALIGN tokens. llama.cpp's CPU kernels
        take a batch's rows four at a time and the last one to three one by one, rounding
        differently; evaluating only the rest of a prompt shifts its rows against those
        groups, unless the cut is a multiple of four (and the prefill chunk is). Aligned, a
        lone request gets the numbers of a fresh evaluation, bit for bit (measured: 12 of 12
        few-shot prompts; unaligned, 5 of 12 moved their confidence, by up to 0.029), for the
        price of evaluating up to 7 more tokens.
        """
        lib = self._lib

        def reusable(i: int) -> int:
            keep = min(
                common_prefix(self._slots[i].cached, sequence.prompt), len(sequence.prompt) - 1
            )
            keep -= keep % REUSE_ALIGN
            return keep if keep >= MIN_REUSE else 0  # a BOS or a chat header is not worth it

        best = max((i for i, s in enumerate(self._slots) if s.busy is None), key=reusable)
        slot = self._slots[best]
        keep = reusable(best)
        lib.llama_memory_seq_rm(self._mem, best, keep, -1)
        slot.cached = sequence.prompt[:keep]
        slot.busy = sequence
        sequence.slot, sequence.n_past = best, keep
        self.reused_tokens += keep
        request = sequence.request
        sequence.stream = TextStream(request.stop)
        sequence.sampler = self._sampler(request)

    def _sampler(self, request: GenerationRequest) -> Any:
        """The request's own sampler chain; None for greedy (an argmax needs none, and
        llama.cpp's sampler copies all 262k candidates of a row on every call)."""
        lib = self._lib
        if request.temperature <= 0:
            return None
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        seed = request.seed if request.seed is not None else random.getrandbits(31)
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(request.top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(request.temperature))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def _step(self, running: list[_Sequence]) -> None:
        """One scheduling step: one ``llama_decode`` of the next token of every generating
        sequence and up to ``prefill_chunk`` prompt tokens of the prefilling ones, oldest
        first (a long prompt takes the whole chunk until it is in, then the next one's turn
        comes: first come, first served, so no prompt starves and no stream stalls for long).
        """
        tokens: list[tuple[_Sequence, int, bool]] = []
        room = self.prefill_chunk
        for sequence in running:
            if sequence.request.cancel.is_set():  # it frees its slot before any work
                self._finish(sequence, "cancelled")
            elif not sequence.prefilling:
                tokens.append((sequence, sequence.last, True))
            elif room > 0:
                end = min(len(sequence.prompt), sequence.n_past + room)
                last = len(sequence.prompt) - 1
                tokens += [
                    (sequence, sequence.prompt[i], i == last) for i in range(sequence.n_past, end)
                ]
                room -= end - sequence.n_past
        if tokens:
            # In slot order: llama.cpp cuts a batch over separate per-sequence KV memories into
            # micro-batches of consecutive sequence ids, one pass over the weights each; in
            # slot order the tokens of busy slots 0-7 go in one, not in several (busy slots
            # 0, 1, 2, 4, 5, 6 still take two: measured 100 ms a step instead of 55).
            tokens.sort(key=lambda t: t[0].slot)  # stable: a prompt's tokens stay in order
            self._decode(tokens)

    def _decode(self, tokens: list[tuple[_Sequence, int, bool]]) -> None:
        """One ``llama_decode`` of (sequence, token, wants logits); then sample those."""
        lib, batch = self._lib, self._batch
        batch.n_tokens = 0
        wanting = []
        for sequence, token, wants in tokens:
            k = batch.n_tokens
            batch.token[k] = token
            batch.pos[k] = sequence.n_past
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = sequence.slot
            batch.logits[k] = wants
            sequence.n_past += 1
            self._slots[sequence.slot].cached.append(token)
            batch.n_tokens += 1
            if wants:
                sequence.index = k
                wanting.append(sequence)
        status = lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise ModelError(f"llama_decode failed ({status}) for {self.spec.name}")
        for sequence in wanting:
            self._sample(sequence)

    def _sample(self, sequence: _Sequence) -> None:
        lib = self._lib
        request = sequence.request
        if sequence.sampler is None:  # greedy: the argmax of the row, read in place
            token = int(logits.row(self._ctx, sequence.index, self._n_vocab).argmax())
        else:
            token = int(lib.llama_sampler_sample(sequence.sampler, self._ctx, sequence.index))
        if lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(sequence, "stop")
            return
        if request.logprobs or request.top_logprobs > 0 or request.confidence:
            logprob, alternatives = logits.logprobs(
                logits.row(self._ctx, sequence.index, self._n_vocab),
                token,
                request.top_logprobs,
                lambda t: self._llm.detokenize([t]),
            )
        else:
            logprob, alternatives = math.nan, ()
        sequence.produced += 1
        raw = self._llm.detokenize([token])
        assert sequence.stream is not None
        piece = sequence.stream.add(raw)
        sequence.events.put(
            TokenEvent(token, piece, logprob, alternatives, raw.decode("utf-8", errors="replace"))
        )
        if sequence.stream.stopped:
            self._finish(sequence, "stop")
        elif sequence.produced >= sequence.budget:
            self._finish(sequence, "length")
        else:
            sequence.last = token

    def _release(self, sequence: _Sequence) -> None:
        if sequence.sampler is not None:
            self._lib.llama_sampler_free(sequence.sampler)
            sequence.sampler = None
        if 0 <= sequence.slot < len(self._slots):
            self._slots[sequence.slot].busy = None

    def _finish(self, sequence: _Sequence, reason: FinishReason) -> None:
        self._release(sequence)
        stream = sequence.stream or TextStream(())
        if rest := stream.close():
            # what was held back for a possible stop string, now known not to be one
            sequence.events.put(TokenEvent(-1, rest, 0.0))
        sequence.result = GenerationResult(
            text=stream.text,
            finish_reason=reason,
            prompt_tokens=len(sequence.prompt),
            completion_tokens=sequence.produced,
            seconds=time.perf_counter() - sequence.started,
        )
        sequence.events.put(_END)

    def _fail(self, sequence: _Sequence, error: BaseException) -> None:
        self._release(sequence)
        if sequence.result is None:
            sequence.result = GenerationResult("", "cancelled", len(sequence.prompt), 0, 0.0)
            sequence.events.put(error)


class BatchedGeneration:
    """One request in the batch; iterate it (on the caller's thread) for its TokenEvents."""

    def __init__(self, backend: BatchedLlamaBackend, request: GenerationRequest) -> None:
        self._backend = backend
        self._request = request
        self._sequence: _Sequence | None = None

    @property
    def result(self) -> GenerationResult:
        if self._sequence is None or self._sequence.result is None:
            raise RuntimeError("generation has not finished")
        return self._sequence.result

    def __iter__(self) -> Iterator[TokenEvent]:
        sequence = self._sequence = self._backend._submit(self._request)
        try:
            while True:
                item = sequence.events.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if sequence.result is None:  # the consumer stopped early: free the slot
                self._request.cancel.set()
