"""The status document on one terminal screen (rich): problems first, each with what to do.

``render`` gives every section; ``fitted`` the same cut to the window for ``--watch``: the
problems always, then the sections in order of urgency while they fit, and a last line
naming what was left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.panel import Panel
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

_COLOURS = {"healthy": "green", "degraded": "yellow", "down": "red"}
MiB = 1024**2
GiB = 1024**3


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f} {unit}"
    return f"{seconds:.0f} s"


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def render(doc: dict[str, Any]) -> RenderableType:
    return Group(*(part for _, part in sections(doc)))


# When the window is too short, sections are kept in this order (the rest are left out).
URGENCY = ("headline", "problems", "daemon", "models", "outbox", "uplinks", "errors", "hardware")
_NAMES = {"errors": "last errors"}


class Fitted:
    """The status screen cut to the console's height at each redraw (``--watch``)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.parts = sections(doc)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        height = options.height or console.height
        width = options.max_width
        free = options.update(height=None)
        rendered = {
            name: console.render_lines(part, free.update(width=width), pad=False)
            for name, part in self.parts
        }
        # a line for what was left out, and one spare: a full window would scroll by one
        room = max(height - 2, 2)
        kept: set[str] = set()
        cut: dict[str, int] = {}
        for name in URGENCY:
            lines = rendered.get(name)
            if lines is None:
                continue
            if len(lines) <= room:
                kept.add(name)
                room -= len(lines)
            elif name in ("headline", "problems") and room > 0:
                kept.add(name)
                cut[name] = room
                room = 0
        left_out = [_NAMES.get(n, n) for n, _ in self.parts if n not in kept]
        if cut:
            left_out.insert(0, "the rest of the problems")
        out: list[list[Segment]] = []
        for name, _ in self.parts:
            if name in kept:
                out += rendered[name][: cut.get(name)]
        if left_out:
            note = f"… hidden to fit the window: {', '.join(left_out)} (see appliance status)"
            out.append([Segment(note[:width], console.get_style("dim"))])
        for line in out:
            yield from line
            yield Segment.line()


def fitted(doc: dict[str, Any]) -> RenderableType:
    return Fitted(doc)


