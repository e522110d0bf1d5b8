"""The daemon's Escalator: the outbox for durability, the upstream clients to answer now.

Every upstream request is paid for, so an escalation is sent at most once while a send of it
is in flight, whoever sends it: this request's handler, the outbox drain, another process.

``answer_now`` makes the item durable *already leased* to itself (``sending``, with a lease
longer than a request can take), so the drain leaves it alone; then it sends it. The device
waits at most `timeout_s`: past that it gets the local answer and the escalation id, but the
request is not cancelled (it may already be at the upstream, and a cancelled request that
was billed would be sent and billed again). It runs on; when it is over, its answer is
stored (the device fetches it by id), or its failure hands the item back to the drain with a
backoff. If the process dies meanwhile, the lease runs out and the drain sends it once more.

``enqueue`` only stores an item (queued), for the drain to send; an audit sample (a confident
answer sent only to measure it, ``calibrate.sampling``) only while the daily budget lasts.
"""

from __future__ import annotations

import asyncio
import logging

from appliance.forward.engine import SyncEngine
from appliance.governance.escalation import (
    Escalation,
    EscalationUnavailable,
    UplinkError,
    UpstreamAnswer,
)
from appliance.outbox import OutboxError
from appliance.upstream import UpstreamError

log = logging.getLogger("appliance.sync")


class OutboxEscalator:
    def __init__(self, engine: SyncEngine) -> None:
        self.engine = engine
        self.owner = f"{engine.owner}/now"  # the lease owner of the sends made here
        self._in_flight: set[asyncio.Task[UpstreamAnswer]] = set()

    def uplink_up(self, upstream: str) -> bool:
        return self.engine.monitor.is_up(upstream)

    async def enqueue(self, item: Escalation) -> None:
        if item.origin == "audit":  # a measurement, not a promise: none once the budget is spent
            reason = await asyncio.to_thread(self.engine.budget_reason)
            if reason is not None:
                raise EscalationUnavailable(reason)
        try:
            await asyncio.to_thread(self.engine.outbox.enqueue, item)
        except OutboxError as e:  # full, with when_full = "reject"
            raise EscalationUnavailable(str(e)) from e

    async def note_local(
        self, item: Escalation, local_answer: str, confidence: float | None
    ) -> None:
        await asyncio.to_thread(
            self.engine.outbox.note_local_answer, item, local_answer, confidence
        )

    async def answer_now(self, item: Escalation, timeout_s: float) -> UpstreamAnswer:
        """Send `item` now and wait up to `timeout_s` for its answer.

        Raises ``EscalationUnavailable`` when the outbox cannot keep it (nothing is sent),
        ``UplinkError`` when no answer is to be had now (the item stays in the outbox: it is
        answered later, by this send or by the drain).
        """
        reason = await asyncio.to_thread(self.engine.budget_reason)
        if reason is not None:
            raise UplinkError(reason)
        try:
            mine = await asyncio.to_thread(
                self.engine.outbox.enqueue_leased, item, self.owner, self.engine.lease_s
            )
        except OutboxError as e:
            raise EscalationUnavailable(str(e)) from e
        if not mine:  # the id is already kept (and maybe sent) by someone else
            raise UplinkError(f"escalation {item.id} is already in the outbox")
        task = asyncio.create_task(self._send(item), name=f"escalation-{item.id}")
        self._in_flight.add(task)
        task.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            raise UplinkError(
                f"no answer from {item.upstream} within {timeout_s:g} s "
                "(the request goes on; its answer is kept for the escalation id)"
            ) from None

    def _finished(self, task: asyncio.Task[UpstreamAnswer]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaited was already handled

    async def _send(self, item: Escalation) -> UpstreamAnswer:
        """One attempt under this escalator's lease; a failure goes back to the drain."""
        try:
            answer = await self.engine.send(item)
        except UpstreamError as e:
            await self.engine.settle_failure(item.id, 1, e, self.owner)
            raise
        return answer

    async def wait_idle(self, timeout_s: float) -> None:
        """Let the sends still in flight finish (shutdown); the rest keep their lease."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout_s)
