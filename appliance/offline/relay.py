"""The relay's side: ``appliance relay process IN --out OUT`` on a machine with an uplink.

A relay is an appliance home of its own (its own identity, state.db, ``[[upstreams]]``,
policy and budget) that lists the cards of the boxes it serves in ``[offline]
appliance_cards``. One run:

1. *takes in* every request batch in IN that is signed by a known box and sealed to this
   relay, refusing tampered, unknown and replayed ones; the items join the relay's own
   outbox (same ids, so the upstream's ``Idempotency-Key`` is the box's escalation id);
2. *sends* them with the same engine as ``appliance sync`` (leases, backoff, budget);
3. *answers back*: for each box, the items that finished (answered, refused for good, or
   expired here) go into a result batch sealed to that box and signed by the relay.
   Items still waiting (uplink down, budget spent) stay for the next run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from appliance.errors import OfflineError
from appliance.forward.wiring import build
from appliance.home import Home
from appliance.offline import envelope, files, payload
from appliance.offline.identity import Card, Identity
from appliance.offline.ledger import Batch, Ledger
from appliance.outbox import Outbox, OutboxError
from appliance.outbox.model import fmt_time
from appliance.policy.schema import Policy
from appliance.settings import Settings


@dataclass
class RelayReport:
    taken: int = 0  # request batches taken in
    items_in: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    waiting: str | None = None
    files: list[Path] = field(default_factory=list)  # result batches written
    items_out: int = 0
    pending: int = 0  # relayed items still waiting to be sent
    skipped: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def box_cards(settings: Settings, home: Home) -> dict[str, Card]:
    if not settings.offline.appliance_cards:
        raise OfflineError(
            f"no boxes are configured: list their card files in [offline] appliance_cards in "
            f"{home.config_file} (each box writes its own with `appliance identity --out FILE`)"
        )
    cards = [Card.load(Path(p)) for p in settings.offline.appliance_cards]
    return {c.key_id: c for c in cards}


async def process(
    home: Home,
    settings: Settings,
    policy: Policy,
    inbox: Path,
    out: Path,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RelayReport:
    boxes = box_cards(settings, home)
    me = Identity(home, settings.offline.name)
    report = RelayReport()
    with Ledger(home) as ledger:
        outbox = Outbox(home, settings.outbox)
        try:
            _take_in(inbox, me, boxes, outbox, ledger, settings, report, clock)
        finally:
            outbox.close()
        await _send(home, settings, policy, report)
        with Outbox(home, settings.outbox) as outbox:
            for card in boxes.values():
                _answer_back(card, me, outbox, ledger, settings, out, report, clock)
                report.pending += ledger.pending_for(card.key_id)
    return report


def _take_in(
    inbox: Path,
    me: Identity,
    boxes: dict[str, Card],
    outbox: Outbox,
    ledger: Ledger,
    settings: Settings,
    report: RelayReport,
    clock: Callable[[], datetime],
) -> None:
    for path in files.batch_files(inbox):
        try:
            opened = ledger.take(path, "requests", me, boxes, settings.offline.max_batch_bytes)
            if opened is None:
                report.skipped.append(path.name)
                continue
            requests = payload.parse(payload.Requests, opened.payload, path.name)
            ids = [r.id for r in requests.requests]
            foreign = [i for i, peer in ledger.owners(ids).items() if peer != opened.sender.key_id]
            if foreign:
                raise OfflineError(
                    f"{path.name}: refused: item {foreign[0]} was relayed for another box"
                )
            try:
                outbox.enqueue_many([payload.escalation_of(r) for r in requests.requests])
                _send_again(outbox, ids)
            except OutboxError as e:
                raise OfflineError(f"{path.name}: not taken: {e}") from e
        except OfflineError as e:
            report.refused.append(str(e))
            continue
        batch = Batch(
            opened.header.batch_id,
            "in",
            "requests",
            opened.sender.key_id,
            opened.sender.name,
            len(requests.requests),
            fmt_time(clock()),
            path.name,
        )
        ledger.relayed(batch, [r.id for r in requests.requests])
        report.taken += 1
        report.items_in += len(requests.requests)
        if warning := files.mark_taken(path):
            report.warnings.append(warning)


def _send_again(outbox: Outbox, ids: list[str]) -> None:
    """Items the box sends again that failed or expired here are queued once more.

    (A done one needs nothing: its stored answer simply goes back again.)
    """
    for item_id in ids:
        item = outbox.get(item_id)
        if item is not None and item.state in ("failed", "expired"):
            outbox.retry(item_id)


async def _send(home: Home, settings: Settings, policy: Policy, report: RelayReport) -> None:
    if not settings.upstreams:
        report.waiting = "no [[upstreams]] are configured on this relay"
        return
    forwarding = build(home, settings, lambda: policy, "relay")
    try:
        drained = await forwarding.drain()
        report.sent, report.retried, report.failed = drained.sent, drained.retried, drained.failed
        report.errors += drained.errors
        report.waiting = drained.waiting
    finally:
        await forwarding.aclose()
        forwarding.outbox.close()


def _answer_back(
    card: Card,
    me: Identity,
    outbox: Outbox,
    ledger: Ledger,
    settings: Settings,
    out: Path,
    report: RelayReport,
    clock: Callable[[], datetime],
) -> None:
    while finished := ledger.finished_for(card.key_id, settings.offline.batch_items):
        results = payload.Results(results=[_result(outbox, i, s) for i, s in finished])
        now = fmt_time(clock())
        header, data = envelope.seal(
            payload.encode(results), kind="results", sender=me, recipient=card, created=now
        )
        path = files.write_batch(out, header, data)
        batch = Batch(
            header.batch_id,
            "out",
            "results",
            card.key_id,
            card.name,
            len(finished),
            now,
            path.name,
        )
        ledger.returned(batch, [i for i, _ in finished])
        report.files.append(path)
        report.items_out += len(finished)


def _result(outbox: Outbox, item_id: str, state: str) -> payload.Result:
    if state == "done":
        answer = outbox.result(item_id)
        if answer is not None:
            return payload.Result(id=item_id, outcome="done", answer=payload.answer_of(answer))
    item = outbox.get(item_id)
    error = item.last_error if item is not None else None
    if state == "failed":
        return payload.Result(id=item_id, outcome="failed", error=error or "refused upstream")
    return payload.Result(id=item_id, outcome="retry", error=error or f"{state} at the relay")
