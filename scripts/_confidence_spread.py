"""How much a request's confidence moves with the traffic beside it (``[runtime] slots`` > 1).

Used by ``bench_serving.py --confidence-spread``. With continuous batching a request's
tokens share llama.cpp calls with other requests' tokens, and llama.cpp's CPU kernels round
a row differently with its company (see appliance/runtime/batched.py); a prompt that starts
like one in a slot's memory is also only partly evaluated. So the confidence the router
compares with the policy's threshold moves a little with the neighbours. This measures how
much, on one BatchedLlamaBackend (the daemon's default 4 slots) with the demo GGUF:

  reference      each target prompt alone, every slot's memory emptied first (as on a
                 fresh backend: the whole prompt is evaluated)
  alone          the same, again, after other traffic (a slot may hold a shared prefix)
  with k others  the same while k = 1, 2, 3 streams of other prompts (--max-tokens 32 each)
                 generate, the target sent at a random moment of theirs (seeded)

Targets are short factual questions after one shared few-shot preamble (as many devices
share a system prompt); greedy, 8 tokens, confidence on. For each condition, over targets x
rounds: the largest and mean |difference| from the reference of the confidence (the
policy's default measure: exp(mean log-probability), a probability), of the mean
log-probability itself and of the first token's log-probability; answers whose text
differs; and decisions that flip at the default policy's threshold (0.5).
"""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.governance.confidence import confidence
from appliance.runtime.backend import GenerationRequest, ModelSpec
from appliance.runtime.batched import BatchedLlamaBackend

SLOTS = 4  # the daemon's default [runtime] slots
THRESHOLD = 0.5  # the threshold these figures were measured at (with `mean`)
TARGET_TOKENS = 8
# The demo model is a base model: a few-shot completion, not a chat, gets it to answer. All
# targets share this preamble (as devices share a system prompt), so slots reuse it.
PREAMBLE = (
    "Answer each question in a few words.\n\n"
    "Q: What is the capital of Italy?\nA: Rome.\n\n"
    "Q: How many days are in a week?\nA: Seven.\n\n"
    "Q: "
)
TARGETS = (
    "What is the capital of France?",
    "At what temperature does water boil?",
    "Which planet is the largest?",
    "What is the chemical symbol for gold?",
    "Who wrote Hamlet?",
    "What is the tallest mountain on Earth?",
    "What is the currency of Japan?",
    "How many legs does a spider have?",
    "What gas do plants take in?",
    "Who painted the Mona Lisa?",
    "What is the boiling point of ethanol?",
    "Which ocean is the deepest?",
)
OTHERS = tuple(
    f"Write two sentences about {topic}."
    for topic in ("rivers", "volcanoes", "bread", "chess", "the moon", "owls")
)


@dataclass
class Run:
    text: str
    logprobs: list[float]

    @property
    def confidence(self) -> float:
        return confidence(self.logprobs) or math.nan

    @property
    def mean_logprob(self) -> float:
        return statistics.fmean(self.logprobs) if self.logprobs else math.nan


@dataclass
class Spread:
    confidence: list[float] = field(default_factory=list)
    mean_logprob: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    texts_differ: int = 0
    flips: int = 0

    def add(self, run: Run, reference: Run) -> None:
        self.confidence.append(abs(run.confidence - reference.confidence))
        self.mean_logprob.append(abs(run.mean_logprob - reference.mean_logprob))
        self.first.append(abs(run.logprobs[0] - reference.logprobs[0]))
        self.texts_differ += run.text != reference.text
        self.flips += (run.confidence >= THRESHOLD) != (reference.confidence >= THRESHOLD)


def _ask(backend: BatchedLlamaBackend, prompt: str, max_tokens: int) -> Run:
    request = GenerationRequest(prompt, max_tokens=max_tokens, temperature=0, confidence=True)
    generation = backend.generate(request)
    logprobs = [e.logprob for e in generation if e.token_id >= 0]
    return Run(generation.result.text, logprobs)


def _forget(backend: BatchedLlamaBackend) -> None:
    """Empty every slot's memory (between requests: the scheduler is idle), so the next
    request is evaluated whole, from position 0, as on a fresh backend."""
    backend._lib.llama_memory_clear(backend._mem, True)
    for slot in backend._slots:
        slot.cached = []


def _with_others(
    backend: BatchedLlamaBackend, target: str, others: list[str], tokens: int, rng: random.Random
) -> Run:
    """`target` sent at a random moment while `others` stream beside it."""
    started = threading.Barrier(len(others) + 1)

    def stream(prompt: str) -> None:
        started.wait()
        _ask(backend, prompt, tokens)

    threads = [threading.Thread(target=stream, args=(p,)) for p in others]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(rng.uniform(0.0, 0.4))  # into their prefill, or their generation
    run = _ask(backend, target, TARGET_TOKENS)
    for t in threads:
        t.join()
    return run


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))


def bench(gguf: Path, threads: int, n_ctx: int, rounds: int, other_tokens: int) -> None:
    spec = ModelSpec("gemma", "bench", "-", gguf.parent, "gguf", "completion", n_ctx, gguf)
    backend = BatchedLlamaBackend(spec, slots=SLOTS, n_threads=threads)
    backend.load()
    rng = random.Random(6583)
    print(
        f"confidence spread: BatchedLlamaBackend, {SLOTS} slots, n_ctx {n_ctx} per slot, "
        f"{threads} threads; {len(TARGETS)} targets x {rounds} rounds per condition, greedy "
        f"{TARGET_TOKENS} tokens; other streams {other_tokens} tokens"
    )
    prompts = [f"{PREAMBLE}{question}\nA:" for question in TARGETS]
    others = list(OTHERS)
    conditions = ["alone", *(f"with {k} other{'s' * (k > 1)}" for k in range(1, SLOTS))]
    spreads = {c: Spread() for c in conditions}
    try:
        references = []
        for prompt in prompts:
            _forget(backend)
            references.append(_ask(backend, prompt, TARGET_TOKENS))
        for r in range(rounds):
            for i, prompt in enumerate(prompts):
                reference = references[i]
                spreads["alone"].add(_ask(backend, prompt, TARGET_TOKENS), reference)
                for k in range(1, SLOTS):
                    company = rng.sample(others, k)
                    run = _with_others(backend, prompt, company, other_tokens, rng)
                    spreads[conditions[k]].add(run, reference)
            print(f"  round {r + 1}/{rounds} done")
    finally:
        backend.close()

    rows = []
    for name, s in spreads.items():
        rows.append(
            (
                name,
                f"{max(s.confidence):.4f}",
                f"{statistics.fmean(s.confidence):.4f}",
                f"{max(s.mean_logprob):.4f}",
                f"{statistics.fmean(s.mean_logprob):.4f}",
                f"{max(s.first):.4f}",
                f"{statistics.fmean(s.first):.4f}",
                f"{s.texts_differ}/{len(s.confidence)}",
                f"{s.flips}/{len(s.confidence)}",
            )
        )
    print()
    _table(
        rows,
        (
            "condition",
            "conf max",
            "conf mean",
            "mean-logp max",
            "mean",
            "1st-token logp max",
            "mean",
            "texts differ",
            f"flips at {THRESHOLD}",
        ),
    )
    print("\nreference confidences (alone, fresh):")
    for question, run in zip(TARGETS, references, strict=True):
        print(f"  {run.confidence:.3f}  {question!r} -> {run.text!r}")
