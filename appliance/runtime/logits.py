"""Log-probabilities from one row of llama.cpp's logits, read in place (no copy).

Shared by both GGUF backends: the chosen token's log-softmax and the best alternatives,
computed only when a device asks (``logprobs``) or the cascade needs the confidence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def row(ctx: Any, index: int, n_vocab: int) -> np.ndarray:
    """The logits of batch row `index` (-1: the last) as a numpy view into llama.cpp."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(pointer, shape=(n_vocab,))


def logprobs(
    logits: np.ndarray, token: int, top_n: int, piece: Callable[[int], bytes]
) -> tuple[float, tuple[tuple[str, float], ...]]:
    """log softmax of `logits` at `token` (and the `top_n` best alternatives, as text)."""
    peak = float(logits.max())
    # exp in float32 (fast), the sum in float64 (exact enough: agrees to ~1e-8)
    log_total = peak + float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))
    chosen = float(logits[token]) - log_total
    if top_n <= 0:
        return chosen, ()
    best = np.argpartition(logits, -top_n)[-top_n:]
    best = best[np.argsort(logits[best])[::-1]]
    return chosen, tuple(
        (piece(int(i)).decode("utf-8", errors="replace"), float(logits[i]) - log_total)
        for i in best
    )
