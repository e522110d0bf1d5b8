"""``--measure``: a short benchmark through the real backend, on this box.

The model is loaded the way the daemon loads it (``runtime.manager.default_backend`` with the
same slots and context), a prompt of about ``PREFILL_TOKENS`` tokens is evaluated (prefill
tokens/s from the time to the first token) and up to ``DECODE_TOKENS`` tokens are generated
greedily (decode tokens/s from the first token to the last). The resident memory is the
process's RSS after the run; the model's share is that less the RSS before the load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from appliance.errors import ModelError
from appliance.plan.memory import Deployment
from appliance.runtime.backend import GenerationRequest, ModelSpec

PREFILL_TOKENS = 200  # tokens in the measured prompt (about)
DECODE_TOKENS = 64  # tokens generated
COUNTING = ", ".join(str(i) for i in range(1, 400))  # a prompt any model continues


@dataclass(frozen=True)
class Measured:
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    rss_bytes: int  # the whole process after the run
    model_rss_bytes: int  # what loading and running the model added
    prompt_tokens: int
    generated_tokens: int


def measure(path: Path, deployment: Deployment, role: str = "completion") -> Measured:
    """Load `path` as the daemon would and time one prompt and one generation."""
    from appliance.runtime.manager import default_backend

    process = psutil.Process()
    before = process.memory_info().rss
    spec = ModelSpec(
        name=path.stem,
        version="measure",
        digest="",
        root=path.parent,
        format="gguf",
        role="completion" if role not in ("chat", "completion") else role,  # type: ignore[arg-type]
        context_length=deployment.context,
        weights=path,
    )
    if deployment.cache_type != "f16":
        raise ModelError("--measure runs the daemon's backend, whose KV cache is f16")
    backend = default_backend(spec, slots=deployment.slots)
    backend.load()
    try:
        tokens = backend.count_tokens(COUNTING)
        prompt = COUNTING[: int(len(COUNTING) * min(1.0, PREFILL_TOKENS / tokens))]
        warm = backend.generate(GenerationRequest(prompt="1, 2, 3", max_tokens=2, temperature=0))
        for _ in warm:
            pass
        start = time.perf_counter()
        first = last = 0.0
        count = 0
        generation = backend.generate(
            GenerationRequest(prompt=prompt, max_tokens=DECODE_TOKENS, temperature=0)
        )
        for event in generation:
            if event.token_id < 0:
                continue
            now = time.perf_counter()
            first = first or now
            last = now
            count += 1
        result = generation.result
        rss = process.memory_info().rss
    finally:
        backend.close()
    if count < 2 or first <= start:
        raise ModelError(f"{path.name} generated {count} tokens; nothing to time")
    return Measured(
        decode_tokens_per_s=(count - 1) / (last - first),
        prefill_tokens_per_s=result.prompt_tokens / (first - start),
        rss_bytes=rss,
        model_rss_bytes=rss - before,
        prompt_tokens=result.prompt_tokens,
        generated_tokens=count,
    )
