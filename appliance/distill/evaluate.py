"""``appliance distill eval``: base and base + adapter on the held-out pairs, as the box runs.

Both models run through the daemon's own runtime (``runtime.llama_backend``: the chat
template it renders, llama.cpp with the adapter applied by ``lora_path`` after the
daemon's adapter check), greedy, one request at a time, and the confidence is the cascade's
(``governance.confidence``, with the policy's measure). For each model:

- agreement with the golden answers: normalised exact match and token F1
  (``governance.agreement``);
- the confidence distribution, and the escalation rate at the policy's threshold (the share
  of answers below it, which the cascade would send upstream: the box's ``after_local``
  for a query that may leave);
- the upstream cost per 1000 queries that follows: the escalated queries' tokens at the
  upstream's price. The tokens are the local tokenizer's count of the prompt and of the
  golden answer, an estimate of what the upstream bills (its tokenizer differs a little).
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.distill.base import BaseModel
from appliance.distill.golden import GoldenPair, read_pairs
from appliance.distill.rundir import RunDir, read_json, write_json
from appliance.fsutil import sha256_file
from appliance.governance.agreement import exact_match, token_f1
from appliance.governance.confidence import answer_confidence
from appliance.home import Home
from appliance.policy.load import load_policy
from appliance.policy.schema import Policy
from appliance.policy_source import active_bundle, source_for
from appliance.runtime.backend import GenerationRequest, ModelSpec
from appliance.runtime.llama_backend import LlamaBackend
from appliance.settings import Settings

ANSWER_ROOM = 32  # tokens a local answer may run past the longest golden answer
MAX_ANSWER = 512  # tokens, at most


@dataclass(frozen=True)
class Pricing:
    """What an escalated query costs: the upstream's price per million tokens."""

    upstream: str | None
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, answer_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + answer_tokens * self.output_per_mtok) / 1e6


def policy_in_force(home: Home, settings: Settings) -> Policy:
    """The policy the box at `home` runs (state.db read-only; the shipped default where
    there is no box, as on a workstation)."""
    active = None
    if home.state_db.exists():
        conn = sqlite3.connect(f"file:{home.state_db}?mode=ro", uri=True, timeout=5.0)
        try:
            active = active_bundle(conn)
        finally:
            conn.close()
    return load_policy(source_for(home, settings.policy_file, active).path)


def pricing(policy: Policy, settings: Settings) -> Pricing | None:
    """The price the box would pay: its first external upstream's (the policy's price table
    first, then config.toml's), else the policy's first price entry; None when none is known."""
    upstreams = sorted(settings.upstreams, key=lambda u: u.perimeter != "external")
    for upstream in upstreams:
        price_in, price_out = policy.price_for(
            upstream.name, upstream.price_input_per_mtok, upstream.price_output_per_mtok
        )
        return Pricing(upstream.name, price_in, price_out)
    for name, price in policy.prices.items():
        return Pricing(name, price.input_per_mtok or 0.0, price.output_per_mtok or 0.0)
    return None


@dataclass(frozen=True)
class Answered:
    text: str
    confidence: float | None
    prompt_tokens: int
    golden_tokens: int
    seconds: float


