"""The statistics of calibration: agreement and escalation rate at each threshold.

The population is the queries the cascade judges while they may leave the box. A pair stands
for 1/p of them, p the probability with which it was drawn (1 for an escalation, the audit
rate for an audit sample; ``pairs``). At a threshold t the cascade keeps on the box the
answers with confidence >= t, so for each t (Horvitz-Thompson weights, Hajek ratios):

- agreement(t): the weighted mean agreement of the pairs with confidence >= t: how often an
  answer the box keeps agrees with the upstream;
- escalation rate(t): the weighted share of pairs with confidence < t;
- upstream cost per 1000 queries(t): 1000 x the weighted mean, over all pairs, of the cost of
  those below t (what the upstream charged for them), per 1000 queries that may leave.

Intervals are Wilson score intervals at the effective sample size of the weights (Kish:
(sum w)^2 / sum w^2), so a region known only through a few audit samples gets a wide
interval however large their weights. For token F1 (a mean of values in [0, 1], not of 0s
and 1s) the Wilson interval is conservative: such values vary less than 0/1 values of the
same mean.

The recommendation is the lowest threshold (so the lowest escalation rate and cost) whose
agreement meets the target, judged by the interval's lower end (``lower``, the default: the
target is met with 95 % confidence at that one threshold) or by the point estimate
(``point``), among thresholds that keep at least ``min_pairs`` effective pairs. Thresholds
are the pairs' own confidences, rounded down to 4 decimals. Scanning many thresholds makes
the chosen one's lower bound a little optimistic; the audit samples that keep coming after
the change are the check (``appliance status`` shows the agreement at the threshold in force).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from appliance.calibrate.pairs import Pair

Criterion = Literal["lower", "point"]
LEVEL = 0.95  # two-sided confidence of every interval
DIGITS = 4  # decimals of a recommended threshold


def wilson(share: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion `share` observed over `n` (effective) cases."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + level / 2)
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (share + z2 / (2 * n)) / denominator
    half = z * math.sqrt(max(share * (1 - share), 0.0) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def effective_n(weights: Sequence[float]) -> float:
    """Kish's effective sample size of weighted observations."""
    total, squares = math.fsum(weights), math.fsum(w * w for w in weights)
    return 0.0 if squares == 0 else total * total / squares


