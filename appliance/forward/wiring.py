"""The store-and-forward parts, built once from settings: for the daemon and `appliance sync`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from appliance.forward import uplinks
from appliance.forward.engine import DrainReport, SyncEngine
from appliance.forward.escalator import OutboxEscalator
from appliance.home import Home
from appliance.outbox import Outbox, owners
from appliance.policy.schema import Policy
from appliance.settings import Settings
from appliance.tco.ledger import Ledger
from appliance.upstream import UplinkMonitor, UpstreamClient

SHUTDOWN_WAIT_S = 5.0  # seconds a stopping daemon waits for escalations still in flight


@dataclass
class Forwarding:
    home: Home
    outbox: Outbox
    clients: dict[str, UpstreamClient]
    monitor: UplinkMonitor
    engine: SyncEngine
    escalator: OutboxEscalator
    ledger: Ledger
    owns_ledger: bool

    async def run(self, stop: asyncio.Event) -> None:
        """Probe the uplinks and drain the outbox until `stop` is set."""
        await asyncio.gather(
            self.monitor.run(stop),
            self.engine.run(stop),
            uplinks.keep(self.home, self.monitor, stop),
        )

    async def drain(self) -> DrainReport:
        """Probe what is due and send until a round sends nothing (`sync --once`, relays)."""
        total = DrainReport()
        while True:
            await self.monitor.probe_due()
            report = await self.engine.drain_once()
            total.add(report)
            if report.sent + report.retried + report.failed == 0:
                return total

    async def aclose(self) -> None:
        # a send in flight ends (answer stored) or keeps its lease for the next start
        await self.escalator.wait_idle(SHUTDOWN_WAIT_S)
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        # a send cut by the close records its estimate and hands its item back before the
        # ledger and the outbox close
        await self.escalator.wait_idle(SHUTDOWN_WAIT_S)
        if self.owns_ledger:
            await asyncio.to_thread(self.ledger.close)


def build(
    home: Home,
    settings: Settings,
    policy: Callable[[], Policy],
    role: str,
    ledger: Ledger | None = None,
) -> Forwarding:
    """Everything store-and-forward needs; `role` names the lease owner ("daemon", "cli").

    Upstream answers go into `ledger` (the daemon shares its own); without one, a ledger is
    made here and closed by ``aclose``.
    """
    owns_ledger = ledger is None
    ledger = ledger if ledger is not None else Ledger(home, settings)
    outbox = Outbox(home, settings.outbox)
    clients = {
        u.name: UpstreamClient(
            u,
            timeout_s=settings.sync.request_timeout_s,
            probe_timeout_s=settings.sync.probe_timeout_s,
        )
        for u in settings.upstreams
    }
    monitor = UplinkMonitor(clients, settings.sync)
    owner = owners.new_owner(role)
    engine = SyncEngine(outbox, clients, monitor, settings, policy, owner, ledger=ledger)
    return Forwarding(
        home, outbox, clients, monitor, engine, OutboxEscalator(engine), ledger, owns_ledger
    )
