"""`appliance outbox …`: look at and tend the store-and-forward queue of escalations.

Nothing here ever prints a placeholder map's values: they are the PII redaction kept on the
box. `show` lists the placeholder names only.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.table import Table

from appliance.cli.common import JSON_OPTION, console, home, print_json
from appliance.errors import UsageError
from appliance.outbox import Outbox, OutboxError
from appliance.outbox.model import FINISHED_STATES, FinishedChoice, StateChoice
from appliance.settings import load_settings

app = typer.Typer(help="The store-and-forward queue of escalations.", no_args_is_help=True)


def _open() -> Outbox:
    h = home()
    return Outbox(h, load_settings(h.config_file).outbox)


def _trainable() -> list[str]:
    """The upstreams whose answers `distill export` takes (``trainable = true``)."""
    h = home()
    return load_settings(h.config_file).trainable_upstreams()


@app.command("list")
def list_items(
    state: StateChoice | None = typer.Option(None, "--state", help="Only items in this state."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List queued, in-flight and finished escalations, newest first."""
    with _open() as outbox:
        items = outbox.list(state.value if state else None, limit)
    if as_json:
        print_json([i.to_json() for i in items])
        return
    table = Table(title="outbox")
    for column in (
        "id",
        "created",
        "priority",
        "state",
        "attempts",
        "next attempt",
        "upstream",
        "last error",
    ):
        table.add_column(column)
    for i in items:
        table.add_row(
            i.id,
            i.created_at,
            str(i.priority),
            i.state,
            str(i.attempts),
            i.next_attempt_at if i.state == "queued" else "",
            i.upstream,
            i.last_error or "",
        )
    console.print(table)


@app.command("show")
def show(
    item_id: str = typer.Argument(
        ..., metavar="ID", help="The escalation id, or a unique prefix of it (4+ characters)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one item, its answer if any, and its placeholder names (never their values)."""
    with _open() as outbox:
        item_id = outbox.resolve(item_id)
        item = outbox.get(item_id)
        if item is None:
            raise OutboxError(f"no outbox item {item_id}")
        result = outbox.result(item_id)
        document: dict[str, Any] = item.to_json()
        try:
            document["placeholders"] = sorted(outbox.mapping(item_id))
        except OutboxError as e:
            document["placeholders"] = None
            document["placeholders_error"] = str(e)
    document["result"] = result.to_json() if result else None
    if as_json:
        print_json(document)
        return
    for key, value in document.items():
        if key in ("messages", "result", "params", "reasons", "placeholders"):
            continue
        console.print(f"{key}: {'' if value is None else value}", markup=False)
    console.print(f"params: {item.params}", markup=False)
    console.print(f"reasons: {', '.join(item.reasons)}", markup=False)
    placeholders = document["placeholders"]
    console.print(
        f"placeholders: {', '.join(placeholders) if placeholders is not None else '(unreadable)'}",
        markup=False,
    )
    for message in item.messages:
        console.print(f"[{message.get('role', '?')}] {message.get('content', '')}", markup=False)
    if result is not None:
        console.print(
            f"answer from {result.upstream}/{result.model} at {result.received_at} "
            f"(${result.cost_usd:.6f}, {result.finish_reason}):",
            markup=False,
        )
        console.print(result.text, markup=False)


@app.command("retry")
def retry(
    item_id: str = typer.Argument(
        ..., metavar="ID", help="The escalation id, or a unique prefix of it (4+ characters)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Queue a failed or expired item again, now, with a fresh TTL."""
    with _open() as outbox:
        item = outbox.retry(outbox.resolve(item_id))
    if as_json:
        print_json(item.to_json())
        return
    console.print(f"queued {item.id} again (attempts so far: {item.attempts})", markup=False)


@app.command("purge")
def purge(
    states: list[FinishedChoice] | None = typer.Option(
        None, "--state", help="Purge this state (repeatable); default: done, failed, expired."
    ),
    include_golden: bool = typer.Option(
        False,
        "--include-golden",
        help="Also delete done items whose answers distillation wants (trainable upstreams).",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask; needed without a TTY."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete finished items (and their answers) to reclaim disk; golden answers stay.

    Done items answered by a trainable upstream are what `appliance distill export` turns
    into training data: they are kept unless --include-golden. Asks first on a terminal;
    elsewhere refuses without --yes (exit 2).
    """
    chosen = sorted({s.value for s in states} if states else set(FINISHED_STATES))
    keep = [] if include_golden else _trainable()
    with _open() as outbox:
        counts = outbox.counts()
        golden = outbox.golden_count(keep) if "done" in chosen else 0
        doomed = sum(counts[s] for s in chosen) - golden
        if doomed and not yes:
            _confirm(doomed, chosen, golden)
        purged = outbox.purge(chosen, keep_golden=keep) if doomed else 0
    if as_json:
        print_json({"purged": purged, "states": chosen, "kept_golden": golden})
        return
    line = f"purged {purged} item(s) ({', '.join(chosen)})"
    if golden:
        line += (
            f"; kept {golden} done item(s) with golden answers for distillation "
            "(appliance distill export first, then purge --include-golden)"
        )
    console.print(line, markup=False)


def _confirm(doomed: int, states: list[str], golden: int) -> None:
    question = f"delete {doomed} outbox item(s) ({', '.join(states)}) and their answers"
    if golden:
        question += f", keeping {golden} with golden answers"
    if not sys.stdin.isatty():
        raise UsageError(f"{question}? refused: no terminal to ask on; add --yes")
    if not typer.confirm(f"{question}?", default=False, err=True):
        raise OutboxError("nothing purged")
