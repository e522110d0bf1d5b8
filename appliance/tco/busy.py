"""The box's busy time, each second charged once, however many requests shared it.

With continuous batching (or two models answering at once) several local runs overlap in
time; charging each its own wall time would bill the box several times over for the same
second. ``BusyTime.charge`` gives a run the part of its interval no earlier charge covered,
so the charges add up to the union of the runs: the time the box actually spent answering.
The first run to finish pays for a shared stretch; the totals, which the report adds up, are
exact.
"""

from __future__ import annotations

import bisect
import threading

HORIZON_S = 3600.0  # seconds of history kept; no local run lasts longer


class BusyTime:
    """Disjoint, sorted intervals (monotonic seconds) already charged."""

    def __init__(self, horizon_s: float = HORIZON_S) -> None:
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._horizon = horizon_s
        self._lock = threading.Lock()

    def charge(self, start: float, end: float) -> float:
        """Seconds of [start, end] not charged before; they are charged now."""
        if end <= start:
            return 0.0
        with self._lock:
            first = bisect.bisect_left(self._ends, start)  # the first that ends at/after start
            last = bisect.bisect_right(self._starts, end)  # past the last that starts by end
            covered = sum(
                max(0.0, min(end, e) - max(start, s))
                for s, e in zip(self._starts[first:last], self._ends[first:last], strict=True)
            )
            if first < last:
                start_merged = min(start, self._starts[first])
                end_merged = max(end, self._ends[last - 1])
            else:
                start_merged, end_merged = start, end
            self._starts[first:last] = [start_merged]
            self._ends[first:last] = [end_merged]
            stale = bisect.bisect_left(self._ends, end - self._horizon)
            if stale:
                del self._starts[:stale], self._ends[:stale]
        return (end - start) - covered