def answer_all(
    base: BaseModel,
    adapter: Path | None,
    pairs: Sequence[GoldenPair],
    policy: Policy,
    max_tokens: int | None = None,
    on_answer: Callable[[], None] | None = None,
) -> list[Answered]:
    """Each pair's prompt answered by the base (with `adapter` when given), greedily, with
    the confidence `policy`'s cascade measures."""
    cascade = policy.cascade
    spec = ModelSpec(
        name=base.name or base.gguf.stem,
        version=base.version or "",
        digest=base.bundle_digest or base.sha256,
        root=base.gguf.parent,
        format="gguf",
        role="chat",
        context_length=base.context_length,
        weights=base.gguf,
        chat_template=base.chat_template,
        adapter=adapter,
    )
    backend = LlamaBackend(spec)
    backend.load()
    try:
        goldens = [len(backend.tokenize(p.answer.strip())) for p in pairs]
        limit = max_tokens or min(MAX_ANSWER, max(goldens, default=0) + ANSWER_ROOM)
        answers = []
        for pair, golden_tokens in zip(pairs, goldens, strict=True):
            prompt = backend.render_chat(pair.chat)
            request = GenerationRequest(
                prompt=prompt, max_tokens=limit, temperature=0.0, confidence=True
            )
            started = time.perf_counter()
            generation = backend.generate(request)
            events = list(generation)
            answers.append(
                Answered(
                    text=generation.result.text,
                    confidence=answer_confidence(events, cascade),
                    prompt_tokens=generation.result.prompt_tokens,
                    golden_tokens=golden_tokens,
                    seconds=time.perf_counter() - started,
                )
            )
            if on_answer is not None:
                on_answer()
    finally:
        backend.close()
    return answers


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(
    answers: Sequence[Answered],
    pairs: Sequence[GoldenPair],
    threshold: float,
    price: Pricing | None,
) -> dict[str, Any]:
    """The figures of one model on the held-out pairs (see the module docstring)."""
    n = len(answers)
    exact = [exact_match(a.text, p.answer) for a, p in zip(answers, pairs, strict=True)]
    f1 = [token_f1(a.text, p.answer) for a, p in zip(answers, pairs, strict=True)]
    known = [a.confidence for a in answers if a.confidence is not None]
    escalated = [a.confidence is None or a.confidence < threshold for a in answers]
    kept = [e for e, up in zip(exact, escalated, strict=True) if not up]
    cost = None
    if price is not None and n:
        spent = sum(
            price.cost(a.prompt_tokens, a.golden_tokens)
            for a, up in zip(answers, escalated, strict=True)
            if up
        )
        cost = round(spent / n * 1000, 6)
    histogram = [0] * 10
    for value in known:
        histogram[min(9, int(value * 10))] += 1
    return {
        "answers": n,
        "exact_match": round(sum(exact) / n, 4) if n else None,
        "token_f1": round(statistics.fmean(f1), 4) if n else None,
        "confidence": {
            "mean": round(statistics.fmean(known), 4) if known else None,
            "p10": _round(_quantile(known, 0.1)),
            "median": _round(_quantile(known, 0.5)),
            "p90": _round(_quantile(known, 0.9)),
            "histogram": histogram,  # answers per tenth of [0, 1]
            "unknown": n - len(known),
        },
        "escalation_rate": round(sum(escalated) / n, 4) if n else None,
        "kept_local_exact_match": round(sum(kept) / len(kept), 4) if kept else None,
        "upstream_cost_per_1000_usd": cost,
        "seconds_per_answer": round(statistics.fmean(a.seconds for a in answers), 3) if n else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def evaluate(
    run: RunDir,
    policy: Policy,
    price: Pricing | None,
    max_tokens: int | None = None,
    on_answer: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Compare base and base + adapter on the run's held-out pairs; write eval.json."""
    base = BaseModel.from_json(read_json(run.need(run.base, "train")))
    pairs = read_pairs(run.need(run.heldout_set, "train"))
    adapter = run.need(run.adapter, "train")
    cascade = policy.cascade
    results: dict[str, Any] = {}
    rows: dict[str, list[Answered]] = {}
    for label, lora in (("base", None), ("adapter", adapter)):
        rows[label] = answer_all(base, lora, pairs, policy, max_tokens, on_answer)
        results[label] = summarise(rows[label], pairs, cascade.confidence_threshold, price)
    document = {
        "adapter_sha256": sha256_file(adapter),  # pack refuses an adapter changed since
        "heldout_pairs": len(pairs),
        "policy": {
            "name": policy.name,
            "confidence_measure": cascade.confidence_measure,
            "confidence_threshold": cascade.confidence_threshold,
        },
        "pricing": None if price is None else asdict(price),
        "cost_basis": "escalated queries x (local token counts of prompt and golden answer) "
        "at the upstream's price",
        "base": results["base"],
        "adapter": results["adapter"],
        "worse": worse(results["base"], results["adapter"]),
        "examples": [
            {
                "golden": pair.answer,
                "base": {"text": b.text, "confidence": _round(b.confidence)},
                "adapter": {"text": a.text, "confidence": _round(a.confidence)},
            }
            for pair, b, a in zip(pairs, rows["base"], rows["adapter"], strict=True)
        ],
    }
    write_json(run.evaluation, document)
    return document


def worse(base: dict[str, Any], adapter: dict[str, Any]) -> list[str]:
    """Where the adapter does worse than its base on the held-out pairs (empty: it does not)."""
    found = []
    for key in ("exact_match", "token_f1"):
        if (adapter[key] or 0) < (base[key] or 0):
            found.append(f"{key} {adapter[key]} < base {base[key]}")
    return found
