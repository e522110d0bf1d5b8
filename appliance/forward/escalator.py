"""The daemon's Escalator: the outbox for durability, the upstream clients to answer now.

``answer_now`` first makes the item durable (the golden record and the idempotency key
exist before any byte leaves), then sends it; if the upstream fails, the item simply stays
queued and the background drain sends it later. ``enqueue`` only stores it.
"""

from __future__ import annotations

import asyncio

from appliance.forward.engine import SyncEngine
from appliance.governance.escalation import (
    Escalation,
    EscalationUnavailable,
    UplinkError,
    UpstreamAnswer,
)
from appliance.outbox import OutboxError


class OutboxEscalator:
    def __init__(self, engine: SyncEngine) -> None:
        self.engine = engine

    def uplink_up(self, upstream: str) -> bool:
        return self.engine.monitor.is_up(upstream)

    async def enqueue(self, item: Escalation) -> None:
        try:
            await asyncio.to_thread(self.engine.outbox.enqueue, item)
        except OutboxError as e:  # full, with when_full = "reject"
            raise EscalationUnavailable(str(e)) from e

    async def answer_now(self, item: Escalation, timeout_s: float) -> UpstreamAnswer:
        await self.enqueue(item)
        reason = await asyncio.to_thread(self.engine.budget_reason)
        if reason is not None:
            raise UplinkError(reason)
        try:
            return await asyncio.wait_for(self.engine.send(item), timeout_s)
        except TimeoutError as e:
            raise UplinkError(f"no answer from {item.upstream} within {timeout_s:.0f} s") from e
