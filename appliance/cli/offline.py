"""`appliance identity`, `outbox export|import`, `relay process`: store-and-forward by USB."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from appliance.cli.common import JSON_OPTION, console, err_console, home, print_json
from appliance.governance.active import find_source, load
from appliance.offline import Identity
from appliance.offline.box import export_batches, import_results
from appliance.offline.relay import process
from appliance.settings import load_settings

relay_app = typer.Typer(
    help="Relay sealed outbox batches of offline boxes to the upstreams.", no_args_is_help=True
)


def identity(
    out: Path | None = typer.Option(None, "--out", help="Write this home's card to FILE."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show this home's offline identity (made on first use); --out writes its public card."""
    h = home().ensure()
    settings = load_settings(h.config_file)
    card = Identity(h, settings.offline.name).card()
    if out is not None:
        out.write_text(json.dumps(card.to_json(), indent=2) + "\n")
    if as_json:
        print_json({**card.to_json(), "written": str(out) if out else None})
        return
    console.print(f"name    {card.name}\nkey id  {card.key_id}", markup=False)
    if out is not None:
        console.print(f"card written to {out} (public: carry it to the peer)", markup=False)


def export(
    out: Path = typer.Option(..., "--out", help="The folder (on the USB stick) to write to."),
    again: bool = typer.Option(
        False, "--again", help="Also the queued items exported before (a lost stick)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Seal queued escalations for the relay into batch files in --out."""
    h = home().ensure()
    report = export_batches(h, load_settings(h.config_file), out, again=again)
    for line in report.skipped:  # the item stays queued; its content is never printed
        err_console.print(f"warning: skipped {line}", markup=False, highlight=False)
    if as_json:
        print_json(
            {
                "items": report.items,
                "files": [str(p) for p in report.files],
                "skipped": report.skipped,
            }
        )
        return
    if not report.files:
        console.print("nothing to export: no queued escalations left to send", markup=False)
        return
    console.print(
        f"{report.items} escalations sealed into {len(report.files)} batch file(s):",
        markup=False,
    )
    for path in report.files:
        console.print(f"  {path}", markup=False)


def import_(
    folder: Path = typer.Argument(..., help="The folder holding the relay's result batches."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Take the relay's signed result batches: answers reach their devices."""
    h = home().ensure()
    settings = load_settings(h.config_file)
    policy = load(find_source(h, settings)).policy
    report = import_results(h, settings, policy, folder)
    document = asdict(report)
    _finish(
        document,
        as_json,
        f"{report.batches} result batch(es) taken: {report.answered} answered, "
        f"{report.duplicates} already answered, {report.failed} refused upstream, "
        f"{report.again} to send again, {report.unknown} unknown",
    )


def relay_process(
    inbox: Path = typer.Argument(..., help="The folder holding the boxes' request batches."),
    out: Path = typer.Option(..., "--out", help="The folder to write result batches to."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Take request batches, send them upstream, and write result batches for each box."""
    h = home().ensure()
    settings = load_settings(h.config_file)
    policy = load(find_source(h, settings)).policy
    report = asyncio.run(process(h, settings, policy, inbox, out))
    document = asdict(report)
    document["files"] = [str(p) for p in report.files]
    summary = (
        f"{report.taken} request batch(es) taken ({report.items_in} items); sent {report.sent}, "
        f"retry later {report.retried}, refused upstream {report.failed}; "
        f"{report.items_out} results in {len(report.files)} file(s); {report.pending} waiting"
    )
    if report.waiting:
        summary += f"\nwaiting: {report.waiting}"
    _finish(document, as_json, summary)


def _finish(document: dict[str, Any], as_json: bool, summary: str) -> None:
    """Print the report; exit 1 when any file was refused (each refusal on stderr)."""
    if as_json:
        print_json(document)
    else:
        console.print(summary, markup=False)
        for name in document.get("files", []):
            console.print(f"  wrote {name}", markup=False)
    for line in document["warnings"]:
        err_console.print(f"warning: {line}", markup=False, highlight=False)
    for line in document["refused"]:
        err_console.print(f"error: {line}", markup=False, highlight=False)
    if document["refused"]:
        raise typer.Exit(1)