def sections(doc: dict[str, Any]) -> list[tuple[str, RenderableType]]:
    """The screen's sections in display order, each with its name."""
    health = doc["health"]
    daemon = doc["daemon"]
    headline = Text.assemble(
        ("appliance ", "bold"),
        (doc["version"], ""),
        ("  ", ""),
        (health.upper(), f"bold {_COLOURS[health]}"),
        (f"  (exit {doc['exit_code']})  {doc['generated_at']}", "dim"),
    )
    parts: list[tuple[str, RenderableType]] = [("headline", headline)]
    if doc["problems"]:
        problems = Table(show_header=False, box=None, pad_edge=False)
        problems.add_column(no_wrap=True)
        problems.add_column()
        for p in doc["problems"]:
            mark = "✖" if p["severity"] == "down" else "!"
            problems.add_row(
                Text(mark, style=_COLOURS[p["severity"]]),
                Text.assemble((p["what"], "bold"), "\n→ ", (p["do"], "")),
            )
        parts.append(
            ("problems", Panel(problems, title="what needs doing", border_style="yellow"))
        )

    up = daemon.get("up")
    line = f"daemon  {'up' if up else 'DOWN'} at {daemon.get('url', '?')}"
    if up and daemon.get("uptime_s") is not None:
        line += f", pid {daemon.get('pid')}, up {_age(daemon['uptime_s'])}"
        if daemon.get("rss_bytes"):
            line += f", {_size(daemon['rss_bytes'])} resident (models included)"
    parts.append(("daemon", Text(line)))

    models = _table("models", "name", "version", "kind", "signers", "verified", "where", "size")
    for m in doc["models"]:
        if m["loaded"] is None:
            where = "(daemon down)"
        elif m["error"]:
            where = f"ERROR: {m['error']}"
        elif m["device"] and m.get("slots"):
            where = f"{m['device']}, {m['busy']} of {m['slots']} slots busy"
        else:
            where = m["device"] or "not loaded"
        signers = ", ".join(s[:12] for s in m["signers"])
        models.add_row(
            m["name"],
            m["version"],
            m["kind"],
            signers,
            m["verified_at"],
            where,
            _size(m["size_bytes"]),
        )
    if not doc["models"]:
        models.add_row("(none active)", "", "", "", "", "", "")
    parts.append(("models", models))

    hw = doc["hardware"]
    disk = hw["disk"]
    hardware = (
        f"cpu     {hw['cpu_count']} cores, load {' / '.join(str(x) for x in hw['load_avg'])}\n"
        f"memory  {_size(hw['memory_total_bytes'] - hw['memory_available_bytes'])} used of "
        f"{_size(hw['memory_total_bytes'])} ({hw['memory_used_percent']:.0f}%)\n"
        f"disk    {_size(disk.get('free_bytes'))} free of {_size(disk.get('total_bytes'))} "
        f"in {disk['path']}"
    )
    temps = [f"{t['label']} {t['celsius']:.0f}°C" for t in hw["temperatures"][:6]]
    if temps:
        hardware += "\ntemps   " + ", ".join(temps)
    for g in doc["gpus"]:
        hardware += (
            f"\ngpu {g['index']}   {g['name']}: {g['memory_used_mib']:.0f} of "
            f"{g['memory_total_mib']:.0f} MiB, {g['utilization_percent']}% busy, "
            f"{g['temperature_celsius']}°C"
        )
    if not doc["gpus"]:
        hardware += "\ngpu     none found (models run on the CPU)"
    parts.append(("hardware", Text(hardware)))

    box = doc["outbox"]
    counts = ", ".join(f"{n} {state}" for state, n in box["counts"].items())
    outbox = (
        f"outbox  {counts}; oldest queued {_age(box['oldest_queued_age_s'])}; "
        f"{box['items']} of {box['max_items']} items, {_size(box['bytes'])} of "
        f"{_size(box['max_bytes'])}"
    )
    sync = doc["sync"]
    outbox += f"\nsync    last answer {sync['last_sync_at'] or 'never'}"
    if sync["waiting"]:
        outbox += f"; waiting: {sync['waiting']}"
    budget = doc["budget"]
    if budget["daily_usd"] is None:
        outbox += f"\nbudget  no daily budget; spent today ${budget['spent_today_usd']:.4f}"
    else:
        outbox += (
            f"\nbudget  ${budget['spent_today_usd']:.4f} of ${budget['daily_usd']:.2f} today "
            f"(resets {budget['resets_at']})"
        )
    seen = doc.get("calibration")
    if seen and seen["agreement"] is not None:
        outbox += (
            f"\naudit   agreement {seen['agreement']:.3f} [{seen['low']:.3f}, {seen['high']:.3f}] "
            f"at threshold {seen['threshold']:g} ({seen['measure']}, {seen['audit_samples']} "
            "audit samples)"
        )
    elif seen and seen["audit_samples"]:
        outbox += (
            f"\naudit   {seen['audit_samples']} audit samples at threshold {seen['threshold']:g};"
            f" agreement shown from {seen['needed']}"
        )
    parts.append(("outbox", Text(outbox)))

    if doc["uplinks"]:
        uplinks = _table("uplinks", "name", "kind", "state", "last ok", "last error", "seen")
        for u in doc["uplinks"]:
            state = "unknown" if u["up"] is None else ("up" if u["up"] else "DOWN")
            uplinks.add_row(
                u["name"],
                u["kind"],
                state,
                u["last_ok_at"] or "never",
                u["last_error"] or "",
                u["source"],
            )
        parts.append(("uplinks", uplinks))
    else:
        parts.append(("uplinks", Text("uplinks none configured (everything stays on the box)")))

    if doc["errors"]:
        errors = _table("last errors", "when", "where", "what")
        for e in doc["errors"]:
            errors.add_row(e["at"] or "now", e["source"], e["message"])
        parts.append(("errors", errors))
    return parts
