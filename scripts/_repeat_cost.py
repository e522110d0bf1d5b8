"""What evaluating every prompt afresh costs at ``slots = 1``, against the old cache reuse.

Used by ``bench_serving.py --repeat-cost``. One LlamaBackend (the ``slots = 1`` runner) on
the demo GGUF serves both behaviours in one run, interleaved request by request so that a
drift of the machine falls on both alike:

  new   every request is evaluated from an empty KV memory (the whole prompt, in
        llama-cpp-python's fixed n_batch chunks): what the appliance does now
  old   the memory is kept when it holds the whole prompt (an exact repeat), and then
        llama-cpp-python replays only the prompt's last token, alone; any other prompt is
        evaluated afresh: what the appliance did before (``_keep_cache_only_for_a_repeat``)

For chat prompts of several lengths (a system preamble repeated), greedy, --max-tokens
tokens, logprobs on (the router's confidence needs them), each round asks: an unrelated
prompt (untimed), the prompt (``fresh``), and the same prompt again (``repeat``). Times are
medians over the rounds: time to the first token and the whole request. Every answer is
compared with the round's fresh answer of the new behaviour: text, each token's
log-probability and the confidence (geometric mean probability, the policy's default).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from appliance.governance.confidence import confidence
from appliance.runtime import llama_backend
from appliance.runtime.backend import GenerationRequest, ModelSpec
from appliance.runtime.llama_backend import LlamaBackend

PREAMBLE = (
    "You are the maintenance assistant of the north dock. Answer in one short sentence and "
    "never guess part numbers; say when a question needs a human. "
)
QUESTION = "What is a pallet jack used for?"
UNRELATED = "Once upon a time, in a small village by the sea,"
LENGTHS = (0, 3, 15, 30)  # preamble repeats: prompts of about 20, 110, 420 and 800 tokens


@dataclass
class Trace:
    text: str
    logprobs: list[float]
    ttft: float  # seconds to the first token
    wall: float  # seconds for the whole request
    cpu: float  # CPU-seconds this process spent on it (all its threads): robust to neighbours

    @property
    def confidence(self) -> float:
        return confidence(self.logprobs) or math.nan


@dataclass
class Cell:
    """One behaviour on one kind of request at one prompt length."""

    ttft: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    differs: int = 0  # answers whose text or log-probabilities differ from a fresh one
    max_logprob: float = 0.0  # the largest |difference| of a token's log-probability
    max_confidence: float = 0.0  # ... and of the confidence

    def add(self, trace: Trace, reference: Trace) -> None:
        self.ttft.append(trace.ttft)
        self.wall.append(trace.wall)
        self.cpu.append(trace.cpu)
        if trace.text != reference.text or trace.logprobs != reference.logprobs:
            self.differs += 1
        pairs = zip(trace.logprobs, reference.logprobs, strict=False)
        self.max_logprob = max([self.max_logprob, *(abs(a - b) for a, b in pairs)])
        delta = abs(trace.confidence - reference.confidence)
        self.max_confidence = max(self.max_confidence, delta)

    def ms(self, which: str) -> float:
        return statistics.median(getattr(self, which)) * 1000.0


def _compared(old: Cell, new: Cell, which: str) -> tuple[str, str, str]:
    return f"{old.ms(which):.0f}", f"{new.ms(which):.0f}", f"{new.ms(which) / old.ms(which):.2f}x"


def _old_reuse(llm: Any) -> Callable[[], None]:
    """Make `llm` behave as the appliance did before; returns the undo."""
    real = llm.generate

    def generate(tokens: list[int], **options: Any) -> Iterator[int]:
        cached = llm._input_ids[: llm.n_tokens]
        if len(cached) < len(tokens) or list(cached[: len(tokens)]) != list(tokens):
            llm.reset()
        return real(tokens, **options)  # type: ignore[no-any-return]

    llm.generate = generate

    def undo() -> None:
        del llm.generate

    return undo


def _trace(backend: LlamaBackend, prompt: str, max_tokens: int) -> Trace:
    request = GenerationRequest(prompt, max_tokens=max_tokens, temperature=0, confidence=True)
    started, cpu = time.perf_counter(), time.process_time()
    ttft = None
    logprobs = []
    generation = backend.generate(request)
    for event in generation:
        if event.token_id < 0:
            continue
        if ttft is None:
            ttft = time.perf_counter() - started
        logprobs.append(event.logprob)
    wall = time.perf_counter() - started
    return Trace(generation.result.text, logprobs, ttft or wall, wall, time.process_time() - cpu)


def _run(backend: LlamaBackend, old: bool, prompt: str, max_tokens: int) -> tuple[Trace, Trace]:
    """(fresh, repeat) of `prompt` under one behaviour."""
    llm = backend._llm
    undo = _old_reuse(llm) if old else None
    reset = llama_backend._start_from_empty_memory
    if old:
        llama_backend._start_from_empty_memory = lambda llm: None  # type: ignore[assignment]
    try:
        _trace(backend, UNRELATED, 2)
        fresh = _trace(backend, prompt, max_tokens)
        repeat = _trace(backend, prompt, max_tokens)
    finally:
        llama_backend._start_from_empty_memory = reset  # type: ignore[assignment]
        if undo is not None:
            undo()
    return fresh, repeat


def _wait_for_quiet(limit_s: float = 30.0, busy_percent: float = 15.0) -> None:
    """Wait (at most `limit_s`) until other processes leave the CPUs nearly idle."""
    deadline = time.monotonic() + limit_s
    while psutil.cpu_percent(interval=0.5) > busy_percent and time.monotonic() < deadline:
        pass


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))


def bench(gguf: Path, threads: int, n_ctx: int, rounds: int, max_tokens: int) -> None:
    spec = ModelSpec("gemma", "bench", "-", gguf.parent, "gguf", "chat", n_ctx, gguf)
    backend = LlamaBackend(spec, n_threads=threads)
    backend.load()
    print(
        f"repeat cost: LlamaBackend (slots = 1), n_ctx {n_ctx}, {threads} threads, greedy, "
        f"{max_tokens} tokens with logprobs, {rounds} rounds, old and new interleaved"
    )
    cells: dict[tuple[int, str, str], Cell] = {}
    sizes = {}
    try:
        for repeats in LENGTHS:
            chat = [{"role": "user", "content": PREAMBLE * repeats + QUESTION}]
            prompt = backend.render_chat(chat)
            sizes[repeats] = backend.count_tokens(prompt)
            _run(backend, False, prompt, max_tokens)  # warm
            for r in range(rounds):
                _wait_for_quiet()
                order = (False, True) if r % 2 == 0 else (True, False)
                traces = {old: _run(backend, old, prompt, max_tokens) for old in order}
                reference = traces[False][0]  # the new behaviour's fresh answer
                for old, (fresh, repeat) in traces.items():
                    who = "old" if old else "new"
                    cells.setdefault((repeats, "fresh", who), Cell()).add(fresh, reference)
                    cells.setdefault((repeats, "repeat", who), Cell()).add(repeat, reference)
            print(f"  {sizes[repeats]} prompt tokens done")
    finally:
        backend.close()

    rows = []
    for repeats in LENGTHS:
        for kind in ("fresh", "repeat"):
            old, new = cells[(repeats, kind, "old")], cells[(repeats, kind, "new")]
            rows.append(
                (
                    f"{sizes[repeats]} tokens, {kind}",
                    *_compared(old, new, "ttft"),
                    *_compared(old, new, "wall"),
                    *_compared(old, new, "cpu"),
                    f"{old.differs}/{len(old.wall)} ({old.max_logprob:.3g})",
                    f"{new.differs}/{len(new.wall)}",
                )
            )
    print()
    _table(
        rows,
        (
            "prompt, request",
            *("old TTFT", "new", "new/old"),
            *("old whole", "new", "new/old"),
            *("old CPU", "new", "new/old"),
            "old differs (max |dlogp|)",
            "new differs",
        ),
    )
    worst = max(c.max_confidence for (_, _, who), c in cells.items() if who == "old")
    print(
        f"\nms, medians over {rounds} rounds (CPU: CPU-ms of this process, all threads, "
        "which other processes on the box disturb less than wall time); 'differs': answers "
        "whose text or any token's "
        "log-probability is not bit-identical to the fresh answer of the same round (new "
        f"behaviour); the old repeats moved the confidence by up to {worst:.3g}"
    )
