"""`appliance sync` and `appliance distill export`: store-and-forward from the command line."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import typer

from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.errors import ConfigError
from appliance.forward import distill
from appliance.forward.engine import DrainReport
from appliance.forward.wiring import build
from appliance.governance.active import find_source, load
from appliance.outbox import Outbox
from appliance.settings import load_settings

distill_app = typer.Typer(help="Golden responses as training data.", no_args_is_help=True)


async def _sync(once: bool) -> DrainReport:
    h = home().ensure()
    settings = load_settings(h.config_file)
    if not settings.upstreams:
        raise ConfigError(f"no [[upstreams]] in {h.config_file}: nothing to sync to")
    policy = load(find_source(h, settings)).policy
    forwarding = build(h, settings, lambda: policy, "cli")
    total = DrainReport()
    try:
        while True:
            total.add(await forwarding.drain())
            if once:
                return total
            await asyncio.sleep(settings.sync.interval_s)
    finally:
        await forwarding.aclose()


def sync(
    once: bool = typer.Option(False, "--once", help="Drain what is due now, then exit."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Send queued escalations to the upstreams (the daemon does this on its own, too)."""
    report = DrainReport()
    with contextlib.suppress(KeyboardInterrupt):
        report = asyncio.run(_sync(once))
    document = {
        "sent": report.sent,
        "retried": report.retried,
        "failed": report.failed,
        "expired": report.expired,
        "waiting": report.waiting,
        "errors": report.errors,
    }
    if as_json:
        print_json(document)
        return
    console.print(
        f"sent {report.sent}, retried later {report.retried}, failed {report.failed}, "
        f"expired {report.expired}",
        markup=False,
    )
    if report.waiting:
        console.print(f"waiting: {report.waiting}", markup=False)
    for line in report.errors:
        console.print(f"  {line}", markup=False, highlight=False)


@distill_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", help="The JSONL file to write."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write upstream answers as an OpenAI chat fine-tuning set (placeholders, no PII)."""
    h = home().ensure()
    settings = load_settings(h.config_file)
    outbox = Outbox(h, settings.outbox)
    report = distill.export(outbox.golden(), settings, out)
    document = {
        "path": str(report.path),
        "written": report.written,
        "duplicates": report.duplicates,
        "not_trainable": report.not_trainable,
    }
    if as_json:
        print_json(document)
        return
    console.print(
        f"{report.written} examples written to {report.path} ({report.duplicates} duplicates "
        f"and {report.not_trainable} from non-trainable upstreams left out)",
        markup=False,
    )
