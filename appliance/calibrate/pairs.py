"""Calibration pairs from the outbox: local answer, confidence, golden answer, weight.

A pair is an answered outbox item that holds the local answer and its confidence and says
why it went upstream (``origin``): ``cascade`` items were sent because the confidence was
below the threshold in force (every such query that reached the upstream is here: weight
1); ``audit`` items are confident answers drawn at ``audit_rate`` r (each stands for 1/r
queries like it: weight 1/r). Items sent for another reason (the device asked ``prefer``,
the pre-check sent a hard prompt first, or the item predates the column) are not a sample
of the cascade's queries and are left out, counted in ``skipped``.

The local and the golden answers are compared in egress terms (placeholders where the query
held PII), as both are stored. The agreement of a pair is 1 or 0 under normalised exact match
or under an embedding similarity cut, and the token F1 (between 0 and 1) under ``f1``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from appliance.calibrate.errors import CalibrationError
from appliance.governance.agreement import cosine, exact_match, token_f1
from appliance.home import Home
from appliance.outbox import OutboxItem, OutboxResult

if TYPE_CHECKING:  # onnxruntime loads only for --measure embedding
    from appliance.runtime.onnx_backend import OnnxBackend

MeasureName = Literal["exact", "f1", "embedding"]
EMBED_BATCH = 32  # texts per embedding call


@dataclass(frozen=True)
class Pair:
    id: str
    created_at: str
    model: str
    origin: str  # "cascade" or "audit"
    weight: float  # 1 / the probability with which this pair was drawn
    confidence: float
    local: str
    golden: str
    cost_usd: float  # what the upstream's answer cost


@dataclass
class PairSet:
    pairs: list[Pair] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # why items were left out

    @property
    def audit(self) -> int:
        return sum(1 for p in self.pairs if p.origin == "audit")


def collect(
    golden: Iterable[tuple[OutboxItem, OutboxResult]],
    model: str | None = None,
    since: str | None = None,
) -> PairSet:
    """The calibration pairs among `golden` (``Outbox.golden()``), for one local model.

    `since`: only items created at or after this outbox time stamp (e.g. after an adapter
    was installed: a new model's confidences are another distribution). With pairs of
    several models and no `model`, calibration is refused: their confidences differ.
    """
    found = PairSet()
    models: set[str] = set()
    for item, result in golden:
        if since is not None and item.created_at < since:
            found.skipped["before --since"] += 1
            continue
        if model is not None and item.model != model:
            found.skipped["another model"] += 1
            continue
        if item.origin not in ("cascade", "audit"):
            found.skipped["sent upstream first (prefer, hard prompt) or before calibration"] += 1
            continue
        if item.local_answer is None or item.confidence is None:
            found.skipped["no local answer or no confidence"] += 1
            continue
        rate = item.audit_rate if item.origin == "audit" else 1.0
        if rate is None or not 0 < rate <= 1:
            found.skipped["an audit item without a sampling rate"] += 1
            continue
        models.add(item.model)
        found.pairs.append(
            Pair(
                id=item.id,
                created_at=item.created_at,
                model=item.model,
                origin=item.origin,
                weight=1.0 / rate,
                confidence=float(item.confidence),
                local=item.local_answer,
                golden=result.text,
                cost_usd=result.cost_usd,
            )
        )
    if model is None and len(models) > 1:
        raise CalibrationError(
            f"the pairs come from {len(models)} models ({', '.join(sorted(models))}); their "
            "confidences are not comparable: choose one with --model"
        )
    return found


class Agreement(Protocol):
    """How a local answer is judged against the golden one: a score in [0, 1] per pair."""

    @property
    def name(self) -> str: ...

    def score(self, pairs: Sequence[Pair]) -> list[float]: ...


class ExactMatch:
    name = "normalised exact match"

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        return [float(exact_match(p.local, p.golden)) for p in pairs]


class TokenF1:
    name = "token F1"

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        return [token_f1(p.local, p.golden) for p in pairs]


class EmbeddingSimilarity:
    """1 where the cosine of the two answers' embeddings is at least `cut`, else 0."""

    def __init__(self, backend: OnnxBackend, label: str, cut: float) -> None:
        self.backend, self.cut = backend, cut
        self.name = f"embedding cosine >= {cut:g} ({label})"

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(pairs), EMBED_BATCH):
            batch = pairs[start : start + EMBED_BATCH]
            vectors, _ = self.backend.embed([t for p in batch for t in (p.local, p.golden)])
            for i in range(len(batch)):
                similar = cosine(vectors[2 * i], vectors[2 * i + 1]) >= self.cut
                scores.append(float(similar))
        return scores


def embedding_backend(home: Home, name: str | None) -> tuple[OnnxBackend, str]:
    """The active ONNX embedding bundle `name` (or the only one), loaded; and its label."""
    from appliance.bundles import records
    from appliance.runtime.manager import spec_from_record
    from appliance.runtime.onnx_backend import OnnxBackend
    from appliance.state import open_state

    db = open_state(home)
    try:
        active = records.query(db, "WHERE a.version IS NOT NULL AND b.kind = 'model'")
    finally:
        db.close()
    embedders = [
        b
        for b in active
        if b.manifest["model"].get("role") == "embedding"
        and b.manifest["model"].get("format") == "onnx"
        and not b.revoked
    ]
    if name is not None:
        embedders = [b for b in embedders if b.name == name]
    if len(embedders) != 1:
        named = ", ".join(b.name for b in embedders) or "none"
        raise CalibrationError(
            "--measure embedding needs one active ONNX embedding bundle"
            + (f" named {name}" if name else "; name it with --embedding")
            + f" (found: {named})"
        )
    bundle = embedders[0]
    backend = OnnxBackend(spec_from_record(home, bundle))
    backend.load()
    return backend, f"{bundle.name} {bundle.version}"
