"""Draining the outbox: send what is due to upstreams that are up, record what comes back.

Delivery is at least once: an item is leased (``Outbox.claim``) before it is sent, and a
sender that dies leaves a lease that expires, so another sender takes the item again. The
upstream sees the item id as ``Idempotency-Key`` every time, so a repeat is answered, not
charged twice. A retryable failure (down, timeout, 429, 5xx) puts the item back with an
exponential backoff plus jitter, never sooner than the upstream's ``Retry-After``; a
permanent one (400, 401, 403, 404, 413, 422) marks it failed with the reason, since sending
it again would fail again. When the policy's daily budget is spent, nothing is taken until
the next UTC day, and ``status`` says why.

Up to ``sync.concurrency`` items of a round are in flight at once: a proprietary API takes
seconds per answer, so a backlog after days offline would otherwise drain at a handful of
items a minute. Under a daily budget a send starts only while the budget left covers the
worst case of everything in flight plus this item (its prompt and all of its max_tokens);
otherwise it waits for those answers to land and looks again, so near the end of the budget
sends go one at a time, as before concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from appliance import metrics
from appliance.governance.escalation import Escalation, UpstreamAnswer
from appliance.outbox import Outbox, OutboxItem
from appliance.policy.schema import Policy
from appliance.settings import Settings, UpstreamSettings
from appliance.tco.ledger import Ledger
from appliance.upstream import UplinkMonitor, UpstreamClient, UpstreamError

log = logging.getLogger("appliance.sync")

# seconds a lease outlasts the longest request it covers (sync.request_timeout_s)
LEASE_MARGIN_S = 10.0
# seconds between looks for items leased to senders that died (a SIGKILL, a power cut)
RECLAIM_EVERY_S = 5.0


@dataclass
class DrainReport:
    """What one drain round did."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    expired: int = 0
    waiting: str | None = None  # why nothing was taken (budget, no uplink)
    errors: list[str] = field(default_factory=list)  # one line per failure, no payloads

    def add(self, other: DrainReport) -> None:
        """Count `other` in (rounds of one drain); its waiting reason is the latest."""
        self.sent += other.sent
        self.retried += other.retried
        self.failed += other.failed
        self.expired += other.expired
        self.errors += other.errors
        self.waiting = other.waiting


def cost_usd(
    policy: Policy, upstream: UpstreamSettings, prompt_tokens: int, completion_tokens: int
) -> float:
    """What the upstream charges for these tokens: the policy's price, else config.toml's."""
    price_in, price_out = policy.price_for(
        upstream.name, upstream.price_input_per_mtok, upstream.price_output_per_mtok
    )
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000


