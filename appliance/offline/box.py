"""The box's side: ``outbox export`` (requests out) and ``outbox import`` (results in).

Export leaves the items queued: until a result comes back they are still the box's
promise, and an uplink that appears meanwhile may send them (the upstream sees the same
``Idempotency-Key`` either way). Import is idempotent per item (the first answer stands,
as with the uplink) and refuses a batch id it took before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from appliance.errors import OfflineError
from appliance.forward.engine import cost_usd
from appliance.home import Home
from appliance.offline import envelope, files, payload
from appliance.offline.identity import Card, Identity
from appliance.offline.ledger import Batch, Ledger
from appliance.outbox import Outbox, OutboxItem
from appliance.outbox.model import fmt_time
from appliance.policy.schema import Policy
from appliance.settings import Settings, UpstreamSettings
from appliance.tco.ledger import Ledger as TcoLedger

OWNER = "offline-import"
_ROOM = 0.7  # share of max_batch_bytes the payload may fill (base64 and JSON add ~35%)


@dataclass
class ExportReport:
    files: list[Path] = field(default_factory=list)
    items: int = 0
    # one line per queued item that cannot travel (id and why; never its content): it stays
    # queued for the uplink, and the other items travel without it
    skipped: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    batches: int = 0
    answered: int = 0  # items now done with the relay's answer
    duplicates: int = 0  # already answered (by the uplink or an earlier batch)
    failed: int = 0  # the upstream refused them for good
    again: int = 0  # the relay could not send them; the next export carries them again
    unknown: int = 0  # not in this outbox (purged, or never exported from here)
    skipped: list[str] = field(default_factory=list)  # files of the other direction
    refused: list[str] = field(default_factory=list)  # one line per refused file
    warnings: list[str] = field(default_factory=list)


def relay_card(settings: Settings, home: Home) -> Card:
    path = settings.offline.relay_card
    if not path:
        raise OfflineError(
            f"no relay is configured: set [offline] relay_card in {home.config_file} to the "
            "card file the relay wrote with `appliance identity --out FILE`"
        )
    return Card.load(Path(path))


def export_batches(
    home: Home,
    settings: Settings,
    out: Path,
    *,
    again: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ExportReport:
    """Seal the queued items for the relay into batch files in `out`."""
    relay = relay_card(settings, home)
    me = Identity(home, settings.offline.name)
    report = ExportReport()
    with Outbox(home, settings.outbox) as outbox, Ledger(home) as ledger:
        outbox.expire()
        pending = ledger.to_export(limit=1_000_000, again=again)
        travelling = _travelling(pending, report)
        request_of = {item.id: request for item, request in travelling}
        for chunk in _chunks([item for item, _ in travelling], settings):
            requests = payload.Requests(requests=[request_of[i.id] for i in chunk])
            now = fmt_time(clock())
            header, data = envelope.seal(
                payload.encode(requests), kind="requests", sender=me, recipient=relay, created=now
            )
            if len(data) > settings.offline.max_batch_bytes:
                report.skipped += [
                    f"item {i.id}: too large for [offline] max_batch_bytes" for i in chunk
                ]
                continue
            path = files.write_batch(out, header, data)
            batch = Batch(
                header.batch_id,
                "out",
                "requests",
                relay.key_id,
                relay.name,
                len(chunk),
                now,
                path.name,
            )
            ledger.exported(batch, [i.id for i in chunk])
            report.files.append(path)
            report.items += len(chunk)
    return report


def _travelling(
    items: list[OutboxItem], report: ExportReport
) -> list[tuple[OutboxItem, payload.Request]]:
    """Each item that the batch format takes, with its request; the others in `report`.

    The reason names the field and the rule broken, never the value: a queued item's text
    may be anything a device sent.
    """
    taken: list[tuple[OutboxItem, payload.Request]] = []
    for item in items:
        try:
            taken.append((item, payload.request_of(item)))
        except ValidationError as e:
            problems = e.errors(include_input=False, include_url=False, include_context=False)
            first = problems[0] if problems else {"loc": (), "msg": "invalid"}
            where = ".".join(str(p) for p in first["loc"]) or "item"
            report.skipped.append(f"item {item.id}: {where}: {first['msg']}")
    return taken


def _chunks(items: list[OutboxItem], settings: Settings) -> list[list[OutboxItem]]:
    limit_items = settings.offline.batch_items
    limit_bytes = int(settings.offline.max_batch_bytes * _ROOM)
    chunks: list[list[OutboxItem]] = []
    current: list[OutboxItem] = []
    size = 0
    for item in items:
        if current and (len(current) >= limit_items or size + item.size_bytes > limit_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size_bytes
    if current:
        chunks.append(current)
    return chunks


def import_results(
    home: Home,
    settings: Settings,
    policy: Policy,
    folder: Path,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ImportReport:
    """Take every result batch in `folder` signed by the relay and addressed to this box."""
    relay = relay_card(settings, home)
    me = Identity(home, settings.offline.name)
    upstreams = {u.name: u for u in settings.upstreams}
    report = ImportReport()
    tco = TcoLedger(home, settings, gpu=None)
    try:
        _import_all(home, settings, policy, folder, relay, me, upstreams, tco, report, clock)
    finally:
        tco.close()
    return report


def _import_all(
    home: Home,
    settings: Settings,
    policy: Policy,
    folder: Path,
    relay: Card,
    me: Identity,
    upstreams: dict[str, UpstreamSettings],
    tco: TcoLedger,
    report: ImportReport,
    clock: Callable[[], datetime],
) -> None:
    with Outbox(home, settings.outbox) as outbox, Ledger(home) as ledger:
        for path in files.batch_files(folder):
            try:
                opened = ledger.take(
                    path, "results", me, {relay.key_id: relay}, settings.offline.max_batch_bytes
                )
                if opened is None:
                    report.skipped.append(path.name)
                    continue
                results = payload.parse(payload.Results, opened.payload, path.name)
            except OfflineError as e:
                report.refused.append(str(e))
                continue
            for result in results.results:
                _apply(result, outbox, ledger, policy, upstreams, tco, report)
            ledger.record(
                Batch(
                    opened.header.batch_id,
                    "in",
                    "results",
                    relay.key_id,
                    relay.name,
                    len(results.results),
                    fmt_time(clock()),
                    path.name,
                )
            )
            report.batches += 1
            if warning := files.mark_taken(path):
                report.warnings.append(warning)


def _apply(
    result: payload.Result,
    outbox: Outbox,
    ledger: Ledger,
    policy: Policy,
    upstreams: dict[str, UpstreamSettings],
    tco: TcoLedger,
    report: ImportReport,
) -> None:
    item = outbox.get(result.id)
    if item is None or not ledger.was_exported(result.id):
        report.unknown += 1  # the relay answers only what this box sent it
        return
    if result.outcome == "done" and result.answer is not None:
        answer = payload.upstream_answer(result.answer)
        upstream = upstreams.get(item.upstream) or UpstreamSettings(
            name=item.upstream, kind="openai", base_url="", model=""
        )
        cost = cost_usd(policy, upstream, answer.prompt_tokens, answer.completion_tokens)
        if outbox.complete(item.id, OWNER, answer, cost):
            report.answered += 1
            tco.upstream_answer(
                policy,
                request_id=item.id,
                upstream=item.upstream,
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                cost_usd=cost,
            )
        else:
            report.duplicates += 1
    elif result.outcome == "failed":
        outbox.fail(item.id, OWNER, f"via relay: {result.error or 'refused upstream'}")
        report.failed += 1
    else:
        ledger.forget_exports([item.id])
        report.again += 1
