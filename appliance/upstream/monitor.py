"""Is the uplink up? Answered from memory, kept current by background probes.

The router asks ``is_up`` on the request path, so it must never touch the network: the
answer is whatever the last probe (or the sync engine, through ``mark_up``/``mark_down``)
found. A down upstream is probed with exponential backoff and jitter, so a box with a dead
uplink does not keep a radio or a satellite link busy, and a fleet of boxes that lost the
same uplink does not come back in lock-step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from appliance.settings import SyncSettings
from appliance.upstream.client import UpstreamClient
from appliance.upstream.errors import UpstreamError

log = logging.getLogger(__name__)

JITTER = 0.10  # a backoff delay varies by this fraction either way
MAX_SLEEP_S = 1.0  # `run` wakes at least this often, so that a stop is seen promptly
MIN_SLEEP_S = 0.01


@dataclass
class UplinkState:
    """What is known about one upstream's reachability."""

    name: str
    up: bool = False  # never probed counts as down: nothing leaves on a guess
    last_ok_at: float | None = None  # wall time (time.time()) of the last success
    last_error: str | None = None  # one line, from the last failure
    failures: int = 0  # consecutive failures since the last success
    next_probe_at: float = 0.0  # monotonic (the monitor's clock); 0 = due now
    checked_at: float | None = None  # wall time of the last outcome (probe or send)


class UplinkMonitor:
    """Probes every upstream when due and remembers the outcome; see the module docstring."""

    def __init__(
        self,
        clients: Mapping[str, UpstreamClient],
        settings: SyncSettings,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._clients = dict(clients)
        self._settings = settings
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._states = {name: UplinkState(name=name) for name in self._clients}
        self._probing: set[str] = set()

    @property
    def clients(self) -> Mapping[str, UpstreamClient]:
        """The monitored clients by name (the sync engine sends through the same ones)."""
        return self._clients

    # -- queries (no I/O) ---------------------------------------------------------------

    def is_up(self, name: str) -> bool:
        """Whether ``name`` answered its last probe; unknown or never probed is False."""
        state = self._states.get(name)
        return state is not None and state.up

    def states(self) -> list[UplinkState]:
        """A snapshot of every upstream's state, in configuration order."""
        return [replace(state) for state in self._states.values()]

    def next_due(self) -> float | None:
        """The clock time of the earliest scheduled probe; None with no upstreams."""
        return min((s.next_probe_at for s in self._states.values()), default=None)

    # -- updates ------------------------------------------------------------------------

    def mark_up(self, name: str) -> None:
        """The sync engine got an answer from ``name``: it is up; probe it again later."""
        state = self._states.get(name)
        if state is None:
            return  # an upstream removed from config.toml: nothing to remember
        if not state.up:
            log.info("uplink %s is up", name)
        state.up = True
        state.failures = 0
        state.last_error = None
        state.last_ok_at = state.checked_at = self._wall()
        state.next_probe_at = self._clock() + self._settings.probe_interval_s

    def mark_down(self, name: str, error: str | BaseException) -> None:
        """``name`` failed (a probe or a send): down, next probe after a backoff."""
        state = self._states.get(name)
        if state is None:
            return
        message = " ".join(str(error).split()) or type(error).__name__
        if state.up or state.failures == 0:
            log.warning("uplink %s is down: %s", name, message)
        state.up = False
        state.failures += 1
        state.last_error = message
        state.checked_at = self._wall()
        delay = self._backoff(state.failures)
        retry_after = getattr(error, "retry_after_s", None)
        if isinstance(retry_after, int | float) and retry_after > delay:
            # The upstream said when to come back (429/503): no point asking sooner.
            delay = min(float(retry_after), self._settings.backoff_max_s)
        state.next_probe_at = self._clock() + delay

    def _backoff(self, failures: int) -> float:
        """``probe_interval_s * 2**(failures-1)``, capped at ``backoff_max_s``, ±10% jitter."""
        base = self._settings.probe_interval_s * 2.0 ** min(failures - 1, 60)
        delay = min(base, self._settings.backoff_max_s)
        return delay * self._rng.uniform(1.0 - JITTER, 1.0 + JITTER)

    # -- probing ------------------------------------------------------------------------

    async def probe_due(self) -> None:
        """Probe, concurrently, every upstream whose next probe time has come."""
        now = self._clock()
        due = [
            name
            for name, state in self._states.items()
            if state.next_probe_at <= now and name not in self._probing
        ]
        if due:
            await asyncio.gather(*(self._probe(name) for name in due))

    async def _probe(self, name: str) -> None:
        self._probing.add(name)
        try:
            await self._clients[name].probe()
        except UpstreamError as e:
            # A permanent error (a refused key) is down too, with the reason an operator
            # needs; it is probed again on the same backoff in case the key file is fixed.
            self.mark_down(name, e)
        except Exception as e:  # a bug in a probe must not stop the others or the loop
            log.exception("probe of uplink %s failed unexpectedly", name)
            self.mark_down(name, f"probe failed: {type(e).__name__}")
        else:
            self.mark_up(name)
        finally:
            self._probing.discard(name)

    async def run(self, stop: asyncio.Event) -> None:
        """Probe whatever is due until ``stop`` is set, sleeping at most 1 s at a time."""
        while not stop.is_set():
            await self.probe_due()
            due = self.next_due()
            wait = MAX_SLEEP_S if due is None else due - self._clock()
            # A floor keeps a probe still in flight elsewhere from turning this into a spin.
            wait = min(max(wait, MIN_SLEEP_S), MAX_SLEEP_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