def backoff_s(attempts: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter over its upper half: base * 2^(attempts-1)."""
    ceiling = min(max_s, base_s * 2.0 ** max(attempts - 1, 0))
    return ceiling / 2 + rng.random() * ceiling / 2


def estimated_prompt_tokens(messages: Iterable[Mapping[str, str]]) -> int:
    """A generous guess of a prompt's tokens (~3 characters a token) where none was counted."""
    return sum(len(m.get("content", "")) for m in messages) // 3 + 1


def today_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def escalation_of(item: OutboxItem) -> Escalation:
    """The stored item as the upstream client sends it (the map stays in the outbox)."""
    params = item.params
    return Escalation(
        id=item.id,
        created_at=item.created_at,
        upstream=item.upstream,
        # only the pipeline writes it, with 'chat' or 'completion' (an Escalation's endpoint)
        endpoint=item.endpoint,  # type: ignore[arg-type]
        messages=tuple(item.messages),
        mapping={},
        max_tokens=int(params.get("max_tokens", 256)),
        temperature=float(params.get("temperature", 1.0)),
        top_p=float(params.get("top_p", 1.0)),
        stop=tuple(params.get("stop", ())),
        model=item.model,
        device=item.device,
        sensitivity=item.sensitivity,
        priority=item.priority,
    )


class SyncEngine:
    """Sends outbox items to their upstreams; one per daemon, one per `appliance sync`."""

    def __init__(
        self,
        outbox: Outbox,
        clients: Mapping[str, UpstreamClient],
        monitor: UplinkMonitor,
        settings: Settings,
        policy: Callable[[], Policy],
        owner: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.ledger = ledger
        self.outbox, self.clients, self.monitor = outbox, clients, monitor
        self.settings, self.policy, self.owner = settings, policy, owner
        self.clock = clock
        self.rng = rng or random.Random()
        self.upstreams = {u.name: u for u in settings.upstreams}
        self.waiting: str | None = None  # the last reason nothing was sent
        self.last_sync_at: datetime | None = None  # the last answer received
        self._reclaimed_at: float | None = None  # monotonic time of the last look

    # -- budget ------------------------------------------------------------------------

    def budget_left(self) -> float | None:
        """USD left today under the policy's daily budget; None when there is no budget."""
        daily = self.policy().budgets.daily_usd
        if daily is None:
            return None
        spent = self.outbox.spent_since(today_start(self.clock()))
        return daily - spent

    def budget_reason(self) -> str | None:
        left = self.budget_left()
        if left is None or left > 0:
            return None
        daily = self.policy().budgets.daily_usd
        return f"the daily budget of ${daily:.2f} is spent; escalations wait for the next UTC day"

    # -- sending -----------------------------------------------------------------------

    @property
    def lease_s(self) -> float:
        """How long a sender holds an item: longer than one request can take, so that no
        other sender takes an item whose request may still be in flight."""
        sync, outbox = self.settings.sync, self.settings.outbox
        return max(outbox.lease_s, sync.request_timeout_s + LEASE_MARGIN_S)

    async def send(self, item: Escalation) -> UpstreamAnswer:
        """Send one item now and record the answer (raises UpstreamError).

        Every request that may have been billed is in the ledger: an answer with the usage
        the upstream reported (a repeat too: the major APIs do not deduplicate on
        ``Idempotency-Key``), a request that reached the upstream without a usable answer
        (or was abandoned mid-flight) with an estimate, marked as such.
        """
        client = self.clients.get(item.upstream)
        if client is None:
            raise UpstreamError(f"upstream {item.upstream!r} is not configured", retryable=False)
        started = time.perf_counter()
        try:
            answer = await client.complete(item)
        except UpstreamError as e:
            if e.retryable:
                self.monitor.mark_down(item.upstream, str(e))
            if e.reached:
                self._estimate(item, time.perf_counter() - started)
            raise
        except asyncio.CancelledError:  # shutting down with the request in flight
            self._estimate(item, time.perf_counter() - started)
            raise
        self.monitor.mark_up(item.upstream)
        upstream = self.upstreams[item.upstream]
        cost = cost_usd(self.policy(), upstream, answer.prompt_tokens, answer.completion_tokens)
        first = await asyncio.to_thread(self.outbox.complete, item.id, self.owner, answer, cost)
        if not first:
            log.warning("escalation %s was answered twice; both answers are in the ledger", item.id)
        if self.ledger is not None:
            self.ledger.upstream_answer(
                self.policy(),
                request_id=item.id,
                upstream=item.upstream,
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                cost_usd=cost,
                seconds=time.perf_counter() - started,
            )
        self.last_sync_at = self.clock()
        return answer

    def _estimate(self, item: Escalation, seconds: float) -> None:
        """Ledger an estimate for a request that may be billed but gave no usage."""
        upstream = self.upstreams.get(item.upstream)
        if self.ledger is None or upstream is None:
            return
        prompt = estimated_prompt_tokens(item.messages)
        self.ledger.upstream_answer(
            self.policy(),
            request_id=item.id,
            upstream=item.upstream,
            prompt_tokens=prompt,
            completion_tokens=item.max_tokens,
            cost_usd=cost_usd(self.policy(), upstream, prompt, item.max_tokens),
            seconds=seconds,
            estimated=True,
        )

    async def reclaim_gone(self, every_s: float = RECLAIM_EVERY_S) -> int:
        """Take back, due now, the items of senders that died with a request in flight
        (at most once every `every_s` seconds); each such request may have reached the
        upstream and been billed, so each is in the ledger as an estimate."""
        now = time.monotonic()
        if self._reclaimed_at is not None and now - self._reclaimed_at < every_s:
            return 0
        self._reclaimed_at = now
        items = await asyncio.to_thread(self.outbox.reclaim_gone)
        for item in items:
            log.warning("escalation %s: its sender stopped mid-send; it is sent again", item.id)
            self._estimate(escalation_of(item), 0.0)
        return len(items)

    async def settle_failure(
        self, id: str, attempts: int, error: UpstreamError, owner: str | None = None
    ) -> str:
        """After a failed send of an item leased to `owner` (default: this engine): back to
        the queue with a backoff, or failed for good; returns "retry" or "failed"."""
        owner = owner or self.owner
        if not error.retryable:
            await asyncio.to_thread(self.outbox.fail, id, owner, str(error))
            log.warning("escalation %s failed for good: %s", id, error)
            return "failed"
        sync = self.settings.sync
        wait = backoff_s(attempts, sync.backoff_base_s, sync.backoff_max_s, self.rng)
        if error.retry_after_s is not None:
            wait = max(wait, error.retry_after_s)
        when = self.clock() + timedelta(seconds=wait)
        await asyncio.to_thread(self.outbox.release, id, owner, str(error), when)
        log.info("escalation %s retries in %.0f s: %s", id, wait, error)
        return "retry"

    async def drain_once(self) -> DrainReport:
        """One round: expire, check the budget, take what is due for live uplinks, send it."""
        report = DrainReport()
        report.expired = await asyncio.to_thread(self.outbox.expire)
        await self.reclaim_gone()
        reason = await asyncio.to_thread(self.budget_reason)
        live = [name for name in self.clients if self.monitor.is_up(name)]
        if reason is None and not live:
            reason = "no uplink is up"
        if reason is not None:
            self.waiting = report.waiting = reason
            return report
        self.waiting = None
        items = await asyncio.to_thread(
            self.outbox.claim, self.owner, self.settings.sync.batch, live, self.lease_s
        )
        slots = asyncio.Semaphore(self.settings.sync.concurrency)
        landed = asyncio.Condition()
        in_flight: dict[str, float] = {}  # item id -> the most it can cost
        spent: list[str] = []  # the budget reason, once it runs out during this round

        async def one(index: int, item: OutboxItem) -> None:
            async with slots:  # started in claim order: priority, then age
                worst = self.worst_cost(item)
                async with landed:
                    while not spent:
                        budgeted = index and self.policy().budgets.daily_usd is not None
                        left = await asyncio.to_thread(self.budget_left) if budgeted else None
                        if left is not None and left <= 0:
                            reason = await asyncio.to_thread(self.budget_reason)
                            spent.append(reason or "")
                        elif (
                            left is None or not in_flight or left - sum(in_flight.values()) >= worst
                        ):
                            break
                        else:  # it might not fit beside what is in flight: let that land first
                            await landed.wait()
                    if spent:  # the budget ran out during this round: give the rest back
                        await asyncio.to_thread(
                            self.outbox.release, item.id, self.owner, spent[0], self.clock()
                        )
                        return
                    in_flight[item.id] = worst
                try:
                    await self._deliver(item, report)
                finally:
                    async with landed:
                        del in_flight[item.id]
                        landed.notify_all()

        await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        if spent:
            self.waiting = report.waiting = spent[0]
        return report

    def worst_cost(self, item: OutboxItem) -> float:
        """The most `item` can cost: its prompt at ~3 characters a token, all of max_tokens."""
        upstream = self.upstreams.get(item.upstream)
        if upstream is None:
            return 0.0
        prompt = estimated_prompt_tokens(item.messages)
        completion = int(item.params.get("max_tokens", 256))
        return cost_usd(self.policy(), upstream, prompt, completion)

    async def _deliver(self, item: OutboxItem, report: DrainReport) -> None:
        try:
            await self.send(escalation_of(item))
        except UpstreamError as e:
            report.errors.append(f"{item.id}: {e}")
            outcome = await self.settle_failure(item.id, item.attempts, e)
            metrics.SYNC_ATTEMPTS.labels(item.upstream, outcome).inc()
            if outcome == "failed":
                report.failed += 1
            else:
                report.retried += 1
        else:
            metrics.SYNC_ATTEMPTS.labels(item.upstream, "sent").inc()
            report.sent += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Drain whenever an uplink is up, every `sync.interval_s`, until `stop` is set."""
        interval = self.settings.sync.interval_s
        while not stop.is_set():
            try:
                report = await self.drain_once()
                busy = report.sent + report.retried + report.failed > 0
            except Exception:
                log.exception("outbox drain failed; will retry")
                busy = False
            if busy:
                continue  # more may be due: go again at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
