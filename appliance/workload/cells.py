"""Requests added up by cell: sensitivity x complexity, optionally split by one more key.

For each cell: how many requests and by which route, the escalation rate ((escalated +
queued) / (local + escalated + queued); refused requests count in neither, as in ``appliance
report tco``), the tokens served on the box and by upstreams, the local confidence's
distribution and the share of it below the policy's threshold, agreement of the local answer
with the upstream's (normalised exact match and mean token F1 over the golden pairs: the
escalations whose local answer and upstream answer are both known), and what the cell cost
so far (the box's time, the upstream answers) beside what its local tokens would have cost
at the API.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from appliance.governance.agreement import exact_match, token_f1
from appliance.workload.governed import Governed

ROUTES = ("local", "escalated", "queued", "refused")
SPLITS: dict[str, Callable[[Governed], str | None]] = {  # the optional third key
    "device": lambda g: g.device,
    "route": lambda g: g.route,
    "model": lambda g: g.model,
}


@dataclass
class Cell:
    """The running sums of one cell."""

    sensitivity: str
    complexity: str
    split: str | None = None  # the third key's value (device, route or model), if any
    routes: Counter[str] = field(default_factory=Counter)
    local_tokens: int = 0
    upstream_tokens: int = 0
    local_cost_usd: float = 0.0
    upstream_cost_usd: float = 0.0
    api_value_usd: float = 0.0
    confidences: list[float] = field(default_factory=list)
    pairs: int = 0
    exact: int = 0
    f1_sum: float = 0.0
    trainable_pairs: int = 0
    upstreams: Counter[str] = field(default_factory=Counter)  # where its escalations went

    def add(self, g: Governed, trainable: frozenset[str]) -> None:
        self.routes[g.route] += 1
        self.local_tokens += g.local_tokens
        self.upstream_tokens += g.upstream_tokens
        self.local_cost_usd += g.local_cost_usd
        self.upstream_cost_usd += g.upstream_cost_usd
        self.api_value_usd += g.api_value_usd
        if g.confidence is not None:
            self.confidences.append(g.confidence)
        if g.upstream is not None and g.route in ("escalated", "queued"):
            self.upstreams[g.upstream] += 1
        if g.paired:
            assert g.local_answer is not None and g.golden_answer is not None
            self.pairs += 1
            self.exact += exact_match(g.local_answer, g.golden_answer)
            self.f1_sum += token_f1(g.local_answer, g.golden_answer)
            self.trainable_pairs += g.golden_upstream in trainable

    @property
    def requests(self) -> int:
        return sum(self.routes.values())

    @property
    def decided(self) -> int:
        """Requests with a local-or-escalate decision (refused ones excluded)."""
        return self.requests - self.routes["refused"]

    @property
    def escalation_rate(self) -> float | None:
        escalated = self.routes["escalated"] + self.routes["queued"]
        return escalated / self.decided if self.decided else None

    @property
    def agreement(self) -> float | None:
        """Mean token F1 of the local answers against the golden ones; None without pairs."""
        return self.f1_sum / self.pairs if self.pairs else None

    @property
    def exact_match(self) -> float | None:
        return self.exact / self.pairs if self.pairs else None

    def below(self, threshold: float) -> float | None:
        """The share of local answers whose confidence is below `threshold`."""
        if not self.confidences:
            return None
        return sum(c < threshold for c in self.confidences) / len(self.confidences)

    def quantile(self, q: float) -> float | None:
        """The `q` quantile of the local confidence (inclusive method); None without any."""
        values = sorted(self.confidences)
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cuts[round(q * 100) - 1] if 0 < q < 1 else values[0 if q <= 0 else -1]


def cells(
    governed: Iterable[Governed], trainable: frozenset[str], split: str | None = None
) -> list[Cell]:
    """The cells, sorted by sensitivity, complexity, then the split's value."""
    key_of = SPLITS[split] if split is not None else None
    found: dict[tuple[str, str, str | None], Cell] = {}
    for g in governed:
        third = key_of(g) if key_of is not None else None
        key = (g.sensitivity, g.complexity, third)
        cell = found.get(key)
        if cell is None:
            cell = found[key] = Cell(g.sensitivity, g.complexity, third)
        cell.add(g, trainable)
    return [found[k] for k in sorted(found, key=lambda k: (k[0], k[1], k[2] or ""))]
