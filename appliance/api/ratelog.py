"""Log lines that cannot flood: the first of a kind now, then one per interval with a count.

Under attack the same event happens thousands of times a second (a refused connection, a
failed ``accept()``); a line, let alone a traceback, for each would fill the disk and the
journal (issue 14: 137 MB in 40 s). The count keeps what the operator needs: how often.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Kind:
    window_start: float
    suppressed: int = 0
    message: str = ""
    flush: asyncio.TimerHandle | None = None


class RateLimitedLog:
    """One warning per kind of event per ``interval_s``; the ones held back are counted.

    ``note`` returns True when the event was logged (a caller may then add detail, e.g. a
    traceback); held-back events are summed up in one line at the end of the interval (on
    the running event loop, else with the next event of that kind).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._kinds: dict[str, _Kind] = {}

    def note(self, kind: str, message: str, *, emit: bool = True) -> bool:
        now = self.clock()
        state = self._kinds.get(kind)
        if state is not None and now - state.window_start < self.interval_s:
            state.suppressed += 1
            state.message = message
            if state.flush is None:
                state.flush = self._schedule(kind, state.window_start + self.interval_s - now)
            return False
        if state is not None:
            self._summarise(kind)
        self._kinds[kind] = _Kind(window_start=now)
        if emit:
            self.logger.warning("%s", message)
        return True

    def _schedule(self, kind: str, delay: float) -> asyncio.TimerHandle | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return loop.call_later(max(delay, 0.0), self._summarise, kind)

    def _summarise(self, kind: str) -> None:
        state = self._kinds.get(kind)
        if state is None or not state.suppressed:
            return
        if state.flush is not None:
            state.flush.cancel()
        self.logger.warning(
            "%s (and %d more like it in %.0f s)", state.message, state.suppressed, self.interval_s
        )
        state.suppressed, state.flush = 0, None
