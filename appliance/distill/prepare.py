"""From the exported JSONL to what training reads: clean pairs, the split, token ids.

Duplicates are dropped (the export drops its own; a file joined from two exports may repeat
pairs), pairs that would teach the model to invent values are left out (``hygiene``), the
held-out split is drawn (``split``) and both sides are written to the run folder, so eval
and a later look by hand read exactly what training left aside. Pairs longer than the
model's context, or than ``max_tokens``, are left out of training and counted, never cut:
a prompt cut at the front is not one the box would ever send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.distill import hygiene
from appliance.distill.base import BaseModel
from appliance.distill.encoding import ChatEncoder, Encoded
from appliance.distill.golden import GoldenPair, drop_duplicates, read_pairs, write_pairs
from appliance.distill.rundir import RunDir
from appliance.distill.split import split
from appliance.errors import DistillError


@dataclass
class Prepared:
    train: list[Encoded]
    heldout: list[GoldenPair]
    heldout_encoded: list[Encoded]
    counts: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # why each screened-out pair went


def prepare(
    golden: Path,
    run: RunDir,
    base: BaseModel,
    heldout_share: float,
    seed: int,
    max_tokens: int,
) -> Prepared:
    pairs, duplicates = drop_duplicates(read_pairs(golden))
    screened = hygiene.screen(pairs)
    sides = split(screened.kept, heldout_share, seed)
    if not sides.train:
        raise DistillError(f"{golden}: no pair is left to train on")
    run.root.mkdir(parents=True, exist_ok=True)
    write_pairs(run.train_set, sides.train)
    write_pairs(run.heldout_set, sides.heldout)
    limit = min(max_tokens, base.context_length)
    encoder = ChatEncoder(base)
    try:
        train = [encoder.encode(p) for p in sides.train]
        heldout = [encoder.encode(p) for p in sides.heldout]
    finally:
        encoder.close()
    fitting = [e for e in train if len(e.input_ids) <= limit]
    if not fitting:
        raise DistillError(f"every training pair is longer than {limit} tokens")
    return Prepared(
        train=fitting,
        heldout=sides.heldout,
        heldout_encoded=[e for e in heldout if len(e.input_ids) <= limit],
        counts={
            "pairs": len(pairs) + duplicates,
            "duplicates": duplicates,
            "screened_out": len(screened.dropped),
            "train": len(sides.train),
            "heldout": len(sides.heldout),
            "too_long": len(train) - len(fitting),
            "answer_tokens": sum(e.answer_tokens for e in fitting),
        },
        dropped=[f"pair {index + 1}: {why}" for index, why in screened.dropped],
    )