@dataclass(frozen=True)
class Point:
    """The cascade at one threshold."""

    threshold: float
    kept_pairs: int  # pairs with confidence >= threshold (the answers the box keeps)
    kept_audit_pairs: int
    kept_effective: float  # their effective sample size
    agreement: float | None  # of the kept answers with the upstream's
    agreement_low: float | None
    agreement_high: float | None
    escalation_rate: float  # share of the queries that may leave sent upstream
    escalation_low: float
    escalation_high: float
    cost_per_1000_usd: float  # upstream cost per 1000 queries that may leave

    def to_json(self) -> dict[str, Any]:
        return {k: _rounded(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Bucket:
    """The pairs whose confidence lies in [low, high)."""

    low: float
    high: float
    pairs: int
    audit_pairs: int
    share: float  # of the queries that may leave (weighted)
    agreement: float | None
    agreement_low: float | None
    agreement_high: float | None
    at_low_edge: Point  # the cascade with the threshold at this bucket's lower edge

    def to_json(self) -> dict[str, Any]:
        document = {k: _rounded(v) for k, v in asdict(self).items() if k != "at_low_edge"}
        document["at_low_edge"] = self.at_low_edge.to_json()
        return document


@dataclass(frozen=True)
class Calibration:
    measure: str
    target: float
    criterion: Criterion
    min_pairs: int
    min_audit: int
    pairs: int
    audit_pairs: int
    effective_pairs: float
    current: Point | None  # at the threshold in force
    buckets: list[Bucket]
    recommended: Point | None
    refusal: str | None  # why nothing is recommended
    audit_rate: float  # the policy's, for the audit cost below
    audit_cost_per_1000_usd: float | None  # at the recommended threshold and that rate

    def to_json(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "target": self.target,
            "criterion": self.criterion,
            "level": LEVEL,
            "min_pairs": self.min_pairs,
            "min_audit": self.min_audit,
            "pairs": self.pairs,
            "audit_pairs": self.audit_pairs,
            "effective_pairs": _rounded(self.effective_pairs),
            "current": None if self.current is None else self.current.to_json(),
            "buckets": [b.to_json() for b in self.buckets],
            "recommended": None if self.recommended is None else self.recommended.to_json(),
            "refusal": self.refusal,
            "audit_rate": self.audit_rate,
            "audit_cost_per_1000_usd": _rounded(self.audit_cost_per_1000_usd),
        }


def _rounded(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


class Curve:
    """Suffix sums over the pairs sorted by confidence: any threshold in O(log n)."""

    def __init__(self, pairs: Sequence[Pair], scores: Sequence[float]) -> None:
        order = sorted(range(len(pairs)), key=lambda i: pairs[i].confidence)
        self.confidences = [pairs[i].confidence for i in order]
        weights = [pairs[i].weight for i in order]
        self._w = _suffix(weights)
        self._w2 = _suffix([w * w for w in weights])
        self._wa = _suffix([w * scores[i] for w, i in zip(weights, order, strict=True)])
        self._wc = _suffix([w * pairs[i].cost_usd for w, i in zip(weights, order, strict=True)])
        self._audit = _suffix([float(pairs[i].origin == "audit") for i in order])
        self.total = self._w[0]
        self.total_effective = effective_n(weights)

    def at(self, threshold: float) -> Point:
        k = bisect.bisect_left(self.confidences, threshold)  # the first kept pair
        kept_w, kept_w2 = self._w[k], self._w2[k]
        kept_n = len(self.confidences) - k
        effective = 0.0 if kept_w2 == 0 else kept_w * kept_w / kept_w2
        agreement = low = high = None
        if kept_n:
            agreement = self._wa[k] / kept_w
            low, high = wilson(agreement, effective)
        escalated = (self.total - kept_w) / self.total if self.total else 0.0
        e_low, e_high = wilson(escalated, self.total_effective)
        cost = (self._wc[0] - self._wc[k]) / self.total * 1000 if self.total else 0.0
        return Point(
            threshold=threshold,
            kept_pairs=kept_n,
            kept_audit_pairs=round(self._audit[k]),
            kept_effective=effective,
            agreement=agreement,
            agreement_low=low,
            agreement_high=high,
            escalation_rate=escalated,
            escalation_low=e_low,
            escalation_high=e_high,
            cost_per_1000_usd=cost,
        )

    def kept_cost_per_1000(self, threshold: float) -> float:
        """Upstream cost per 1000 queries of the answers kept local at `threshold`, were
        they all sent (an audit at rate r costs r times this)."""
        k = bisect.bisect_left(self.confidences, threshold)
        return self._wc[k] / self.total * 1000 if self.total else 0.0

    def between(self, low: float, high: float) -> tuple[int, int, float, float, float]:
        """Pairs, audit pairs, weight, weighted agreement sum and sum of squared weights of
        the pairs with low <= confidence < high."""
        a = bisect.bisect_left(self.confidences, low)
        b = bisect.bisect_left(self.confidences, high)
        return (
            b - a,
            round(self._audit[a] - self._audit[b]),
            self._w[a] - self._w[b],
            self._wa[a] - self._wa[b],
            self._w2[a] - self._w2[b],
        )


def _suffix(values: Sequence[float]) -> list[float]:
    """s[i] = sum(values[i:]); s[len] = 0."""
    return [*reversed(list(accumulate(reversed(values), initial=0.0)))]


def candidates(pairs: Sequence[Pair]) -> list[float]:
    """Thresholds worth trying: each pair's confidence rounded down to DIGITS decimals."""
    scale = 10**DIGITS
    return sorted({math.floor(p.confidence * scale) / scale for p in pairs})


def buckets(curve: Curve, count: int) -> list[Bucket]:
    found = []
    for i in range(count):
        low, high = i / count, (i + 1) / count
        top = math.inf if i == count - 1 else high  # the last bucket holds confidence 1.0
        n, audit, weight, agreeing, squares = curve.between(low, top)
        agreement = agreeing / weight if weight else None
        interval = wilson(agreement, weight * weight / squares) if agreement is not None else None
        found.append(
            Bucket(
                low=low,
                high=high,
                pairs=n,
                audit_pairs=audit,
                share=weight / curve.total if curve.total else 0.0,
                agreement=agreement,
                agreement_low=None if interval is None else interval[0],
                agreement_high=None if interval is None else interval[1],
                at_low_edge=curve.at(low),
            )
        )
    return found


def calibrate(
    pairs: Sequence[Pair],
    scores: Sequence[float],
    *,
    measure: str,
    target: float,
    criterion: Criterion = "lower",
    current_threshold: float | None = None,
    audit_rate: float = 0.0,
    min_pairs: int = 30,
    min_audit: int = 10,
    bucket_count: int = 10,
) -> Calibration:
    """Every figure of the module docstring, and the recommendation or why there is none."""
    curve = Curve(pairs, scores)
    audit = sum(1 for p in pairs if p.origin == "audit")
    refusal = None
    recommended = None
    if len(pairs) < min_pairs:
        refusal = (
            f"only {len(pairs)} pairs; at least {min_pairs} are needed (--min-pairs) before a "
            "threshold is recommended"
        )
    elif audit < min_audit:
        refusal = (
            f"only {audit} audit samples (at least {min_audit}, --min-audit): confident answers "
            "above the threshold in force are not observed, so their agreement is unknown. Set "
            "[cascade] audit_rate (e.g. 0.02) and wait for samples; --min-audit 0 only if "
            "every query was escalated (threshold 1.0)"
        )
    else:
        recommended, refusal = _recommend(curve, candidates(pairs), target, criterion, min_pairs)
    return Calibration(
        measure=measure,
        target=target,
        criterion=criterion,
        min_pairs=min_pairs,
        min_audit=min_audit,
        pairs=len(pairs),
        audit_pairs=audit,
        effective_pairs=curve.total_effective,
        current=None if current_threshold is None or not pairs else curve.at(current_threshold),
        buckets=buckets(curve, bucket_count) if pairs else [],
        recommended=recommended,
        refusal=refusal,
        audit_rate=audit_rate,
        audit_cost_per_1000_usd=(
            None
            if recommended is None
            else audit_rate * curve.kept_cost_per_1000(recommended.threshold)
        ),
    )


def _judged(point: Point, criterion: Criterion) -> float | None:
    return point.agreement_low if criterion == "lower" else point.agreement


def _recommend(
    curve: Curve, thresholds: Sequence[float], target: float, criterion: Criterion, min_pairs: int
) -> tuple[Point | None, str | None]:
    best: tuple[float, Point] | None = None
    for threshold in thresholds:  # ascending: the first that qualifies escalates least
        point = curve.at(threshold)
        value = _judged(point, criterion)
        if point.kept_effective < min_pairs or value is None:
            continue
        if value >= target:
            return point, None
        if best is None or value > best[0]:
            best = (value, point)
    if best is None:
        return None, (
            f"no threshold keeps {min_pairs} effective pairs on the box (--min-pairs); "
            "collect more pairs"
        )
    what = "the lower end of its 95% interval" if criterion == "lower" else "its point estimate"
    return None, (
        f"no threshold reaches the target {target:g} by {what} with at least {min_pairs} "
        f"effective pairs kept; the best is {best[0]:.3f} at threshold {best[1].threshold:g}"
    )
