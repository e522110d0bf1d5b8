"""The held-out split: a seeded share of the distinct prompts that training never sees.

The split is by prompt, not by pair: two upstream answers to one prompt must not land on
both sides, or the held-out score measures recall of a training example. Each prompt's
side follows from SHA-256 of the seed and the prompt alone, so the split is the same
whatever the order of the file, and a prompt added to the golden set later does not move
any other prompt to the other side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.distill.golden import GoldenPair


@dataclass(frozen=True)
class Split:
    train: list[GoldenPair]
    heldout: list[GoldenPair]


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest()


def split(pairs: Sequence[GoldenPair], heldout_share: float, seed: int) -> Split:
    """Hold out round(`heldout_share` x distinct prompts) of them, at least one when there
    are two prompts or more and the share is above 0; file order kept on each side."""
    if not 0 <= heldout_share < 1:
        raise ValueError("the held-out share must be in [0, 1)")
    prompts = sorted({p.prompt_key for p in pairs}, key=lambda k: _rank(seed, k))
    count = round(heldout_share * len(prompts))
    if heldout_share > 0 and len(prompts) >= 2:
        count = min(max(count, 1), len(prompts) - 1)
    held = set(prompts[:count])
    return Split(
        train=[p for p in pairs if p.prompt_key not in held],
        heldout=[p for p in pairs if p.prompt_key in held],
    )
